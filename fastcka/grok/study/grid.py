"""The grid: a TOML file of run groups expanded into runs, and the resumable runner that trains them (one
process and one thread per run) and copies each finished run's small outputs into the run directory."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import shutil
import signal
import time
import tomllib
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Optional, Sequence

from ..detect import DetectorConfig

ROLES = ("grok", "control", "parity", "forcing", "arch")
SMALL_FILES = ("config.json", "log.csv")
SUMMARY = "summary.json"
STOP = ".stop"  # in the checkpoint folder while a parallel grid is stopping: queued runs return without training

# The built-in 3-run grid of ``--quick`` (and the tests): tiny models, a few hundred steps, minutes in all.
QUICK_GRID = """
[defaults]
p = 11
train_frac = 0.5
d_model = 32
n_heads = 2
d_mlp = 64
every = 10
max_steps = 300
checkpoint_every = 50
lr = 3e-3
device = "cpu"

[[group]]
name = "quick-add"
role = "grok"
seeds = [0, 1]

[[group]]
name = "quick-wd0"
role = "control"
seeds = [0]
config = { weight_decay = 0.0 }
"""


@dataclasses.dataclass
class RunSpec:
    name: str
    group: str
    role: str
    seed: int
    config: dict  # TrainConfig fields (detector as a dict), without out/threads/progress


def load_grid(text: str) -> list[RunSpec]:
    """The runs of a grid file's text, in order. Raises ValueError on a malformed grid."""
    from ..train import TrainConfig

    g = tomllib.loads(text)
    defaults = dict(g.get("defaults", {}))
    det_defaults = defaults.pop("detector", {})
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    specs: list[RunSpec] = []
    seen: set[str] = set()
    for grp in g.get("group", []):
        name, role = grp.get("name"), grp.get("role", "grok")
        if not name or role not in ROLES:
            raise ValueError(f"grid: every group needs a name and a role in {ROLES}, got {grp!r}")
        cfg = {**defaults, **grp.get("config", {})}
        det = {**det_defaults, **cfg.pop("detector", {})}
        unknown = set(cfg) - fields
        if unknown:
            raise ValueError(f"grid group {name}: unknown config fields {sorted(unknown)}")
        DetectorConfig(**det)  # validate
        for seed in grp.get("seeds", [0]):
            run = f"{name}-s{seed}"
            if run in seen:
                raise ValueError(f"grid: run {run} appears twice")
            seen.add(run)
            c = {**cfg, "seed": int(seed), "detector": det}
            TrainConfig(**{**c, "detector": DetectorConfig(**det)})  # validate now, not hours later
            specs.append(RunSpec(run, name, role, int(seed), c))
    return specs


def _run_one(spec: RunSpec, runs_dir: str, ckpt_dir: str, threads: int) -> dict:
    """Train (or resume) one run, then copy its small outputs to runs_dir. Runs in a worker process."""
    from ..train import CHECKPOINT, TrainConfig, train

    ck = Path(ckpt_dir) / spec.name
    if (Path(ckpt_dir) / STOP).exists():  # the grid is stopping: a run that was already queued does not start
        return {"name": spec.name, "interrupted": True, "started": False}
    cfg = TrainConfig(**{**spec.config, "detector": DetectorConfig(**spec.config["detector"]),
                         "out": str(ck), "threads": threads, "progress": False})
    resume = (ck / CHECKPOINT).exists()
    t0 = time.time()
    summary = train(cfg, resume=resume)
    timing_path = ck / "study_time.json"
    timing = json.loads(timing_path.read_text()) if timing_path.exists() else {"sessions": []}
    timing["sessions"].append({"wall_s": summary["wall_s"], "steps": summary["steps_this_session"],
                               "resumed": resume, "ended": time.strftime("%Y-%m-%d %H:%M:%S")})
    timing_path.write_text(json.dumps(timing, indent=2) + "\n")
    if summary["interrupted"]:
        # mark the grid as stopping here, in the worker: another worker may pick up a queued run before the main
        # process has read this result
        (Path(ckpt_dir) / STOP).touch()
        return {"name": spec.name, "interrupted": True}
    dest = Path(runs_dir) / spec.name
    dest.mkdir(parents=True, exist_ok=True)
    for f in SMALL_FILES:
        shutil.copyfile(ck / f, dest / f)
    summary["study"] = {"run": spec.name, "group": spec.group, "role": spec.role, "seed": spec.seed,
                        "resumed": resume or len(timing["sessions"]) > 1,
                        "wall_s_total": sum(s["wall_s"] for s in timing["sessions"]),
                        "sessions": timing["sessions"], "note": "wall_s_total omits sessions that were killed"}
    tmp = dest / (SUMMARY + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    os.replace(tmp, dest / SUMMARY)  # last: its presence marks the run finished
    return {"name": spec.name, "interrupted": False, "grok_step": summary["grok_step"],
            "alarm_step": summary["alarm_step"], "wall_s": time.time() - t0}


def run_grid(specs: Sequence[RunSpec], runs_dir: str | Path, ckpt_dir: str | Path, jobs: int = 1,
             threads: int = 1, progress: bool = True, only: Optional[str] = None) -> list[dict]:
    """Run every spec whose summary is not in runs_dir yet (``only``: a glob over run names). Returns the results."""
    from tqdm.auto import tqdm

    runs_dir, ckpt_dir = Path(runs_dir), Path(ckpt_dir)
    _interruptible()
    todo = [s for s in specs if not (runs_dir / s.name / SUMMARY).exists()
            and (only is None or fnmatch.fnmatch(s.name, only))]
    done = len([s for s in specs if (runs_dir / s.name / SUMMARY).exists()])
    bar = tqdm(total=len(specs), initial=done, desc="study runs", unit="run", disable=not progress,
               dynamic_ncols=True)
    results = []
    # a grid stopped by Ctrl-C leaves the stop mark behind (a run marks it, in its worker or in this process): a new
    # call is a new grid, so it starts without one (it used to stop every later sequential grid before any run)
    (ckpt_dir / STOP).unlink(missing_ok=True)
    if jobs <= 1:
        for s in todo:
            bar.set_postfix_str(s.name)
            r = _run_one(s, str(runs_dir), str(ckpt_dir), threads)
            results.append(r)
            bar.write(_result_line(r))
            if r["interrupted"]:
                break
            bar.update(1)
    else:
        import multiprocessing as mp

        # Ctrl-C reaches every process of the terminal's group: the running workers checkpoint and return
        # "interrupted", and the grid must then stop too instead of feeding the workers the next runs
        stop = ckpt_dir / STOP
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        stop.unlink(missing_ok=True)
        ex = ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=_ignore_ctrl_c)
        futs = [ex.submit(_run_one, s, str(runs_dir), str(ckpt_dir), threads) for s in todo]
        collected: set = set()

        def collect(fut) -> None:
            collected.add(fut)
            r = fut.result()
            results.append(r)
            if r.get("started", True):
                bar.write(_result_line(r))
            if r["interrupted"]:
                stop.touch()
                for f in futs:
                    f.cancel()  # the queued runs that have not started
            else:
                bar.update(1)

        try:
            for fut in as_completed(futs):
                if not fut.cancelled():
                    collect(fut)
        except KeyboardInterrupt:  # Ctrl-C in the main process: wait for the workers to checkpoint
            stop.touch()
            for f in futs:
                f.cancel()
            # a terminal's Ctrl-C reaches the workers too, but `kill -INT <main pid>` (a grid in the background)
            # reaches only this process, which would then wait for the running runs to finish: pass it on as SIGUSR1,
            # the training loop's stop request (a second SIGINT would abort a run that is already checkpointing)
            if hasattr(signal, "SIGUSR1"):
                for proc in list((getattr(ex, "_processes", None) or {}).values()):
                    try:
                        os.kill(proc.pid, signal.SIGUSR1)
                    except (OSError, AttributeError):
                        pass
            ex.shutdown(wait=True)
            for f in futs:
                if f not in collected and f.done() and not f.cancelled():
                    collect(f)
            results.append({"name": "(grid)", "interrupted": True, "started": False})
        finally:
            ex.shutdown(wait=True, cancel_futures=True)
            stop.unlink(missing_ok=True)
    bar.close()
    return results


def _interruptible() -> None:
    """A grid started in the background by a non-interactive shell (`nohup ... &`) inherits SIGINT ignored, and
    Python keeps it so: `kill -INT` would then do nothing. Ctrl-C's KeyboardInterrupt is restored."""
    try:
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not the main thread: signals are not ours to set
        pass


def _ignore_ctrl_c() -> None:
    """Worker initializer: an idle worker ignores Ctrl-C (a training run installs its own checkpoint-and-stop
    handler), so a Ctrl-C between two runs cannot break the pool."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGUSR1"):  # the main process's stop request (run_grid), which would kill an idle worker
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def _result_line(r: dict) -> str:
    if r["interrupted"]:
        return f"{r['name']}: interrupted (resumes from its checkpoint)"
    return f"{r['name']}: grok {r['grok_step']}, alarm {r['alarm_step']}, {r['wall_s']:.0f} s"

"""The study (issue 9): run a grid of grokking runs from a TOML file, resumably, and aggregate them into docs/STUDY.md.

The grid file::

    [defaults]              # TrainConfig fields for every run (fastcka grok flags, underscores)
    every = 25
    [defaults.detector]     # DetectorConfig fields (the Ô01 detector run during training and at report time)
    rise = 0.05

    [[group]]               # runs are expanded in file order: put the cheapest informative ones first
    name = "fast-add-p59"   # run directories are <name>-s<seed>
    role = "grok"           # grok | control | parity | forcing | arch  (what the run is for in the report)
    seeds = [0, 1, 2, 3]
    config = { p = 59, lr = 3e-3 }

A group name may appear more than once (with other seeds) to interleave cheap and expensive runs.

Each run trains in ``<ckpt_dir>/<run>`` (checkpoint.pt, plot.png; gitignored) and, once finished, its small outputs
(config.json, log.csv, summary.json with a ``study`` entry) are copied to ``<runs_dir>/<run>/``. A run whose
``summary.json`` is in ``runs_dir`` is skipped; a run with a checkpoint but no summary (killed) resumes from it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
import os
import random
import shutil
import time
import tomllib
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Optional, Sequence

from .detect import Detector, DetectorConfig

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


# --- the grid ------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class RunSpec:
    name: str
    group: str
    role: str
    seed: int
    config: dict  # TrainConfig fields (detector as a dict), without out/threads/progress


def load_grid(text: str) -> list[RunSpec]:
    """The runs of a grid file's text, in order. Raises ValueError on a malformed grid."""
    from .train import TrainConfig

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
    from .train import CHECKPOINT, TrainConfig, train

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
    todo = [s for s in specs if not (runs_dir / s.name / SUMMARY).exists()
            and (only is None or fnmatch.fnmatch(s.name, only))]
    done = len([s for s in specs if (runs_dir / s.name / SUMMARY).exists()])
    bar = tqdm(total=len(specs), initial=done, desc="study runs", unit="run", disable=not progress,
               dynamic_ncols=True)
    results = []
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


def _ignore_ctrl_c() -> None:
    """Worker initializer: an idle worker ignores Ctrl-C (a training run installs its own checkpoint-and-stop
    handler), so a Ctrl-C between two runs cannot break the pool."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _result_line(r: dict) -> str:
    if r["interrupted"]:
        return f"{r['name']}: interrupted (resumes from its checkpoint)"
    return f"{r['name']}: grok {r['grok_step']}, alarm {r['alarm_step']}, {r['wall_s']:.0f} s"


# --- aggregation ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Signal:
    """A progress measure run through the detector: ``key`` a log column; ``direction`` +1 warns on a re-rise, −1 on a
    re-fall; ``normalise`` divides the series by its first finite value (so that ``rise`` is a relative change);
    ``min_drop`` overrides the detector's (0: no drop needed, for measures with no memorisation dip)."""

    name: str
    key: str
    direction: int
    normalise: bool
    min_drop: Optional[float]
    label: str


SIGNALS = [
    Signal("o01", "o01", +1, False, None, "Ô01 re-rise (the pilot's signal)"),
    Signal("fourier", "fourier", +1, False, 0.0, "Fourier concentration of W_E rises (Nanda et al.)"),
    Signal("weight_norm", "weight_norm", -1, True, 0.0, "weight norm falls, relative (Omnigrok)"),
    Signal("spec_entropy", "spec_entropy", -1, True, 0.0, "spectral entropy of the last residual covariance falls, relative (Khanh et al.)"),
    Signal("test_loss", "test_loss", -1, True, 0.0, "test loss falls, relative to its initial value"),
    Signal("test_acc_rise", "test_acc", +1, False, 0.0, "test accuracy rises 0.05 above its post-memorisation minimum"),
]
# The "just watch test accuracy" baseline: the first point at/after memorisation where test accuracy is this much
# above its value at memorisation. Relative, because test accuracy at memorisation differs by regime (0.11–0.14 at
# p = 59, train fraction 0.4), and an absolute threshold below it fires at memorisation in every run.
TEST_ACC_GAIN = 0.10
TEST_ACC_LABEL = "test acc +0.10"


def regime(c: dict) -> str:
    """Which part of the study a run belongs to, from its config (never its name): ``pilot`` (p 97/113, lr 1e-3),
    ``fast`` (p 59, lr 3e-3), ``parity``, ``forcing``, ``layernorm`` or ``other``."""
    if c["task"] == "parity":
        return "parity"
    if c.get("force_cka", 0.0):
        return "forcing"
    if c.get("layer_norm", False):
        return "layernorm"
    if c["p"] in (97, 113) and math.isclose(c["lr"], 1e-3) and c["task"] in ("add", "mul"):
        return "pilot"
    if c["p"] == 59 and math.isclose(c["lr"], 3e-3):
        return "fast"
    return "other"


def read_rows(path: Path) -> list[dict]:
    from .train import read_log

    return read_log(path)


def signal_alarm(rows: list[dict], sig: Signal, det: DetectorConfig) -> Optional[int]:
    """The alarm step of one signal on one run's log, by the online detector."""
    cfg = dataclasses.replace(det, direction=sig.direction)
    if sig.min_drop is not None:
        cfg = dataclasses.replace(cfg, min_drop=sig.min_drop)
    scale = 1.0
    if sig.normalise:
        first = next((r[sig.key] for r in rows if math.isfinite(r[sig.key]) and r[sig.key] != 0), None)
        if first is None:
            return None
        scale = abs(first)
    d = Detector(cfg)
    for r in rows:
        d.update(r["step"], r[sig.key] / scale, r["train_acc"], r["train_loss_max"])
    return d.result.alarm_step


def test_acc_alarm(rows: list[dict], memorised_acc: float, gain: float = TEST_ACC_GAIN) -> Optional[int]:
    """First step at/after memorisation where test accuracy is ``gain`` above its value at memorisation."""
    mem = next((r for r in rows if r["train_acc"] >= memorised_acc), None)
    if mem is None or not math.isfinite(mem["test_acc"]):
        return None
    return next((r["step"] for r in rows if r["step"] >= mem["step"] and r["test_acc"] >= mem["test_acc"] + gain), None)


def load_runs(runs_dir: Path | str) -> list[dict]:
    """Every finished run in runs_dir: its summary (with the ``study`` entry) and its log rows."""
    out = []
    for d in sorted(Path(runs_dir).iterdir()) if Path(runs_dir).exists() else []:
        if (d / SUMMARY).exists() and (d / "log.csv").exists():
            s = json.loads((d / SUMMARY).read_text())
            s.setdefault("study", {"run": d.name, "group": d.name.rsplit("-s", 1)[0], "role": "grok",
                                   "seed": s["config"]["seed"]})
            out.append({"name": d.name, "summary": s, "rows": read_rows(d / "log.csv")})
    return out


def analyse_run(run: dict, spike_guard: Optional[str] = None) -> dict:
    """Per-run facts: grok step, and each signal's alarm and lead (grok − alarm)."""
    s, rows = run["summary"], run["rows"]
    c = s["config"]
    det = DetectorConfig(**c["detector"])
    if spike_guard is not None:
        det = dataclasses.replace(det, spike_guard=spike_guard)
    grok = next((r["step"] for r in rows if r["test_acc"] >= c["grok_acc"]), None)
    alarms = {sig.name: signal_alarm(rows, sig, det) for sig in SIGNALS}
    alarms["test_acc"] = test_acc_alarm(rows, det.memorised_acc)
    o = Detector(det)
    for r in rows:
        o.update(r["step"], r["o01"], r["train_acc"], r["train_loss_max"])
    onset_after_window = any(0 < o.result.rise_onset_step - (sp + det.spike_window) <= 2 * c.get("every", 25)
                             for sp in o.result.spike_steps) if o.result.rise_onset_step is not None else False
    return {"name": run["name"], "group": s["study"]["group"], "role": s["study"]["role"], "seed": c["seed"],
            "task": c["task"], "p": c["p"], "regime": regime(c), "grok": grok,
            "onset_after_window": onset_after_window, "first_rise": o.result.first_rise_step,
            "recorded_alarm": s.get("alarm_step"), "detector_version": s.get("detector_version", 1),  # unversioned summaries predate v2
            "device": s.get("device"), "threads": s.get("threads"), "steps": rows[-1]["step"] if rows else 0,
            "memorised": o.result.memorised_step, "rise_onset": o.result.rise_onset_step, "alarms": alarms,
            "leads": {k: (grok - a if grok is not None and a is not None else None) for k, a in alarms.items()},
            "o01_peak": o.result.peak, "o01_min": o.result.minimum, "spikes": len(o.result.spike_steps),
            "o01_post_median": quantile([r["o01"] for r in rows if o.result.memorised_step is not None
                                         and r["step"] >= o.result.memorised_step and math.isfinite(r["o01"])], 0.5),
            "wall_s": s.get("study", {}).get("wall_s_total", s.get("wall_s")), "config": c}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (NaN, NaN for n = 0)."""
    if n == 0:
        return (math.nan, math.nan)
    ph = k / n
    den = 1 + z * z / n
    centre = (ph + z * z / (2 * n)) / den
    half = z * math.sqrt(ph * (1 - ph) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


def quantile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default)."""
    xs = sorted(xs)
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def bootstrap_median_ci(xs: Sequence[float], n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the median (seeded: the report is reproducible)."""
    if len(xs) < 2:
        return (math.nan, math.nan)
    rng = random.Random(seed)
    meds = [quantile([rng.choice(xs) for _ in xs], 0.5) for _ in range(n_boot)]
    return (quantile(meds, 0.025), quantile(meds, 0.975))


def signal_stats(facts: Sequence[dict], signal: str) -> dict:
    """One signal over a set of runs. A hit is an alarm strictly before the grok step in a run that grokked; a false
    alarm is any alarm in a run that did not grok; "beats test acc" counts grokking runs where the signal's alarm came
    strictly earlier than the TEST_ACC_GAIN baseline (a hit where that baseline never fired counts)."""
    grokked = [f for f in facts if f["grok"] is not None]
    never = [f for f in facts if f["grok"] is None]
    hits = [f for f in grokked if f["leads"][signal] is not None and f["leads"][signal] > 0]
    late = [f for f in grokked if f["leads"][signal] is not None and f["leads"][signal] <= 0]
    false = [f for f in never if f["alarms"][signal] is not None]
    leads = [f["leads"][signal] for f in hits]
    fracs = [f["leads"][signal] / f["grok"] for f in hits if f["grok"] > 0]
    beats = [f for f in hits if f["alarms"]["test_acc"] is None or f["alarms"][signal] < f["alarms"]["test_acc"]]
    gain = [f["alarms"]["test_acc"] - f["alarms"][signal] for f in hits if f["alarms"]["test_acc"] is not None]
    return {"signal": signal, "n_grok": len(grokked), "hits": len(hits), "hit_ci": wilson(len(hits), len(grokked)),
            "late": len(late), "n_never": len(never), "false": len(false), "false_ci": wilson(len(false), len(never)),
            "lead_median": quantile(leads, 0.5), "lead_q1": quantile(leads, 0.25), "lead_q3": quantile(leads, 0.75),
            "lead_ci": bootstrap_median_ci(leads), "frac_median": quantile(fracs, 0.5),
            "frac_q1": quantile(fracs, 0.25), "frac_q3": quantile(fracs, 0.75), "beats_test_acc": len(beats),
            "gain_median": quantile(gain, 0.5), "leads": leads}


# --- the report ----------------------------------------------------------------------------------------------------

GUARDS = ("hold", "off", "rebase")
PILOT = {"lead": 3297, "lead_sd": 461, "mul_lead": 3083, "mul_lead_sd": 186}


def _fmt(x: Any, nd: int = 0) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _ci(ci: tuple[float, float], pct: bool = False, nd: int = 0) -> str:
    if any(not math.isfinite(v) for v in ci):
        return "–"
    return f"[{ci[0]:.0%}, {ci[1]:.0%}]" if pct else f"[{ci[0]:.{nd}f}, {ci[1]:.{nd}f}]"


def spike_jumps(rows: list[dict], det: DetectorConfig) -> tuple[list[float], list[float]]:
    """|ΔÔ01| from the row before to the row of each train-loss spike, and |ΔÔ01| between all other adjacent rows after
    memorisation: does Ô01 move at the spikes?"""
    d = Detector(dataclasses.replace(det, spike_guard="hold"))
    for r in rows:
        d.update(r["step"], r["o01"], r["train_acc"], r["train_loss_max"])
    spikes, mem = set(d.result.spike_steps), d.result.memorised_step
    at, other = [], []
    for a, b in zip(rows, rows[1:]):
        if mem is None or a["step"] < mem:
            continue
        jump = abs(b["o01"] - a["o01"])
        if math.isfinite(jump):
            (at if b["step"] in spikes else other).append(jump)
    return at, other


SENSITIVITY_RISES = (0.02, 0.05, 0.10)
SENSITIVITY_PERSISTS = (50, 100, 200)


def sensitivity_table(runs: Sequence[dict], facts: Sequence[dict]) -> list[str]:
    """The Ô01 detector re-run on the same logs over a grid of its two main thresholds (rise, persist), per regime:
    is there any setting that fires before the jump in the grokking runs without firing in the others?"""
    lines = ["| regime | rise | persist | alarm before grok | false alarms in runs that did not grok | median lead |",
             "|---|---|---|---|---|---|"]
    for reg in ("pilot", "fast"):
        sel = [(r, f) for r, f in zip(runs, facts) if f["regime"] == reg and f["role"] in ("grok", "control")]
        if not sel:
            continue
        for rise in SENSITIVITY_RISES:
            for persist in SENSITIVITY_PERSISTS:
                hits = false = n_grok = n_never = 0
                lead_list = []
                for r, f in sel:
                    det = dataclasses.replace(DetectorConfig(**f["config"]["detector"]), rise=rise, persist=persist)
                    a = signal_alarm(r["rows"], SIGNALS[0], det)
                    if f["grok"] is None:
                        n_never += 1
                        false += a is not None
                    else:
                        n_grok += 1
                        if a is not None and a < f["grok"]:
                            hits += 1
                            lead_list.append(f["grok"] - a)
                lines.append(f"| {reg} | {rise:g} | {persist} | {hits}/{n_grok} | {false}/{n_never} | "
                             f"{_fmt(quantile(lead_list, 0.5))} |")
    return lines


def stats_table(sets: Sequence[tuple[str, Sequence[dict]]], signals: Sequence[str]) -> list[str]:
    lines = ["| runs | signal | alarm before grok (Wilson 95%) | alarm at/after grok | false alarms in runs that did "
             "not grok (Wilson 95%) | lead, steps: median [IQR] | bootstrap 95% CI of the median | lead / grok step: "
             f"median [IQR] | earlier than {TEST_ACC_LABEL} | median steps earlier than {TEST_ACC_LABEL} |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label, facts in sets:
        if not facts:
            continue
        for sig in signals:
            st = signal_stats(facts, sig)
            lines.append(
                f"| {label} | {sig} | {st['hits']}/{st['n_grok']} {_ci(st['hit_ci'], True)} | {st['late']} | "
                f"{st['false']}/{st['n_never']} {_ci(st['false_ci'], True)} | {_fmt(st['lead_median'])} "
                f"[{_fmt(st['lead_q1'])}, {_fmt(st['lead_q3'])}] | {_ci(st['lead_ci'])} | "
                f"{_fmt(st['frac_median'], 2)} [{_fmt(st['frac_q1'], 2)}, {_fmt(st['frac_q3'], 2)}] | "
                f"{st['beats_test_acc'] if sig != 'test_acc' else '–'}/{st['hits'] if sig != 'test_acc' else '–'} | "
                f"{_fmt(st['gain_median']) if sig != 'test_acc' else '–'} |")
    return lines


def plot_runs(runs: Sequence[dict], facts: Sequence[dict], path: Path) -> None:
    """Small multiples: Ô01 (raw, thin; smoothed, thick) and train/test accuracy per run, with the memorisation
    (grey), Ô01 alarm (red) and grok (green) lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(runs)
    ncols = min(4, max(1, n))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 2.8 * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, run, f in zip(axes.flat, runs, facts):
        rows = run["rows"]
        steps = [r["step"] for r in rows]
        d = Detector(DetectorConfig(**f["config"]["detector"]))
        for r in rows:
            d.update(r["step"], r["o01"], r["train_acc"], r["train_loss_max"])
        ax.plot(steps, [r["o01"] for r in rows], color="tab:green", alpha=0.3, lw=0.8)
        ax.plot(steps, d.result.smoothed, color="tab:green", lw=1.6, label="Ô01 (smoothed)")
        ax.set_ylim(0, 1.02)
        ax2 = ax.twinx()
        ax2.plot(steps, [r["train_acc"] for r in rows], color="tab:blue", lw=0.9, label="train acc")
        ax2.plot(steps, [r["test_acc"] for r in rows], color="tab:orange", lw=0.9, label="test acc")
        ax2.set_ylim(0, 1.02)
        ax2.set_yticklabels([])
        for s in d.result.spike_steps:
            ax.axvline(s, color="grey", ls=":", lw=0.6)
        for s, c in ((f["memorised"], "grey"), (f["alarms"]["o01"], "tab:red"), (f["grok"], "tab:green")):
            if s is not None:
                ax.axvline(s, color=c, lw=1.2)
        ax.set_title(f"{f['name']}: alarm {_fmt(f['alarms']['o01'])}, grok {_fmt(f['grok'])}", fontsize=8)
        ax.tick_params(labelsize=7)
    h1, l1 = axes.flat[0].get_legend_handles_labels()
    fig.legend(h1 + [plt.Line2D([], [], color="tab:blue"), plt.Line2D([], [], color="tab:orange"),
                     plt.Line2D([], [], color="tab:red"), plt.Line2D([], [], color="tab:green", lw=1.2),
                     plt.Line2D([], [], color="grey", ls=":")],
               l1 + ["train acc (right)", "test acc (right)", "Ô01 alarm", "grok step", "train-loss spike"],
               loc="lower center", ncol=7, fontsize=8)
    fig.tight_layout(rect=(0, 0.04 if nrows > 1 else 0.08, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_leads(facts: Sequence[dict], path: Path) -> None:
    """Lead time (grok − alarm) of every signal in every grokking run, in steps and as a fraction of the grok step;
    alarms after the jump are negative, runs with no alarm are not drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s.name for s in SIGNALS] + ["test_acc"]
    grokked = [f for f in facts if f["grok"] is not None and f["grok"] > 0]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.6))
    groups = sorted({f["group"] for f in grokked})
    colors = {g: plt.cm.tab10(i % 10) for i, g in enumerate(groups)}
    for i, sig in enumerate(names):
        for j, f in enumerate(grokked):
            lead = f["leads"][sig]
            if lead is None:
                continue
            x = i + (j - len(grokked) / 2) * 0.6 / max(len(grokked), 1)
            a1.scatter(x, lead, color=colors[f["group"]], s=18)
            a2.scatter(x, lead / f["grok"], color=colors[f["group"]], s=18)
    for ax, yl in ((a1, "lead (steps)"), (a2, "lead / grok step")):
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, fontsize=8, rotation=20)
        ax.set_ylabel(yl)
    a1.axhspan(PILOT["lead"] - PILOT["lead_sd"], PILOT["lead"] + PILOT["lead_sd"], color="tab:red", alpha=0.12,
               label="pilot: 3,297 ± 461")
    handles = [plt.Line2D([], [], marker="o", ls="", color=colors[g]) for g in groups]
    a1.legend(handles + [plt.Rectangle((0, 0), 1, 1, color="tab:red", alpha=0.12)], groups + ["pilot 3,297 ± 461"],
              fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _split(fs: Sequence[dict], signal: str = "o01") -> tuple[list, list, list, list]:
    """(runs that grokked, those with an alarm strictly before the grok step, runs that did not grok, those that
    alarmed anyway)."""
    g = [f for f in fs if f["grok"] is not None]
    never = [f for f in fs if f["grok"] is None]
    return (g, [f for f in g if f["leads"][signal] is not None and f["leads"][signal] > 0], never,
            [f for f in never if f["alarms"][signal] is not None])


def _modular(facts: Sequence[dict], reg: str, task: Optional[str] = None) -> list[dict]:
    """The grok- and control-role runs of one regime (a control that grokked counts as a grokking run)."""
    return [f for f in facts if f["regime"] == reg and f["role"] in ("grok", "control")
            and (task is None or f["task"] == task)]


def _provisional(n: int, pilot_n: int, what: str) -> str:
    return f" (provisional: {n} {what}, fewer than the pilot's {pilot_n})" if n < pilot_n else ""


def _lead_verdict(fs: Sequence[dict], mean: float, sd: float, pilot_n: int, what: str, verdict: bool = True) -> str:
    """Reproduced = an alarm in every grokking run and a median lead within 2 SD of the pilot's mean; not = no alarm,
    or a median lead outside that band; partly = alarms in some runs with a median lead inside it. With
    ``verdict=False`` only the numbers (for a regime that is not the pilot's)."""
    g, h, _, _ = _split(fs)
    if not g:
        return "not yet tested (no such run has finished and grokked)" if verdict else "no grokking run yet"
    if not h:
        return (f"not: no alarm before the jump in 0/{len(g)} {what}" if verdict
                else f"no alarm before the jump in 0/{len(g)} {what}")
    leads = [f["leads"]["o01"] for f in h]
    med = quantile(leads, 0.5)
    inside = abs(med - mean) <= 2 * sd
    v = ("reproduced" if inside and len(h) == len(g) else "partly" if inside else "not")
    if not verdict:
        return (f"median lead {_fmt(med)} steps ({_fmt(quantile([f['leads']['o01'] / f['grok'] for f in h], 0.5), 2)} "
                f"of the grok step) in {len(h)}/{len(g)} {what}")
    return (f"{v}: median lead {_fmt(med)} steps (IQR {_fmt(quantile(leads, 0.25))}–{_fmt(quantile(leads, 0.75))}; "
            f"{_fmt(quantile([f['leads']['o01'] / f['grok'] for f in h], 0.5), 2)} of the grok step) in {len(h)}/{len(g)} "
            f"{what}{'' if inside else f', outside {mean:,.0f} ± {2 * sd:,.0f}'}{_provisional(len(g), pilot_n, what)}")


def _machine(facts: Sequence[dict]) -> str:
    """Where the runs trained, from their summaries (device, torch threads)."""
    kinds = sorted({f"{f.get('device') or '?'}, {f.get('threads') or '?'} thread(s) per run" for f in facts})
    return "; ".join(kinds) if kinds else "no run yet"


def _detector_version() -> int:
    from .detect import DETECTOR_VERSION

    return DETECTOR_VERSION


def _rule(f: dict) -> str:
    return f"rule v{f['detector_version']}" if f["detector_version"] != 1 else "an unversioned rule (v1 or a draft of v2)"


def _recorded_alarm_note(facts: Sequence[dict]) -> str:
    """Every alarm in this report is recomputed from the logs with the current detector; say where the alarm a run
    recorded during training differs (it was raised by an older rule)."""
    differ = [f for f in facts if f["recorded_alarm"] != f["alarms"]["o01"]]
    if not differ:
        return "The Ô01 alarm each run recorded during training equals the one recomputed here in every run."
    return (f"Every alarm here is recomputed from the logs with detector rule version {_detector_version()}. "
            f"{len(differ)} run(s) recorded a different Ô01 alarm during training under an older rule (recorded → "
            "recomputed): " + ", ".join(f"{f['name']} {_fmt(f['recorded_alarm'])} → {_fmt(f['alarms']['o01'])} "
                                        f"({_rule(f)})" for f in differ) + ".")


def _verdicts(facts: Sequence[dict], by_guard: Optional[dict] = None) -> list[str]:
    """The pilot's claims, each judged from the finished runs of the pilot's own regime (p 97/113, lr 1e-3); the fast
    regime is reported beside it but never decides a verdict. Rules are stated next to each verdict."""
    pilot, fast = _modular(facts, "pilot"), _modular(facts, "fast")
    out = []

    def hits_line(fs, label):
        g, h, _, _ = _split(fs)
        return f"{label}: {len(h)}/{len(g)}" if g else f"{label}: no grokking run yet"

    # 1. every grokking run re-rises before the jump
    g, h, _, _ = _split(pilot)
    if not g:
        v = "not yet tested in the pilot's regime (no pilot-regime run has finished and grokked)"
    else:
        v = ("reproduced" if len(h) == len(g) else "partly" if h else "not") + \
            f": the alarm fired before the grok step in {len(h)}/{len(g)} pilot-regime grokking runs (Wilson 95% " \
            f"{_ci(wilson(len(h), len(g)), True)})" + _provisional(len(g), 16, "grokking runs")
    gf, hf, _, _ = _split(fast)
    guard_src, guard_label = (g, "pilot regime") if g else (gf, "fast regime")
    guards = ""
    if by_guard and guard_src:
        names = {x["name"] for x in guard_src}
        guards = (f" The same logs ({guard_label}) with each spike guard: " + "; ".join(
            f"{gd}: {sum(1 for f in by_guard[gd] if f['name'] in names and (f['leads']['o01'] or 0) > 0)}/"
            f"{len(guard_src)}" for gd in GUARDS) + ". (`rebase` restarts the average and the running minimum after every spike window; "
            "it removes level shifts made at a spike, but also any slow rise that spans spikes, so a low count under "
            "rebase alone does not show that the rise is made of spikes.)")
    out.append(f"- **Ô01 re-rises before the jump in every grokking run (pilot: 16/16).** {v}. Fast regime (p 59, "
               f"lr 3e-3; not the pilot's regime, no verdict): {len(hf)}/{len(gf)}. Rule: reproduced = all, partly = "
               f"some, not = none." + guards)
    # 2. the lead (addition) and 4. multiplication
    out.append(f"- **The lead is ~3,000 steps (3,297 ± 461) in the pilot's regime.** "
               f"{_lead_verdict(_modular(facts, 'pilot', 'add'), PILOT['lead'], PILOT['lead_sd'], 10, 'pilot-regime addition runs')}."
               f" Fast regime (numbers only): {_lead_verdict(_modular(facts, 'fast', 'add'), PILOT['lead'], PILOT['lead_sd'], 0, 'fast-regime runs', verdict=False)}."
               " Rule: reproduced = an alarm in every grokking run and a median lead within 2 SD (±922) of 3,297; "
               "not = no alarm, or a median outside that band; partly = alarms in some runs, median inside. (The pilot "
               "gives a mean ± SD over its addition runs; we compare our median with it.)")
    out.append(f"- **Multiplication: 6/6, lead 3,083 ± 186.** "
               f"{_lead_verdict(_modular(facts, 'pilot', 'mul'), PILOT['mul_lead'], PILOT['mul_lead_sd'], 6, 'pilot-regime multiplication runs')}."
               " Rule: as for addition, with 3,083 ± 372.")
    # 3. no alarm in runs that do not grok
    _, _, nev, fa = _split(pilot)
    _, _, nevf, faf = _split(fast)
    if not nev:
        v = "not yet tested in the pilot's regime (no pilot-regime run has finished without grokking)"
    else:
        v = ("not" if fa else "reproduced" if len(nev) >= 5 else "partly (no false alarm") + \
            ("" if fa or len(nev) >= 5 else f", but {len(nev)} runs, fewer than the pilot's 5)") + \
            f": the Ô01 alarm fired in {len(fa)}/{len(nev)} pilot-regime runs that did not grok (Wilson 95% " \
            f"{_ci(wilson(len(fa), len(nev)), True)})" + (f": {', '.join(f['name'] for f in fa)}" if fa else "")
    out.append(f"- **No alarm in runs that do not grok (pilot: 0/5).** {v}. Fast regime: false alarms in "
               f"{len(faf)}/{len(nevf)} runs that did not grok" + (f" ({', '.join(f['name'] for f in faf)})" if faf
                                                                    else "")
               + ". Rule: reproduced = no alarm in ≥ 5 pilot-regime runs that did not grok; partly = none in fewer; not = "
               "any. \"Did not grok\" means not within the run's max steps (censored).")
    # 5. parity
    parity = [f for f in facts if f["regime"] == "parity"]
    # grokking is generalisation *after* memorisation: a run that generalised by the time it memorised has no delay
    instant = [f for f in parity if f["grok"] is not None and f["memorised"] is not None and f["grok"] <= f["memorised"]]
    measured = [f for f in parity if f["o01_peak"] is not None and f["o01_min"] is not None and f not in instant]
    unmeasured = len(parity) - len(measured) - len(instant)
    if not parity:
        v = "not yet tested (no parity run finished)"
    elif instant and not measured:
        where = ", ".join(f"{f['name']} at step {f['grok']}" for f in instant)
        v = (f"not tested: {len(instant)}/{len(parity)} parity runs generalised by the step they memorised ({where}): "
             "no grokking delay, so this parity setting cannot test the claim; a harder one (more bits, less data) is "
             "needed")
    elif not measured:
        v = f"inconclusive: none of the {len(parity)} parity runs has a measurable Ô01 drop (no memorisation or no finite Ô01)"
    else:
        min_drop = DetectorConfig(**measured[0]["config"]["detector"]).min_drop
        dropped = [f for f in measured if f["o01_peak"] - f["o01_min"] >= min_drop]
        rose = [f for f in measured if f["alarms"]["o01"] is not None
                and (f["grok"] is None or f["alarms"]["o01"] < f["grok"])]
        grokked = [f for f in measured if f["grok"] is not None]
        counts = (f"Ô01 dropped by ≥ {min_drop:g} after memorisation in {len(dropped)}/{len(measured)} parity runs and "
                  f"re-rose (an alarm before the jump, or at all if there was none) in {len(rose)}/{len(measured)}; "
                  f"{len(grokked)}/{len(measured)} grokked"
                  + (f"; {unmeasured} run(s) without a measurable Ô01 left out" if unmeasured else "")
                  + (f"; {len(instant)} run(s) with no grokking delay left out" if instant else ""))
        if not grokked:
            v = (f"not tested: none of the {len(measured)} parity runs generalised within its max steps (the claim is "
                 f"about runs that do); {counts}")
        else:
            v = ("reproduced" if len(dropped) == len(measured) and not rose else "not" if len(rose) == len(measured)
                 else "partly") + f": {counts}"
    out.append(f"- **On k-sparse parity the signal blurs / Ô01 drops instead of rising.** {v}. Rule: reproduced = "
               "a drop and no re-rise alarm in every parity run; not = a re-rise alarm in every one; partly otherwise.")
    # 6. no rise by step 1,000 → no grok (the pilot's regime: rise near 750, jump near 4,000). A "rise" here is the
    # first step at which the detector's rise condition held at all (first_rise), persistent or not.
    def rise_1000(fs):
        g, _, nev, _ = _split(fs)
        late = [f for f in g if f["first_rise"] is None or f["first_rise"] > 1000]
        early_nev = [f for f in nev if f["first_rise"] is not None and f["first_rise"] <= 1000]
        return g, nev, late, early_nev

    g, nev, late, early_nev = rise_1000(pilot)
    counter = len(late) + len(early_nev)
    if not g and not nev:
        v = "not yet tested in the pilot's regime"
    else:
        if counter and counter == len(g) + len(nev):
            v = "not"
        elif counter:
            v = "partly"
        elif g and nev:
            v = "reproduced"
        else:
            v = "no counterexample yet, half tested"
        v += (" (no pilot-regime run failed to grok)" if not nev else "") + \
            (" (no pilot-regime run grokked)" if not g else "") + \
            f": {len(late)}/{len(g)} pilot-regime grokking runs had no rise by step 1,000" + \
            (f" ({', '.join(f['name'] for f in late)})" if late else "") + \
            f"; {len(early_nev)}/{len(nev)} that did not grok had one by step 1,000" + \
            (f" ({', '.join(f['name'] for f in early_nev)})" if early_nev else "")
    gf, nevf, latef, earlyf = rise_1000(fast)
    out.append(f"- **Runs with no re-rise by step 1,000 do not grok (rise begins near step 750, only in runs that "
               f"will grok).** {v}. Fast regime: {len(latef)}/{len(gf)} grokking runs without a rise by 1,000, "
               f"{len(earlyf)}/{len(nevf)} non-grokking runs with one. A rise is the first step where smoothed Ô01 "
               f"stood `rise` above its post-memorisation minimum after a real drop, whether or not it persisted. "
               f"Rule: reproduced = both kinds of run tested and no counterexample of either kind; not = every tested "
               f"run a counterexample; partly = some. The step-1,000 mark is the pilot's regime's; it cannot "
               f"transfer to runs that memorise later or grok earlier.")
    # the question: does Ô01 beat watching test accuracy?
    parts = []
    for label, fs in (("pilot regime", pilot), ("fast regime", fast)):
        g, h, nev, fa = _split(fs)
        if not g:
            continue
        earlier = [f for f in h if f["alarms"]["test_acc"] is None or f["alarms"]["o01"] < f["alarms"]["test_acc"]]
        earlier_rise = [f for f in h if f["alarms"]["test_acc_rise"] is None
                        or f["alarms"]["o01"] < f["alarms"]["test_acc_rise"]]
        _, ht, _, fat = _split(fs, "test_acc")
        if len(earlier) == len(g):
            v = "yes" if len(fa) <= len(fat) else "earlier, but with more false alarms"
        else:
            v = "in some runs" if earlier else "no"
        parts.append(f"{label}: {v} — the Ô01 alarm came before {TEST_ACC_LABEL} in {len(earlier)}/{len(g)} grokking "
                     f"runs and before the test-accuracy detector (`test_acc_rise`) in {len(earlier_rise)}/{len(g)}; "
                     f"false alarms in runs that did not grok: Ô01 {len(fa)}/{len(nev)}, {TEST_ACC_LABEL} "
                     f"{len(fat)}/{len(nev)}")
    out.append("- **Does the Ô01 alarm beat simply watching test accuracy?** (the issue's question, not a pilot claim) "
               + ("; ".join(parts) if parts else "not yet tested") + f". Rule: yes = earlier than {TEST_ACC_LABEL} "
               "in every grokking run with no more false alarms.")
    # 7. forcing
    forced = [f for f in facts if f["regime"] == "forcing"]
    if not forced:
        v = "not yet tested (no forced run finished)"
    else:
        gf_steps = [f["grok"] for f in fast if f["grok"] is not None]
        per, effective = [], []
        for lam in sorted({f["config"]["force_cka"] for f in forced}):
            fs = [f for f in forced if f["config"]["force_cka"] == lam]
            held = [f for f in fs if (f.get("o01_post_median") or 0) >= 0.9]
            effective += held
            per.append(f"λ = {lam:g}: {sum(f['grok'] is not None for f in fs)}/{len(fs)} grokked within "
                       f"{max(f['config']['max_steps'] for f in fs):,} steps (grok steps "
                       f"{', '.join(_fmt(f['grok']) for f in fs)}), median post-memorisation Ô01 "
                       f"{', '.join(_fmt(f.get('o01_post_median'), 2) for f in fs)}")
        eg = [f for f in effective if f["grok"] is not None]
        if not effective:
            v = "inconclusive: the loss term did not hold Ô01 near 1 (median post-memorisation Ô01 < 0.9 in every run)"
        else:
            v = ("reproduced" if 3 * len(eg) >= 2 * len(effective) else "partly" if eg else "not") + \
                f": {len(eg)}/{len(effective)} runs in which forcing held Ô01 ≥ 0.9 still grokked" + \
                _provisional(len(effective), 3, "effectively forced runs")
        v += ". " + "; ".join(per) + (f". Unforced fast-regime grok steps for comparison: median {_fmt(quantile(gf_steps, 0.5))}"
                                      if gf_steps else "")
    out.append(f"- **Forcing Ô01 → 1 does not stop grokking (pilot: 2/3 at 20k steps).** {v}. Rule: among runs where "
               "the term held the median post-memorisation Ô01 ≥ 0.9, reproduced = ≥ 2/3 grokked, not = none did "
               "(within our max steps, shorter than the pilot's 20k: a run that did not grok may grok later).")
    return out


def write_report(runs_dir: Path | str, doc: Path | str, specs: Optional[Sequence[RunSpec]] = None,
                 grid_path: Optional[Path] = None) -> Path:
    """Aggregate every finished run in runs_dir into the markdown report ``doc`` and its figures (in
    ``<doc dir>/study/``). Only run directories are read; ``specs`` (the grid) only lists what has not run yet."""
    runs_dir, doc = Path(runs_dir), Path(doc)
    figdir = doc.parent / "study"
    figdir.mkdir(parents=True, exist_ok=True)
    runs = load_runs(runs_dir)
    order = {s.name: i for i, s in enumerate(specs or [])}
    runs.sort(key=lambda r: (order.get(r["name"], 10 ** 6), r["name"]))
    facts = [analyse_run(r) for r in runs]
    by_guard = {g: [analyse_run(r, g) for r in runs] for g in GUARDS}
    rel = lambda p: os.path.relpath(p, doc.parent)
    L = ["# The study: does the inter-layer CKA re-rise predict grokking?", "",
         f"*Generated by `fastcka study --report` from the {len(runs)} run directories in `{runs_dir}/`; do not "
         f"edit by hand — every number below is recomputed from those directories.*", "",
         "## The question", "",
         "The pilot (grokking chapter §25.7–25.8, issue 9) reports that Ô01 — the linear CKA between the residual "
         "streams after block 0 and block 1 at the answer position — drops during memorisation and re-rises ~3,000 "
         "steps before test accuracy jumps, in 16/16 grokking runs and 0/5 non-grokking runs (modular addition with "
         "p = 97 and 113, multiplication 6/6 with lead 3,083 ± 186), that the signal blurs on k-sparse parity, that "
         "runs with no re-rise by step 1,000 do not grok, and that forcing Ô01 → 1 through a loss term did not stop "
         "grokking (2/3 runs at 20k steps). This study re-runs it with more seeds, in the pilot's regime and in the "
         "faster demo regime, with non-grokking controls, and runs the other progress measures through the same "
         "detector as baselines. Its result is whatever the finished runs show.", ""]
    # status
    done = {r["name"] for r in runs}
    missing = [s for s in (specs or []) if s.name not in done]
    total_wall = sum(f["wall_s"] or 0 for f in facts)
    L += ["## Status of the grid", "",
          f"{len(runs)} of {len(specs) if specs else '?'} runs of `{grid_path or 'the grid'}` have finished; their "
          f"training took {total_wall / 60:.0f} min of wall time in all ({_machine(facts)}; runs shared the machine "
          f"with other work, so the times are upper bounds). "
          + ("**The rest of the grid has not run**: " + ", ".join(f"`{s.name}`" for s in missing) + ". "
             "`fastcka study docs/study/grid.toml --jobs 2` resumes it (finished runs are skipped, a killed run "
             "resumes from its checkpoint in `runs/study-ckpt/`, which is not committed: on another machine an unfinished "
             "run starts over), and `fastcka study --report` regenerates this "
             "file." if missing else "The whole grid has run."), ""]
    # setup
    from .train import TrainConfig

    tdef = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    configs = [{**tdef, **s.config} for s in specs or []] + [{**tdef, **f["config"]} for f in facts]

    def val(key: str) -> str:  # one value if every run shares it, else all of them
        vs = sorted({str(c[key]) for c in configs}) if configs else [str(tdef[key])]
        return vs[0] if len(vs) == 1 else "/".join(vs) + " (varies by group)"

    mem_accs = sorted({str(c["detector"]["memorised_acc"] if isinstance(c["detector"], dict)
                           else c["detector"].memorised_acc) for c in configs}) or ["0.99"]
    L += ["## Setup", "",
          "Model and optimiser, from the runs' configs (a value that differs between groups is listed with all its "
          f"values; the table below gives the per-group ones): a {val('n_layers')}-block transformer, d_model "
          f"{val('d_model')}, {val('n_heads')} heads, d_mlp {val('d_mlp')}, {val('act')} MLP, {val('pos_emb')} "
          f"positions, LayerNorm per the table; full-batch AdamW, betas ({val('beta1')}, {val('beta2')}), linear "
          f"warm-up {val('warmup')} steps then constant lr. Inputs `a b =` over residues mod p (parity: n bits), "
          f"answer at the last position. Metrics every `every` steps; Ô01 over "
          f"{'all training inputs' if val('probe') == '0' else val('probe') + ' training inputs (probe)'} "
          f"({'debiased' if val('unbiased') == 'True' else 'biased'} linear CKA); Fourier concentration over the top "
          f"{val('fourier_top_k')} frequencies; grok step = first logged step with test accuracy ≥ {val('grok_acc')}; "
          f"memorisation = train accuracy ≥ {'/'.join(mem_accs)}. The split, initialisation and probe are seeded by "
          f"the run's seed; float32; {_machine(facts)}.", ""]
    seen_groups: dict[str, dict] = {}
    for s in specs or []:
        seen_groups.setdefault(s.group, {"spec": s, "seeds": [], "done": []})
        seen_groups[s.group]["seeds"].append(s.seed)
        if s.name in done:
            seen_groups[s.group]["done"].append(s.seed)
    for f in facts:  # run directories that are not in the grid given
        if f["group"] not in seen_groups:
            seen_groups[f["group"]] = {"spec": RunSpec(f["name"], f["group"], f["role"], f["seed"], f["config"]),
                                       "seeds": [], "done": []}
        if f["seed"] not in seen_groups[f["group"]]["done"]:
            seen_groups[f["group"]]["done"].append(f["seed"])
    L += ["| group | role | task | p | train frac | lr | weight decay | LayerNorm | force_cka | max steps | stop after "
          "grok | every | seeds planned | seeds finished |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, gi in seen_groups.items():
        c = {**tdef, **gi["spec"].config}
        task = c["task"] if c["task"] != "parity" else f"parity n={c['n_bits']} k={c['k']}"
        L.append(f"| {name} | {gi['spec'].role} | {task} | {c['p'] if c['task'] != 'parity' else '–'} | "
                 f"{c['train_frac']} | {c['lr']:g} | {c['weight_decay']:g} | {'on' if c['layer_norm'] else 'off'} | "
                 f"{c['force_cka']:g} | {c['max_steps']} | {c['stop_after_grok']} | {c['every']} | "
                 f"{','.join(map(str, gi['seeds'])) or '–'} | {','.join(map(str, sorted(gi['done']))) or 'none'} |")
    dets = sorted({json.dumps(f["config"]["detector"], sort_keys=True) for f in facts}) or [json.dumps({})]
    det = DetectorConfig(**json.loads(dets[0]))
    L += ["", "Detector (DESIGN §2, `fastcka/grok/detect.py`, rule version "
          f"{_detector_version()}), the same for every signal"
          + (": " if len(dets) == 1 else f" (the runs use {len(dets)} different settings; the first): ")
          + ", ".join(f"{k} {v}" for k, v in dataclasses.asdict(det).items() if k != "direction") + ". "
          "Signals: " + "; ".join(f"`{s.name}` — {s.label}" + (f", min_drop {s.min_drop:g}" if s.min_drop is not None
                                  else "") for s in SIGNALS)
          + f"; `test_acc` ({TEST_ACC_LABEL}) — first logged step at or after memorisation with test accuracy "
          f"{TEST_ACC_GAIN:g} above its value at memorisation (what a user watching test accuracy would see). Relative "
          "signals are divided by the absolute value of their first finite non-zero point (step 0 in practice), so `rise` "
          "0.05 means a 5% move. Measures with no "
          "memorisation dip take min_drop 0. A hit is an alarm strictly before the grok step; an alarm in a run that "
          "did not grok is a false alarm. \"Did not grok\" means not within the run's max steps, and grokking runs "
          "stop `stop after grok` steps after the jump: both are censored, not final. `weight_norm` cannot fall "
          "through weight decay in the weight-decay-0 controls, so its false-alarm rate there is not comparable; "
          "read it on the train-fraction controls.", ""]
    if not runs:
        L += ["No run has finished yet.", ""]
        doc.write_text("\n".join(L) + "\n")
        return doc
    # figures
    plot_runs(runs, facts, figdir / "runs.png")
    plot_leads(facts, figdir / "leads.png")
    L += ["## All runs", "", f"![small multiples]({rel(figdir / 'runs.png')})", "",
          "Each panel: Ô01 raw (thin) and smoothed (thick green, left axis), train (blue) and test (orange) accuracy "
          "(right axis, 0–1); vertical lines: memorisation (grey), Ô01 alarm (red), grok step (green); dotted: "
          "train-loss spikes.", "",
          "| run | steps run | memorised | Ô01 peak → min | rise onset | Ô01 alarm (guard hold / off / rebase) | "
          f"grok | lead | test acc at alarm | Ô01 at alarm → at grok | spikes | fourier | weight_norm | spec_entropy | test_loss | test_acc_rise | {TEST_ACC_LABEL} | "
          "minutes |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for f, run in zip(facts, runs):
        al = " / ".join(_fmt(by_guard[g][facts.index(f)]["alarms"]["o01"]) for g in GUARDS)
        acc = next((r["test_acc"] for r in run["rows"] if r["step"] == f["alarms"]["o01"]), None)
        o_at = {r["step"]: r["o01"] for r in run["rows"]}
        o_move = f"{_fmt(o_at.get(f['alarms']['o01']), 3)} → {_fmt(o_at.get(f['grok']), 3)}"
        L.append(f"| {f['name']} | {f['steps']} | {_fmt(f['memorised'])} | {_fmt(f['o01_peak'], 3)} → "
                 f"{_fmt(f['o01_min'], 3)} | {_fmt(f['rise_onset'])} | {al} | {_fmt(f['grok'])} | "
                 f"{_fmt(f['leads']['o01'])} | {_fmt(acc, 3)} | {o_move} | {f['spikes']} | "
                 + " | ".join(_fmt(f["alarms"][k]) for k in ("fourier", "weight_norm", "spec_entropy", "test_loss",
                                                            "test_acc_rise", "test_acc"))
                 + f" | {_fmt((f['wall_s'] or 0) / 60, 1)} |")
    L += ["", "Alarm columns are steps (– = none). Lead = grok step − Ô01 alarm step (negative: the alarm came after "
          "the jump). " + _recorded_alarm_note(facts), ""]
    # signal tables
    sets = [("pilot regime (p 97/113, lr 1e-3) + its controls", _modular(facts, "pilot")),
            ("fast regime (p 59, lr 3e-3) + its controls", _modular(facts, "fast")),
            ("parity", [f for f in facts if f["regime"] == "parity"]),
            ("forcing", [f for f in facts if f["regime"] == "forcing"]),
            ("LayerNorm on", [f for f in facts if f["regime"] == "layernorm"]),
            ("other", [f for f in facts if f["regime"] == "other"])]
    L += ["## Every signal through the same detector", "",
          "Wilson intervals are 95% score intervals; the bootstrap is 2,000 resamples of the "
          f"leads of the hits (seeded). \"Earlier than {TEST_ACC_LABEL}\" counts hits whose alarm came strictly before "
          f"test accuracy first rose {TEST_ACC_GAIN:g} above its value at memorisation.", ""]
    L += stats_table(sets, [s.name for s in SIGNALS] + ["test_acc"])
    L += ["", f"![lead times]({rel(figdir / 'leads.png')})", "",
          "Lead time of every signal in every grokking run (steps, and as a fraction of the grok step); colour = "
          "group; the band is the pilot's 3,297 ± 461.", "",
          "### The spike guard (detector setting, applied to the same logs)", ""]
    L += stats_table([(f"guard {g}, {reg} regime", _modular(by_guard[g], reg)) for reg in ("pilot", "fast")
                      for g in GUARDS], ["o01"])
    at, other = [], []
    for run, f in zip(runs, facts):
        a, o = spike_jumps(run["rows"], DetectorConfig(**f["config"]["detector"]))
        at += a
        other += o
    L += ["", f"Does Ô01 move at the train-loss spikes? Over all runs after memorisation: median |ΔÔ01| between a "
          f"spike's row and the row before it {_fmt(quantile(at, 0.5), 3)} ({len(at)} spikes), between all other "
          f"adjacent rows {_fmt(quantile(other, 0.5), 3)} ({len(other)} pairs). Ô01 rise onsets (guard hold) within "
          f"two logging intervals after the end of a spike window: {sum(f['onset_after_window'] for f in facts)} of "
          f"{sum(f['rise_onset'] is not None for f in facts)}.", ""]
    L += ["### How much do the detector's thresholds matter?", "",
          "The Ô01 detector (each run's own settings, as above) re-run on the same logs with each combination of "
          "its rise threshold and persistence. A setting that separates the runs would fire before the jump in every "
          "grokking run and in no run that did not grok.", "", *sensitivity_table(runs, facts), ""]
    L += ["## The pilot's claims", "", *_verdicts(facts, by_guard), "",
          "Verdicts use only the finished runs listed above; claims whose runs have not finished say \"not yet tested\".",
          ""]
    doc.write_text("\n".join(L) + "\n")
    return doc

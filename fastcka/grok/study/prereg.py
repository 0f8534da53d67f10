"""The pre-registered test of issue 20 (docs/study/PREREG.md): the blind calibration of AdamW's ε, and the verdicts
of H1 and H2 computed from the finished runs.

Every threshold of PREREG.md is a constant here (the tests pin them to the file). Run as a module::

    python -m fastcka.grok.study.prereg run               # restore committed checkpoints, finish the calibration
                                                          # (it writes the S arm's ε into prereg_grid.toml), then
                                                          # the runs, one at a time; resumable at every step
    python -m fastcka.grok.study.prereg save-checkpoints  # before a session ends: copy unfinished checkpoints to
                                                          # docs/study/prereg/resume/ (then commit them)

``calibrate`` runs the calibration alone; the runs alone are ``fastcka study docs/study/prereg_grid.toml --runs-dir
docs/study/prereg/runs --ckpt-dir runs/prereg-ckpt --no-report``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import tomllib
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..detect import Detector, DetectorConfig
from .records import Verdict, render_line

GRID = Path("docs/study/prereg_grid.toml")
RUNS_DIR = Path("docs/study/prereg/runs")
CALIBRATION_DIR = Path("docs/study/prereg/calibration")
CALIBRATION_CKPT = Path("runs/prereg-calibration")

# §2: the blind calibration
CALIBRATION_SEED = 1000
CALIBRATION_TASK = "add"
LADDER = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
SPIKE_FREE_FROM, SPIKE_FREE_TO = 100, 3000  # no spike at a logged step in [from, to]
CHUNK = 250  # a candidate trains in chunks of this many steps and stops at its first spike in the window
CALIBRATION_COLUMNS = ("step", "train_loss", "train_loss_max", "train_acc")  # all the calibration record keeps
PLACEHOLDER = "adam_eps = -1.0 }  # CALIBRATED (PREREG §2)"

# §3-§5: the runs and the rules
ARMS = {"S": "spikes suppressed", "D": "default", "N": "candidate negatives"}
MAX_STEPS = 20000
H1_MAX_SPIKES = 2  # eligible: groks with at most this many spikes before the grok step
H1_SURVIVES, H1_ARTEFACT, H1_MIN_ELIGIBLE = 0.75, 0.25, 4
H2_ALARM_BY = 1950  # R_O: Ô01 alarm (guard hold) at or before this step => groks
H2_TEST_STEP, H2_TEST_GAIN = 1000, 0.011  # R_T: test acc at this step >= its value at memorisation + gain => groks


def arm(run_name: str) -> str:
    """The arm (S, D or N) of a pre-registered run, from its name (``S-add-p97-s1001`` ...)."""
    a = run_name.split("-", 1)[0]
    if a not in ARMS:
        raise ValueError(f"run_name: {run_name!r} is not a pre-registered run (expected S-, D- or N-)")
    return a


def spike_steps(rows: Sequence[dict], det: DetectorConfig) -> list[int]:
    """The logged steps of the train-loss spikes of PREREG §2 (the study detector's spike rule), reading only the
    ``step`` and ``train_loss_max`` columns: what the calibration is allowed to see."""
    d = Detector(DetectorConfig(spike_guard="hold", spike_ratio=det.spike_ratio, spike_min_loss=det.spike_min_loss,
                                spike_window=det.spike_window))
    for r in rows:
        d.update(int(r["step"]), math.nan, 0.0, float(r["train_loss_max"]))
    return list(d.result.spike_steps)


def calibration_outcome(rows: Sequence[dict], det: DetectorConfig) -> Optional[dict]:
    """A candidate's state from its rows so far: ``{"passed": bool, "first_spike": step or None}`` once decided
    (a spike in the window, or the window's end reached without one), None while undecided."""
    first = next((s for s in spike_steps(rows, det) if SPIKE_FREE_FROM <= s <= SPIKE_FREE_TO), None)
    if first is not None:
        return {"passed": False, "first_spike": first}
    if rows and rows[-1]["step"] >= SPIKE_FREE_TO:
        return {"passed": True, "first_spike": None}
    return None


def _grid_defaults(grid_text: str) -> tuple[dict, dict]:
    g = tomllib.loads(grid_text)
    defaults = dict(g.get("defaults", {}))
    return defaults, defaults.pop("detector", {})


def calibrate(grid: Path = GRID, record_dir: Path = CALIBRATION_DIR, ckpt_dir: Path = CALIBRATION_CKPT,
              ladder: Sequence[float] = LADDER, chunk: int = CHUNK, log: Callable[[str], None] = print,
              overrides: Optional[dict] = None) -> Optional[float]:
    """Run the blind calibration of PREREG §2 (resumable: a decided candidate is read back from ``record_dir``, an
    undecided one resumes from its checkpoint in ``ckpt_dir``). Returns the calibrated ε (None if no candidate passes)
    and writes it into the S groups of ``grid``. ``overrides`` (tests only) replaces config fields."""
    from ..train import TrainConfig, train

    defaults, det_d = _grid_defaults(Path(grid).read_text())
    det = DetectorConfig(**det_d)
    record_dir, ckpt_dir = Path(record_dir), Path(ckpt_dir)
    record_dir.mkdir(parents=True, exist_ok=True)
    rec_path = record_dir / "calibration.json"
    record = json.loads(rec_path.read_text()) if rec_path.exists() else {"candidates": []}
    record.update({"seed": CALIBRATION_SEED, "task": CALIBRATION_TASK, "ladder": list(ladder),
                   "window": [SPIKE_FREE_FROM, SPIKE_FREE_TO], "rule": "PREREG.md §2"})
    decided = {c["adam_eps"]: c for c in record["candidates"]}
    chosen = None
    for eps in ladder:
        if eps not in decided:
            out = ckpt_dir / f"eps-{eps:g}"
            while True:
                done, rows = _checkpointed(out)
                outcome = calibration_outcome(rows, det)
                if outcome is not None:
                    break
                steps = min(done - done % chunk + chunk, SPIKE_FREE_TO)
                cfg = TrainConfig(**{**defaults, "task": CALIBRATION_TASK, "seed": CALIBRATION_SEED, "adam_eps": eps,
                                     "max_steps": steps, "stop_after_grok": -1, "detector": det, "out": str(out),
                                     "threads": 1, "progress": False, **(overrides or {})})
                if train(cfg, resume=done > 0)["interrupted"]:
                    raise KeyboardInterrupt(f"calibration interrupted at eps {eps:g}; run it again to resume")
            with open(record_dir / f"eps-{eps:g}.csv", "w") as f:
                f.write(",".join(CALIBRATION_COLUMNS) + "\n")
                for r in rows:
                    f.write(",".join(str(r[c]) if c == "step" else repr(r[c]) for c in CALIBRATION_COLUMNS) + "\n")
            decided[eps] = {"adam_eps": eps, "steps_run": rows[-1]["step"], **outcome}
            record["candidates"] = [decided[e] for e in ladder if e in decided]
            rec_path.write_text(json.dumps(record, indent=2) + "\n")
            log(f"calibration: eps {eps:g}: " + ("passed (no spike in steps 100-3,000)" if outcome["passed"]
                                                 else f"failed (spike at step {outcome['first_spike']})"))
        if decided[eps]["passed"]:
            chosen = eps
            break
    record["chosen"] = chosen
    rec_path.write_text(json.dumps(record, indent=2) + "\n")
    if chosen is not None and PLACEHOLDER in Path(grid).read_text():
        write_calibrated(Path(grid), chosen)
    elif chosen is not None:  # filled by an earlier call: it must hold the same value
        from .grid import load_grid

        found = {sp.config.get("adam_eps") for sp in load_grid(Path(grid).read_text()) if arm(sp.name) == "S"}
        if found != {chosen}:
            raise ValueError(f"grid: {grid} gives the S runs adam_eps {sorted(found)}, but the calibration chose {chosen:g}")
    return chosen


def _checkpointed(out: Path) -> tuple[int, list[dict]]:
    """The step of a candidate's checkpoint and its rows, reduced to the train-loss columns (0 and [] if none)."""
    path = out / "checkpoint.pt"
    if not path.exists():
        return 0, []
    import torch

    state = torch.load(path, weights_only=True, map_location="cpu")
    return state["step"], [{c: r[c] for c in CALIBRATION_COLUMNS} for r in state["rows"]]


def write_calibrated(grid: Path, eps: float) -> None:
    """Fill the calibrated ε into the S groups of the grid file (each placeholder line, nothing else)."""
    text = grid.read_text()
    if PLACEHOLDER not in text:
        raise ValueError(f"grid: {grid} has no '{PLACEHOLDER}' line left to fill")
    grid.write_text(text.replace(PLACEHOLDER, f"adam_eps = {eps:g} }}  # calibrated (PREREG §2; "
                                              f"docs/study/prereg/calibration/)"))


# --- the verdicts (PREREG §4-§6) ----------------------------------------------------------------------------------

def run_facts(run: dict) -> dict:
    """What H1 and H2 need from one finished run (``{"name", "summary", "rows"}`` as :func:`load_runs` gives it)."""
    from .analysis import SIGNALS, signal_alarm

    rows, c = run["rows"], run["summary"]["config"]
    det = DetectorConfig(**c["detector"])
    grok = next((r["step"] for r in rows if r["step"] <= MAX_STEPS and r["test_acc"] >= c["grok_acc"]), None)
    spikes = spike_steps(rows, det)
    o01 = SIGNALS[0]
    mem = next((r for r in rows if r["train_acc"] >= det.memorised_acc), None)
    at_test_step = next((r for r in rows if r["step"] == H2_TEST_STEP), None)
    gain = (at_test_step["test_acc"] - mem["test_acc"]
            if mem is not None and mem["step"] <= H2_TEST_STEP and at_test_step is not None else None)
    alarm_hold = signal_alarm(rows, o01, dataclasses.replace(det, spike_guard="hold"))
    return {"name": run["name"], "arm": arm(run["name"]), "task": c["task"], "adam_eps": c.get("adam_eps", 1e-8),
            "grok": grok, "spikes_before_grok": None if grok is None else sum(1 for x in spikes if x < grok),
            "spikes": len(spikes), "alarm_off": signal_alarm(rows, o01, dataclasses.replace(det, spike_guard="off")),
            "alarm_hold": alarm_hold, "memorised": None if mem is None else mem["step"], "test_gain_1000": gain,
            "r_o": alarm_hold is not None and alarm_hold <= H2_ALARM_BY,
            "r_t": gain is not None and gain >= H2_TEST_GAIN, "steps": rows[-1]["step"] if rows else 0}


def h1_verdict(facts: Sequence[dict], planned_s: int, s_arm: bool = True) -> Verdict:
    """H1 of PREREG §4 from the finished runs' facts (:func:`run_facts`); ``planned_s`` S runs are in the grid."""

    claim = "H1: the Ô01 re-rise survives when the slingshot spikes are suppressed"
    rule = (f"among the S runs that grok with at most {H1_MAX_SPIKES} spikes before the grok step (n eligible), k = "
            f"those whose Ô01 alarm with the spike guard off fires before the grok step; survives if k ≥ "
            f"{H1_SURVIVES:g} n, artefact if k ≤ {H1_ARTEFACT:g} n, inconclusive otherwise, not testable if n < "
            f"{H1_MIN_ELIGIBLE} (docs/study/PREREG.md §4)")
    if not s_arm:
        return Verdict(claim, "not testable (no spike-free ε on the calibration ladder)", {}, (), "", rule)
    s = [f for f in facts if f["arm"] == "S"]
    if len(s) < planned_s:
        return Verdict(claim, f"pending ({len(s)} of {planned_s} S runs finished)", {"finished": len(s),
                                                                                     "planned": planned_s}, (), "", rule)
    eligible = [f for f in s if f["grok"] is not None and f["spikes_before_grok"] <= H1_MAX_SPIKES]
    hits = [f for f in eligible if f["alarm_off"] is not None and f["alarm_off"] < f["grok"]]
    n, k = len(eligible), len(hits)
    no_grok = [f["name"] for f in s if f["grok"] is None]
    spiky = [f["name"] for f in s if f["grok"] is not None and f["spikes_before_grok"] > H1_MAX_SPIKES]
    if n < H1_MIN_ELIGIBLE:
        v = "not testable (suppressing the spikes changed grokking itself too much to compare)"
    elif k >= H1_SURVIVES * n:
        v = "the re-rise survives without spikes"
    elif k <= H1_ARTEFACT * n:
        v = "the re-rise is a slingshot artefact"
    else:
        v = "inconclusive"
    evidence = (f"the Ô01 alarm (guard off) fired before the grok step in {k}/{n} eligible S runs"
                + (f" ({', '.join(f['name'] for f in hits)})" if hits else "")
                + f"; not eligible: {len(no_grok)} did not grok" + (f" ({', '.join(no_grok)})" if no_grok else "")
                + f", {len(spiky)} had more than {H1_MAX_SPIKES} spikes before the grok" + (f" ({', '.join(spiky)})"
                                                                                            if spiky else ""))
    return Verdict(claim, v, {"k": k, "n": n, "s_runs": len(s), "no_grok": no_grok, "spiky": spiky}, (), evidence, rule)


def h2_verdict(facts: Sequence[dict], planned: int) -> Verdict:
    """H2 of PREREG §5 from the finished runs' facts; ``planned`` runs are in the grid (S, D and N)."""

    claim = "H2: a timing rule on Ô01 beats watching test accuracy, prospectively"
    rule = (f"R_O = Ô01 alarm (guard hold) by step {H2_ALARM_BY:,} ⇒ groks; R_T = memorised by step {H2_TEST_STEP:,} "
            f"and test accuracy at step {H2_TEST_STEP:,} at least {H2_TEST_GAIN:g} above its value at memorisation ⇒ "
            f"groks; an error is a prediction that differs from grokking within {MAX_STEPS:,} steps; Ô01 useful if R_O "
            "makes no more errors than R_T and is right on every N run (docs/study/PREREG.md §5)")
    if len(facts) < planned:
        return Verdict(claim, f"pending ({len(facts)} of {planned} runs finished)",
                       {"finished": len(facts), "planned": planned}, (), "", rule)
    err_o = [f["name"] for f in facts if f["r_o"] != (f["grok"] is not None)]
    err_t = [f["name"] for f in facts if f["r_t"] != (f["grok"] is not None)]
    n_runs = [f for f in facts if f["arm"] == "N"]
    n_wrong = [f["name"] for f in n_runs if f["r_o"] != (f["grok"] is not None)]
    useful = len(err_o) <= len(err_t) and not n_wrong
    evidence = (f"over {len(facts)} runs R_O made {len(err_o)} error(s)" + (f" ({', '.join(err_o)})" if err_o else "")
                + f", R_T {len(err_t)}" + (f" ({', '.join(err_t)})" if err_t else "")
                + f"; R_O was right on {len(n_runs) - len(n_wrong)}/{len(n_runs)} N runs; "
                + f"{sum(f['grok'] is not None for f in facts)}/{len(facts)} runs grokked")
    return Verdict(claim, "Ô01 useful" if useful else "Ô01 not useful",
                   {"errors_r_o": err_o, "errors_r_t": err_t, "n_wrong": n_wrong, "runs": len(facts)}, (), evidence,
                   rule)


def prereg_section(runs_dir: Path, calibration_dir: Path, grid: Path) -> list[str]:
    """The pre-registered verdicts as a markdown section of docs/STUDY.md (pending until the runs have finished)."""
    from .analysis import load_runs
    from .fmt import fmt_num
    from .grid import load_grid

    text = Path(grid).read_text()
    specs = load_grid(text.replace(PLACEHOLDER, "adam_eps = 1.0 }")) if PLACEHOLDER in text else load_grid(text)
    rec_path = Path(calibration_dir) / "calibration.json"
    record = json.loads(rec_path.read_text()) if rec_path.exists() else None
    calibrated = record is not None and "chosen" in record
    s_arm = not calibrated or record["chosen"] is not None
    planned = [sp for sp in specs if s_arm or arm(sp.name) != "S"]
    facts = [run_facts(r) for r in load_runs(runs_dir) if r["name"] in {sp.name for sp in planned}]
    L = ["## The pre-registered test (issue 20)", "",
         "Rules fixed in `docs/study/PREREG.md` and committed before any of these runs; the verdicts below are "
         "computed by `fastcka/grok/study/prereg.py` from the finished runs in "
         f"`{runs_dir}/` and say *pending* until every run they need has finished.", ""]
    if record is None:
        L += ["Calibration (PREREG §2): not run yet.", ""]
    else:
        tried = "; ".join(f"ε {c['adam_eps']:g}: " + ("no spike in steps 100–3,000" if c["passed"] else
                                                      f"first spike at step {fmt_num(c['first_spike'])}")
                          for c in record["candidates"])
        chosen = record.get("chosen", "pending")
        trained = ""
        csv = Path(calibration_dir) / f"eps-{chosen:g}.csv" if isinstance(chosen, float) else None
        if csv is not None and csv.exists():  # did the calibration seed memorise at the chosen ε? (train side only)
            last = dict(zip(CALIBRATION_COLUMNS, csv.read_text().splitlines()[-1].split(",")))
            trained = (f" At that ε the calibration seed reached train accuracy {float(last['train_acc']):.3f} and "
                       f"train loss {float(last['train_loss']):.3f} by step {int(last['step']):,}"
                       + (" — it did not memorise, so the S runs may not either (PREREG.md, dated note)."
                          if float(last["train_acc"]) < DetectorConfig().memorised_acc else "."))
        L += [f"Calibration (PREREG §2, seed {record['seed']}, train loss only): {tried or 'no candidate decided yet'}"
              + (f". Calibrated ε = {chosen:g}." + trained if isinstance(chosen, float) else
                 ". No candidate passed: no S arm." if calibrated else ". In progress."), ""]
    L += [render_line(h1_verdict(facts, sum(arm(sp.name) == "S" for sp in planned), s_arm)),
          render_line(h2_verdict(facts, len(planned))), ""]
    if facts:
        L += ["| run | arm | ε | grok step | spikes before grok | Ô01 alarm, guard off | Ô01 alarm, guard hold | R_O | "
              "test acc gain at 1,000 | R_T |", "|---|---|---|---|---|---|---|---|---|---|"]
        yn = lambda b: "groks" if b else "no grok"  # noqa: E731
        for f in facts:
            L.append(f"| {f['name']} | {f['arm']} | {f['adam_eps']:g} | {fmt_num(f['grok'])} | "
                     f"{fmt_num(f['spikes_before_grok'])} | {fmt_num(f['alarm_off'])} | {fmt_num(f['alarm_hold'])} | "
                     f"{yn(f['r_o'])} | {fmt_num(f['test_gain_1000'], 3)} | {yn(f['r_t'])} |")
        L.append("")
    return L


RUNS_CKPT = Path("runs/prereg-ckpt")
RESUME_DIR = Path("docs/study/prereg/resume")  # committed copies of unfinished checkpoints, for another machine


def _unfinished(resume_dir: Path) -> list[tuple[Path, Path]]:
    """(checkpoint folder, its copy in resume_dir) for every calibration candidate not yet decided and every run not
    yet finished that has a checkpoint."""
    rec = CALIBRATION_DIR / "calibration.json"
    decided = {c["adam_eps"] for c in json.loads(rec.read_text())["candidates"]} if rec.exists() else set()
    out = []
    for kind, root in (("calibration", CALIBRATION_CKPT), ("runs", RUNS_CKPT)):
        for d in sorted(root.iterdir()) if root.exists() else []:
            done = (kind == "calibration" and float(d.name.removeprefix("eps-")) in decided) or \
                   (kind == "runs" and (RUNS_DIR / d.name / "summary.json").exists())
            if (d / "checkpoint.pt").exists() and not done:
                out.append((d, resume_dir / kind / d.name))
    return out


def save_checkpoints(resume_dir: Path = RESUME_DIR) -> list[Path]:
    """Copy the unfinished checkpoints (checkpoint.pt, config.json, study_time.json) into ``resume_dir`` so that a
    commit carries them to the next machine; copies of finished ones are removed. Returns the folders written."""
    keep = _unfinished(resume_dir)
    for kind in ("calibration", "runs"):  # drop stale copies (decided candidates, finished runs)
        for d in sorted((resume_dir / kind).iterdir()) if (resume_dir / kind).exists() else []:
            if d not in {dst for _, dst in keep}:
                shutil.rmtree(d)
    for src, dst in keep:
        dst.mkdir(parents=True, exist_ok=True)
        for f in ("checkpoint.pt", "config.json", "study_time.json"):
            if (src / f).exists():
                shutil.copyfile(src / f, dst / f)
    return [dst for _, dst in keep]


def restore_checkpoints(resume_dir: Path = RESUME_DIR) -> list[Path]:
    """Copy committed checkpoints back to where the calibration and the runner look for them, wherever there is none
    yet or the local one is at an earlier step. Returns the folders restored."""
    import torch

    restored = []
    for kind, root in (("calibration", CALIBRATION_CKPT), ("runs", RUNS_CKPT)):
        for src in sorted((resume_dir / kind).iterdir()) if (resume_dir / kind).exists() else []:
            dst = root / src.name
            step = lambda d: torch.load(d / "checkpoint.pt", weights_only=True, map_location="cpu")["step"]  # noqa: E731
            if (dst / "checkpoint.pt").exists() and step(dst) >= step(src):
                continue
            dst.mkdir(parents=True, exist_ok=True)
            for f in src.iterdir():
                shutil.copyfile(f, dst / f.name)
            restored.append(dst)
    return restored


def run_all(log: Callable[[str], None] = print, jobs: int = 1) -> None:
    """Everything PREREG.md asks for, resumably: restore committed checkpoints, finish the calibration, then the
    pre-registered runs in grid order (without an S arm if no ε passed), ``jobs`` runs at a time (one thread each;
    the runs do not depend on each other, so this changes only the wall time)."""
    from .grid import load_grid, run_grid

    for d in restore_checkpoints():
        log(f"restored {d}")
    eps = calibrate(log=log)
    text = GRID.read_text()
    specs = [sp for sp in load_grid(text.replace(PLACEHOLDER, "adam_eps = 1.0 }") if eps is None else text)
             if eps is not None or arm(sp.name) != "S"]
    run_grid(specs, RUNS_DIR, RUNS_CKPT, jobs=jobs, progress=False)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastcka.grok.study.prereg", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["calibrate", "run", "save-checkpoints"],
                   help="calibrate: the blind calibration only; run: restore committed checkpoints, calibrate, then "
                   "the runs; save-checkpoints: copy the unfinished checkpoints to docs/study/prereg/resume/ to commit")
    p.add_argument("--jobs", type=int, default=1, help="run: how many runs at a time (one thread each; default 1)")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    if args.command == "calibrate":
        eps = calibrate()
        print(f"calibration: chosen eps {eps:g}" if eps is not None else "calibration: no candidate passed")
    elif args.command == "run":
        run_all(jobs=args.jobs)
    else:
        for d in save_checkpoints():
            print(f"saved {d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

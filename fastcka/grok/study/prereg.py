"""The pre-registered tests of issue 20 (docs/study/PREREG.md, and PREREG2.md for H1 again): the blind calibrations
of AdamW's ε, and the verdicts of H1 and H2 computed from the finished runs.

Every threshold of PREREG.md and PREREG2.md is a constant here (the tests pin them to the files). Run as a
module::

    python -m fastcka.grok.study.prereg run --jobs 2     # restore committed checkpoints, finish both calibrations
                                                          # (they write the S arms' ε into the grids), then the runs;
                                                          # resumable at every step; one runner at a time
    python -m fastcka.grok.study.prereg stop              # before a session ends: stop the runner (its runs
                                                          # checkpoint), then copy the unfinished checkpoints to
                                                          # docs/study/prereg/resume/ (then commit them)

``calibrate`` runs the calibrations alone; ``save-checkpoints`` the copy alone.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
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

# PREREG2 §2: the second registration's calibration (H1 again, with an ε that must also let the run memorise)
GRID2 = Path("docs/study/prereg2_grid.toml")
CALIBRATION2_DIR = Path("docs/study/prereg/calibration2")
CALIBRATION2_CKPT = Path("runs/prereg-calibration2")
CALIBRATION2_SEED = 1020
LADDER2 = (1.5e-3, 2e-3, 3e-3, 5e-3)
SPIKE_FREE2_FROM, SPIKE_FREE2_TO = 100, 4000
MEMORISED_BY2 = 2000  # train accuracy ≥ the detector's memorised_acc at a logged step at or before this
PLACEHOLDER2 = "adam_eps = -1.0 }  # CALIBRATED (PREREG2 §2)"


@dataclasses.dataclass(frozen=True)
class Registration:
    """One pre-registration's calibration and S arm: where its files are and the rule its calibration follows."""

    doc: str                    # its rules, e.g. "docs/study/PREREG.md"
    grid: Path
    calibration_dir: Path       # the committed record (train-side columns only)
    calibration_ckpt: Path      # the candidates' checkpoints while they train
    seed: int
    task: str
    ladder: tuple
    spike_free: tuple           # (from, to): no spike at a logged step in [from, to]
    memorised_by: Optional[int]  # None: the rule does not ask the candidate to memorise
    placeholder: str
    s_arm: str                  # the arm whose ε the calibration sets
    planned_s: int


REG1 = Registration("docs/study/PREREG.md", GRID, CALIBRATION_DIR, CALIBRATION_CKPT, CALIBRATION_SEED,
                    CALIBRATION_TASK, LADDER, (SPIKE_FREE_FROM, SPIKE_FREE_TO), None, PLACEHOLDER, "S", 8)
REG2 = Registration("docs/study/PREREG2.md", GRID2, CALIBRATION2_DIR, CALIBRATION2_CKPT, CALIBRATION2_SEED,
                    CALIBRATION_TASK, LADDER2, (SPIKE_FREE2_FROM, SPIKE_FREE2_TO), MEMORISED_BY2, PLACEHOLDER2, "S2", 8)
REGISTRATIONS = (REG1, REG2)

# §3-§5: the runs and the rules
ARMS = {"S": "spikes suppressed", "D": "default", "N": "candidate negatives",
        "S2": "spikes suppressed, calibrated to train (PREREG2)"}
MAX_STEPS = 20000
H1_MAX_SPIKES = 2  # eligible: groks with at most this many spikes before the grok step
H1_SURVIVES, H1_ARTEFACT, H1_MIN_ELIGIBLE = 0.75, 0.25, 4
H2_ALARM_BY = 1950  # R_O: Ô01 alarm (guard hold) at or before this step => groks
H2_TEST_STEP, H2_TEST_GAIN = 1000, 0.011  # R_T: test acc at this step >= its value at memorisation + gain => groks


def arm(run_name: str) -> str:
    """The arm (S, D, N or S2) of a pre-registered run, from its name (``S-add-p97-s1001`` ...)."""
    a = run_name.split("-", 1)[0]
    if a not in ARMS:
        raise ValueError(f"run_name: {run_name!r} is not a pre-registered run (expected S-, D-, N- or S2-)")
    return a


def spike_steps(rows: Sequence[dict], det: DetectorConfig) -> list[int]:
    """The logged steps of the train-loss spikes of PREREG §2 (the study detector's spike rule), reading only the
    ``step`` and ``train_loss_max`` columns: what the calibration is allowed to see."""
    d = Detector(DetectorConfig(spike_guard="hold", spike_ratio=det.spike_ratio, spike_min_loss=det.spike_min_loss,
                                spike_window=det.spike_window))
    for r in rows:
        d.update(int(r["step"]), math.nan, 0.0, float(r["train_loss_max"]))
    return list(d.result.spike_steps)


def calibration_outcome(rows: Sequence[dict], det: DetectorConfig, reg: Registration = REG1) -> Optional[dict]:
    """A candidate's state from its rows so far, once decided, else None. Decided means: a spike in the window
    (failed), or, where ``reg`` asks the candidate to memorise, ``reg.memorised_by`` reached without train accuracy
    ≥ ``det.memorised_acc`` (failed, ``"memorised": None``), or the window's end reached (passed). Returns
    ``{"passed": bool, "first_spike": step or None}``, plus ``"memorised"`` (the step, or None) under such a rule."""
    lo, hi = reg.spike_free
    first = next((s for s in spike_steps(rows, det) if lo <= s <= hi), None)
    mem = None
    if reg.memorised_by is not None:
        mem = next((r["step"] for r in rows if r["step"] <= reg.memorised_by
                    and float(r["train_acc"]) >= det.memorised_acc), None)
    extra = {} if reg.memorised_by is None else {"memorised": mem}
    if first is not None:
        return {"passed": False, "first_spike": first, **extra}
    if reg.memorised_by is not None and mem is None and rows and rows[-1]["step"] >= reg.memorised_by:
        return {"passed": False, "first_spike": None, **extra}
    if rows and rows[-1]["step"] >= hi:
        return {"passed": True, "first_spike": None, **extra}
    return None


def _outcome_words(c: dict, reg: Registration) -> str:
    lo, hi = reg.spike_free
    if c["passed"]:
        return (f"passed (no spike in steps {lo:,}-{hi:,}" + (f", memorised at step {c['memorised']:,})"
                                                             if c.get("memorised") is not None else ")"))
    if c["first_spike"] is not None:
        return f"failed (spike at step {c['first_spike']:,})"
    return f"failed (not memorised by step {reg.memorised_by:,})"


def _grid_defaults(grid_text: str) -> tuple[dict, dict]:
    g = tomllib.loads(grid_text)
    defaults = dict(g.get("defaults", {}))
    return defaults, defaults.pop("detector", {})


def calibrate(grid: Optional[Path] = None, record_dir: Optional[Path] = None, ckpt_dir: Optional[Path] = None,
              ladder: Optional[Sequence[float]] = None, chunk: int = CHUNK, log: Callable[[str], None] = print,
              overrides: Optional[dict] = None, reg: Registration = REG1) -> Optional[float]:
    """Run the blind calibration of a registration's §2 (``reg``: REG1 = PREREG.md, REG2 = PREREG2.md; resumable: a
    decided candidate is read back from the record, an undecided one resumes from its checkpoint). Returns the
    calibrated ε (None if no candidate passes) and writes it into the grid's ``reg.s_arm`` groups. ``grid``,
    ``record_dir``, ``ckpt_dir`` and ``ladder`` default to the registration's; ``overrides`` (tests only) replaces
    config fields."""
    from ..train import TrainConfig, train

    grid = Path(grid or reg.grid)
    ladder = tuple(ladder or reg.ladder)
    defaults, det_d = _grid_defaults(grid.read_text())
    det = DetectorConfig(**det_d)
    record_dir, ckpt_dir = Path(record_dir or reg.calibration_dir), Path(ckpt_dir or reg.calibration_ckpt)
    record_dir.mkdir(parents=True, exist_ok=True)
    rec_path = record_dir / "calibration.json"
    record = json.loads(rec_path.read_text()) if rec_path.exists() else {"candidates": []}
    record.update({"seed": reg.seed, "task": reg.task, "ladder": list(ladder), "window": list(reg.spike_free),
                   "rule": f"{Path(reg.doc).name} §2"})
    if reg.memorised_by is not None:
        record["memorised_by"] = reg.memorised_by
    decided = {c["adam_eps"]: c for c in record["candidates"]}
    chosen = None
    for eps in ladder:
        if eps not in decided:
            out = ckpt_dir / f"eps-{eps:g}"
            while True:
                done, rows = _checkpointed(out)
                outcome = calibration_outcome(rows, det, reg)
                if outcome is not None:
                    break
                steps = min(done - done % chunk + chunk, reg.spike_free[1])
                cfg = TrainConfig(**{**defaults, "task": reg.task, "seed": reg.seed, "adam_eps": eps,
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
            log(f"calibration ({Path(reg.doc).name}): eps {eps:g}: {_outcome_words(outcome, reg)}")
        if decided[eps]["passed"]:
            chosen = eps
            break
        if reg.memorised_by is not None and decided[eps]["first_spike"] is None:
            break  # not memorised: a larger ε damps the updates more (PREREG2 §2: this ends the ladder)
    record["chosen"] = chosen
    rec_path.write_text(json.dumps(record, indent=2) + "\n")
    if chosen is not None and reg.placeholder in grid.read_text():
        write_calibrated(grid, chosen, reg)
    elif chosen is not None:  # filled by an earlier call: it must hold the same value
        from .grid import load_grid

        found = {sp.config.get("adam_eps") for sp in load_grid(grid.read_text()) if arm(sp.name) == reg.s_arm}
        if found != {chosen}:
            raise ValueError(f"grid: {grid} gives the {reg.s_arm} runs adam_eps {sorted(found)}, but the calibration "
                             f"chose {chosen:g}")
    return chosen


def _checkpointed(out: Path) -> tuple[int, list[dict]]:
    """The step of a candidate's checkpoint and its rows, reduced to the train-loss columns (0 and [] if none)."""
    path = out / "checkpoint.pt"
    if not path.exists():
        return 0, []
    import torch

    state = torch.load(path, weights_only=True, map_location="cpu")
    return state["step"], [{c: r[c] for c in CALIBRATION_COLUMNS} for r in state["rows"]]


def write_calibrated(grid: Path, eps: float, reg: Registration = REG1) -> None:
    """Fill the calibrated ε into the grid's ``reg.s_arm`` groups (each placeholder line, nothing else)."""
    text = grid.read_text()
    if reg.placeholder not in text:
        raise ValueError(f"grid: {grid} has no '{reg.placeholder}' line left to fill")
    grid.write_text(text.replace(reg.placeholder, f"adam_eps = {eps:g} }}  # calibrated ({Path(reg.doc).stem} §2; "
                                                  f"{reg.calibration_dir}/)"))


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


def h1_verdict(facts: Sequence[dict], planned_s: int, s_arm: bool = True, reg: Registration = REG1) -> Verdict:
    """H1 of a registration's §4 (``reg``: REG1 = PREREG.md, REG2 = PREREG2.md) from the finished runs' facts
    (:func:`run_facts`); ``planned_s`` runs of its S arm (``reg.s_arm``) are in the grid."""
    a = reg.s_arm
    claim = ("H1: the Ô01 re-rise survives when the slingshot spikes are suppressed"
             + ("" if reg is REG1 else f" (second registration, {a} runs)"))
    rule = (f"among the {a} runs that grok with at most {H1_MAX_SPIKES} spikes before the grok step (n eligible), k = "
            f"those whose Ô01 alarm with the spike guard off fires before the grok step; survives if k ≥ "
            f"{H1_SURVIVES:g} n, artefact if k ≤ {H1_ARTEFACT:g} n, inconclusive otherwise, not testable if n < "
            f"{H1_MIN_ELIGIBLE} ({reg.doc} §4)")
    if not s_arm:
        why = ("no spike-free ε on the calibration ladder" if reg.memorised_by is None else
               "no ε on the ladder both memorises and suppresses the spikes")
        return Verdict(claim, f"not testable ({why})", {}, (), "", rule)
    s = [f for f in facts if f["arm"] == a]
    if len(s) < planned_s:
        return Verdict(claim, f"pending ({len(s)} of {planned_s} {a} runs finished)",
                       {"finished": len(s), "planned": planned_s}, (), "", rule)
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
    evidence = (f"the Ô01 alarm (guard off) fired before the grok step in {k}/{n} eligible {a} runs"
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


def _section_inputs(runs_dir: Path, calibration_dir: Path, grid: Path, reg: Registration):
    """What a registration's part of the report reads: its planned runs (without its S arm if the calibration passed
    no ε), the calibration record (None before it ran), whether it has decided, whether there is an S arm, and the
    finished planned runs' facts."""
    from .analysis import load_runs
    from .grid import load_grid

    text = Path(grid).read_text()
    specs = load_grid(text.replace(reg.placeholder, "adam_eps = 1.0 }") if reg.placeholder in text else text)
    rec_path = Path(calibration_dir) / "calibration.json"
    record = json.loads(rec_path.read_text()) if rec_path.exists() else None
    calibrated = record is not None and "chosen" in record
    s_arm = not calibrated or record["chosen"] is not None
    planned = [sp for sp in specs if s_arm or arm(sp.name) != reg.s_arm]
    names = {sp.name for sp in planned}
    facts = [run_facts(r) for r in load_runs(runs_dir) if r["name"] in names] if Path(runs_dir).exists() else []
    return planned, record, calibrated, s_arm, facts


def prereg_section(runs_dir: Path, calibration_dir: Path, grid: Path) -> list[str]:
    """The pre-registered verdicts as a markdown section of docs/STUDY.md (pending until the runs have finished)."""
    from .fmt import fmt_num

    planned, record, calibrated, s_arm, facts = _section_inputs(runs_dir, calibration_dir, grid, REG1)
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


def prereg2_section(runs_dir: Path, calibration_dir: Path, grid: Path) -> list[str]:
    """The second registration's part of the pre-registered section (PREREG2.md: its calibration and H1 on the S2
    runs; pending until they have finished)."""
    from .fmt import fmt_num

    reg = REG2
    _, record, calibrated, s_arm, facts = _section_inputs(runs_dir, calibration_dir, grid, reg)
    L = ["### H1 again: the second registration", "",
         "Rules fixed in `docs/study/PREREG2.md` and committed before any of its runs, including its calibration. "
         "The first registration's calibration chose an ε at which the runs did not learn, so this one asks the "
         f"calibrated ε to memorise by step {reg.memorised_by:,} as well.", ""]
    if record is None:
        L += ["Calibration (PREREG2 §2): not run yet.", ""]
    else:
        tried = "; ".join(f"ε {c['adam_eps']:g}: {_outcome_words(c, reg)}" for c in record["candidates"])
        chosen = record.get("chosen", "pending")
        L += [f"Calibration (PREREG2 §2, seed {record['seed']}, train loss and train accuracy only): "
              f"{tried or 'no candidate decided yet'}"
              + (f". Calibrated ε = {chosen:g}." if isinstance(chosen, float) else
                 ". No candidate passed: no S2 arm." if calibrated else ". In progress."), ""]
    L += [render_line(h1_verdict(facts, reg.planned_s, s_arm, reg)), ""]
    if facts:
        L += ["| run | ε | grok step | spikes before grok | memorised at | Ô01 alarm, guard off |",
              "|---|---|---|---|---|---|"]
        for f in facts:
            L.append(f"| {f['name']} | {f['adam_eps']:g} | {fmt_num(f['grok'])} | {fmt_num(f['spikes_before_grok'])} "
                     f"| {fmt_num(f['memorised'])} | {fmt_num(f['alarm_off'])} |")
        L.append("")
    return L


RUNS_CKPT = Path("runs/prereg-ckpt")
RESUME_DIR = Path("docs/study/prereg/resume")  # committed copies of unfinished checkpoints, for another machine
_CALIBRATION_KINDS = {"calibration": REG1, "calibration2": REG2}  # resume/<kind>/ holds that calibration's candidates


def _checkpoint_roots() -> list[tuple[str, Path]]:
    return [(kind, reg.calibration_ckpt) for kind, reg in _CALIBRATION_KINDS.items()] + [("runs", RUNS_CKPT)]


def _unfinished(resume_dir: Path) -> list[tuple[Path, Path]]:
    """(checkpoint folder, its copy in resume_dir) for every calibration candidate not yet decided and every run not
    yet finished that has a checkpoint."""
    decided = {}
    for kind, reg in _CALIBRATION_KINDS.items():
        rec = reg.calibration_dir / "calibration.json"
        decided[kind] = {c["adam_eps"] for c in json.loads(rec.read_text())["candidates"]} if rec.exists() else set()
    out = []
    for kind, root in _checkpoint_roots():
        for d in sorted(root.iterdir()) if root.exists() else []:
            done = (kind in decided and float(d.name.removeprefix("eps-")) in decided[kind]) or \
                   (kind == "runs" and (RUNS_DIR / d.name / "summary.json").exists())
            if (d / "checkpoint.pt").exists() and not done:
                out.append((d, resume_dir / kind / d.name))
    return out


def save_checkpoints(resume_dir: Path = RESUME_DIR) -> list[Path]:
    """Copy the unfinished checkpoints (checkpoint.pt, config.json, study_time.json) into ``resume_dir`` so that a
    commit carries them to the next machine; copies of finished ones are removed. Returns the folders written."""
    keep = _unfinished(resume_dir)
    for kind, _ in _checkpoint_roots():  # drop stale copies (decided candidates, finished runs)
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
    for kind, root in _checkpoint_roots():
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


def _interleaved(a: list, b: list) -> list:
    out = []
    for i in range(max(len(a), len(b))):
        out += a[i:i + 1] + b[i:i + 1]
    return out


def run_all(log: Callable[[str], None] = print, jobs: int = 1) -> None:
    """Everything PREREG.md and PREREG2.md ask for, resumably: restore committed checkpoints, finish both
    calibrations (the second one's candidates one after another, before any run), then the pre-registered runs of
    both in one grid, ``jobs`` at a time (one thread each; the runs do not depend on each other, so this changes only
    the wall time). A registration whose calibration passed no ε runs without its S arm. The first registration's
    runs keep their grid order; the second's are interleaved with them, one each in turn."""
    from .grid import load_grid, run_grid

    for d in restore_checkpoints():
        log(f"restored {d}")
    specs = []
    for reg in REGISTRATIONS:
        if not reg.grid.exists():
            continue
        eps = calibrate(reg=reg, log=log)
        text = reg.grid.read_text()
        specs.append([sp for sp in load_grid(text.replace(reg.placeholder, "adam_eps = 1.0 }") if eps is None else text)
                      if eps is not None or arm(sp.name) != reg.s_arm])
    run_grid(_interleaved(*specs) if len(specs) == 2 else specs[0], RUNS_DIR, RUNS_CKPT, jobs=jobs, progress=False)


PID_FILE = Path("runs/prereg.pid")  # the live runner's process id, while `run` or `calibrate` trains


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (an exited one that its parent has not reaped yet, a zombie, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] != "Z"
    except (OSError, ValueError, IndexError):  # no /proc (not Linux): kill(0) is all we know
        return True


def _runner_pid(pid_file: Path) -> Optional[int]:
    """The pid in ``pid_file`` if that process still runs, else None."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if _alive(pid) else None


@contextlib.contextmanager
def _single_runner(pid_file: Optional[Path] = None):
    """Hold the pid file while training; refuse to start beside a live runner (two would train the same runs from
    the same checkpoints and overwrite each other's)."""
    from .grid import _interruptible

    _interruptible()  # started with `nohup ... &` from a script, SIGINT would be ignored and `stop` would wait in vain
    pid_file = Path(pid_file or PID_FILE)
    other = _runner_pid(pid_file)
    if other is not None and other != os.getpid():
        raise SystemExit(f"prereg: a runner is already training (pid {other}, {pid_file}); stop it first with "
                         "`python -m fastcka.grok.study.prereg stop`")
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(f"{os.getpid()}\n")
    try:
        yield
    finally:
        if _runner_pid(pid_file) == os.getpid():
            pid_file.unlink(missing_ok=True)


def stop(pid_file: Optional[Path] = None, timeout_s: float = 600.0, log: Callable[[str], None] = print) -> bool:
    """Ask the live runner to stop (SIGINT: its runs checkpoint at the end of their step), wait until it has
    exited, then copy the unfinished checkpoints for the commit (:func:`save_checkpoints`). Returns False if no
    runner was running or it was still running after ``timeout_s``."""
    import signal
    import time

    pid_file = Path(pid_file or PID_FILE)
    pid = _runner_pid(pid_file)
    if pid is None:
        log("prereg: no runner is running")
        return False
    os.kill(pid, signal.SIGINT)
    t0 = time.time()
    while _alive(pid) and time.time() - t0 < timeout_s:
        time.sleep(0.5)
    if _alive(pid):
        log(f"prereg: runner {pid} still running after {timeout_s:.0f} s")
        return False
    log(f"prereg: runner {pid} stopped after {time.time() - t0:.0f} s")
    return True


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastcka.grok.study.prereg", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["calibrate", "run", "stop", "save-checkpoints"],
                   help="calibrate: the blind calibrations only (PREREG.md's, then PREREG2.md's); run: restore committed "
                   "checkpoints, calibrate, then the runs (refused while another runner is live); stop: stop the live "
                   "runner (its runs checkpoint) and wait for it, then save-checkpoints; save-checkpoints: copy the "
                   "unfinished checkpoints to docs/study/prereg/resume/ to commit")
    p.add_argument("--jobs", type=int, default=1, help="run: how many runs at a time (one thread each; default 1)")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    if args.command == "calibrate":
        with _single_runner():
            for reg in REGISTRATIONS:
                eps = calibrate(reg=reg)
                print(f"calibration ({Path(reg.doc).name}): " + (f"chosen eps {eps:g}" if eps is not None
                                                                  else "no candidate passed"))
    elif args.command == "run":
        with _single_runner():
            run_all(jobs=args.jobs)
    else:
        if args.command == "stop" and not stop():
            return 1
        for d in save_checkpoints():
            print(f"saved {d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

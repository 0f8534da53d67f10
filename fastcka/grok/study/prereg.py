"""The pre-registered test of issue 20 (docs/study/PREREG.md): the blind calibration of AdamW's ε, and the verdicts
of H1 and H2 computed from the finished runs.

Every threshold of PREREG.md is a constant here (the tests pin them to the file). Run as a module::

    python -m fastcka.grok.study.prereg calibrate   # the blind calibration (resumable); writes the S arm's ε
                                                    # into docs/study/prereg_grid.toml

then the runs with ``fastcka study docs/study/prereg_grid.toml --runs-dir docs/study/prereg/runs
--ckpt-dir runs/prereg-ckpt --no-report``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import tomllib
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..detect import Detector, DetectorConfig

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
    if chosen is not None:
        write_calibrated(Path(grid), chosen)
    return chosen


def _checkpointed(out: Path) -> tuple[int, list[dict]]:
    """The step of a candidate's checkpoint and its rows, reduced to the train-loss columns (0 and [] if none)."""
    path = out / "checkpoint.pt"
    if not path.exists():
        return 0, []
    import torch

    state = torch.load(path, weights_only=False, map_location="cpu")
    return state["step"], [{c: r[c] for c in CALIBRATION_COLUMNS} for r in state["rows"]]


def write_calibrated(grid: Path, eps: float) -> None:
    """Fill the calibrated ε into the S groups of the grid file (each placeholder line, nothing else)."""
    text = grid.read_text()
    if PLACEHOLDER not in text:
        raise ValueError(f"grid: {grid} has no '{PLACEHOLDER}' line left to fill")
    grid.write_text(text.replace(PLACEHOLDER, f"adam_eps = {eps:g} }}  # calibrated (PREREG §2; "
                                              f"docs/study/prereg/calibration/)"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastcka.grok.study.prereg", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["calibrate"])
    args = p.parse_args(argv)
    if args.command == "calibrate":
        eps = calibrate()
        print(f"calibration: chosen eps {eps:g}" if eps is not None else "calibration: no candidate passed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

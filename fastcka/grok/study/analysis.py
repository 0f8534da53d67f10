"""Per-run analysis: every progress measure run through the detector on a finished run's log, and the facts the
report is built from (grok step, alarms, leads, the Ô01 drop)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Optional

from ..detect import Detector, DetectorConfig
from .grid import SUMMARY
from .stats import quantile


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
# A run with no weight decay that did not grok within this many steps is *unresolved*, neither a negative nor a false
# alarm: without weight decay grokking, if it comes, can come far later than with it (issue 20; the pilot regime's
# weight-decay-0 controls ran 13,000 and 20,000 steps, the fast regime's 3,000 while their Ô01 was still rising).
WD0_HORIZON = 20000
# A run "relapses" when test accuracy falls this far below the grok threshold after the grok step (parity runs at
# lr 1e-3 fell back to chance after generalising): the grok step still counts, and the report says so.
RELAPSE_DROP = 0.25


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
    from ..train import read_log

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
    relapse = next((r["step"] for r in rows if grok is not None and r["step"] > grok
                    and r["test_acc"] < c["grok_acc"] - RELAPSE_DROP), None)
    alarms = {sig.name: signal_alarm(rows, sig, det) for sig in SIGNALS}
    alarms["test_acc"] = test_acc_alarm(rows, det.memorised_acc)
    o = Detector(det)
    for r in rows:
        o.update(r["step"], r["o01"], r["train_acc"], r["train_loss_max"])
    onset_after_window = any(0 < o.result.rise_onset_step - (sp + det.spike_window) <= 2 * c.get("every", 25)
                             for sp in o.result.spike_steps) if o.result.rise_onset_step is not None else False
    rise_at_spike = _rise_made_at_spike(rows, o.result, det, c.get("every", 25))
    mem_row = next((r for r in rows if o.result.memorised_step is not None and r["step"] == o.result.memorised_step),
                   None)
    after = [r["test_acc"] for r in rows if grok is not None and r["step"] > grok]
    sawtooth = {span: spike_sawtooth(rows, det, span) for span in SAWTOOTH_SPANS}
    return {"name": run["name"], "group": s["study"]["group"], "role": s["study"]["role"], "seed": c["seed"],
            "task": c["task"], "p": c["p"], "regime": regime(c), "grok": grok, "relapse": relapse,
            "onset_after_window": onset_after_window, "rise_at_spike": rise_at_spike,
            "first_rise": o.result.first_rise_step,
            "recorded_alarm": s.get("alarm_step"), "detector_version": s.get("detector_version", 1),  # unversioned summaries predate v2
            "device": s.get("device"), "threads": s.get("threads"), "steps": rows[-1]["step"] if rows else 0,
            "memorised": o.result.memorised_step, "rise_onset": o.result.rise_onset_step, "alarms": alarms,
            "leads": {k: (grok - a if grok is not None and a is not None else None) for k, a in alarms.items()},
            "o01_peak": o.result.peak, "o01_min": o.result.minimum, "spikes": len(o.result.spike_steps),
            "frozen_frac": _frozen_fraction(rows, o.result),
            "o01_post_median": quantile([r["o01"] for r in rows if o.result.memorised_step is not None
                                         and r["step"] >= o.result.memorised_step and math.isfinite(r["o01"])], 0.5),
            "wall_s": s.get("study", {}).get("wall_s_total", s.get("wall_s")), "config": c,
            # issue 20: the test-accuracy ramp, chance, instability after the grok, the spike sawtooth
            "half": next((r["step"] for r in rows if r["test_acc"] >= 0.5), None),
            "test_acc_at_mem": None if mem_row is None else mem_row["test_acc"],
            "chance": 0.5 if c["task"] == "parity" else 1.0 / c["p"],
            "post_grok_low": sum(x < 0.5 for x in after) / len(after) if after else None,
            "unresolved": grok is None and c.get("weight_decay", 1.0) == 0 and (rows[-1]["step"] if rows else 0) < WD0_HORIZON,
            "sawtooth": sawtooth}



def _rise_made_at_spike(rows: list[dict], res, det: DetectorConfig, every: int) -> Optional[bool]:
    """Was the rise that raised the Ô01 alarm a level set at a train-loss spike? True when raw Ô01 on the row just
    before the last spike preceding the rise onset was still less than ``rise`` above the running minimum of the
    smoothed series, and the onset came within two logging intervals after that spike's window: the average only
    caught up, after the guard's window, with a level the spike had made. None without an onset."""
    onset = res.rise_onset_step
    if onset is None:
        return None
    before = [sp for sp in res.spike_steps if sp <= onset]
    if not before or res.memorised_step is None:
        return False
    sp = before[-1]
    i = next(k for k, r in enumerate(rows) if r["step"] == sp)
    seen = [s for r, s in zip(rows[:i], res.smoothed[:i]) if r["step"] >= res.memorised_step and math.isfinite(s)]
    if i == 0 or not seen or not math.isfinite(rows[i - 1]["o01"]):
        return False
    near_window = 0 < onset - (sp + det.spike_window) <= 2 * every
    return near_window and rows[i - 1]["o01"] - min(seen) < det.rise


def _frozen_fraction(rows: list[dict], res) -> Optional[float]:
    """The share of logged points from memorisation on that the spike guard froze (None before memorisation)."""
    if res.memorised_step is None:
        return None
    after = [frozen for r, frozen in zip(rows, res.ignored) if r["step"] >= res.memorised_step]
    return sum(after) / len(after)


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


SAWTOOTH_SPANS = (0, 1, 2, 4)  # rows after a spike's row counted in its increment (0: the spike's row only)


def spike_sawtooth(rows: list[dict], det: DetectorConfig, span: int = 1) -> dict:
    """How raw Ô01 moves around the train-loss spikes after memorisation (the spikes of the detector's rule).

    A spike's *increment* is raw Ô01 ``span`` rows after the spike's row minus the row before the spike (span 0: the
    spike's row itself). ``pre_spike_rise``: the largest raw Ô01 above its running post-memorisation minimum before
    the first spike after memorisation (None if the run never memorised); ``jumps``: the increments; ``falls``: for
    each spike followed by another, raw Ô01 on the row before the next spike minus the row where the increment ended
    (negative: it fell back between them); ``removed_alarm``: the detector with the spike guard off on Ô01 with every
    increment subtracted from all later points and the rows inside an increment left out (NaN): the series without
    what the spikes added. How much of a rise the removal takes away grows with ``span``, so report several."""
    if span < 0:
        raise ValueError(f"span: expected >= 0 rows, got {span}")
    d = Detector(dataclasses.replace(det, spike_guard="hold"))
    for r in rows:
        d.update(r["step"], r["o01"], r["train_acc"], r["train_loss_max"])
    mem = d.result.memorised_step
    index = {r["step"]: i for i, r in enumerate(rows)}
    spans = [(index[s], min(index[s] + span, len(rows) - 1)) for s in d.result.spike_steps
             if mem is not None and s > mem and index[s] > 0]
    jumps = [rows[j]["o01"] - rows[i - 1]["o01"] for i, j in spans]
    falls = [rows[b - 1]["o01"] - rows[j]["o01"] for (_, j), (b, _) in zip(spans, spans[1:]) if b - 1 > j]
    pre = None
    if mem is not None:
        first = spans[0][0] if spans else len(rows)
        low = math.inf
        for r in rows[index[mem]:first]:
            if math.isfinite(r["o01"]):
                low = min(low, r["o01"])
                pre = max(pre or 0.0, r["o01"] - low)
    off = Detector(dataclasses.replace(det, spike_guard="off"))
    shift, k = 0.0, 0
    for t, r in enumerate(rows):
        while k < len(spans) and spans[k][1] <= t:
            shift += jumps[k] if math.isfinite(jumps[k]) else 0.0
            k += 1
        inside = any(i <= t < j for i, j in spans[k:k + span + 1])
        off.update(r["step"], math.nan if inside else r["o01"] - shift, r["train_acc"], r["train_loss_max"])
    return {"spikes": [rows[i]["step"] for i, _ in spans], "jumps": jumps, "falls": falls, "pre_spike_rise": pre,
            "removed_alarm": off.result.alarm_step}

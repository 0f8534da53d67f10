"""Small statistics for the report, with no dependencies: Wilson intervals, quantiles, a seeded bootstrap, and
one signal's hit / false-alarm / lead summary over a set of runs."""

from __future__ import annotations

import math
import random
from typing import Sequence


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


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Pearson's correlation of paired values (NaN with fewer than 3 pairs or a constant side)."""
    if len(xs) != len(ys):
        raise ValueError(f"ys: expected as many values as xs ({len(xs)}), got {len(ys)}")
    n = len(xs)
    if n < 3:
        return math.nan
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx == 0 or syy == 0:
        return math.nan
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / math.sqrt(sxx * syy)

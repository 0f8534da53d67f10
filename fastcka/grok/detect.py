"""The online early-warning detector of DESIGN §2: does a scalar series re-rise after memorisation?

The detector sees one logged point at a time (step, value, train accuracy, train loss) and never looks ahead, so the
alarm it raises during training is the alarm it would raise on the finished log. It works on any scalar series: Ô01
(the inter-layer CKA), or a baseline progress measure (Fourier concentration, weight norm, spectral entropy, test
loss ...) with ``direction=-1`` for a measure whose warning sign is a fall. Thresholds are in the series' own units;
normalise a series first (divide by its first value, say) to use one threshold across measures of different scale.

The rule, every threshold a field of :class:`DetectorConfig`:

1. **Smooth** causally: an exponential moving average with a half-life of ``halflife`` steps (irregular step gaps
   are handled: the weight of the new point is 1 − 0.5^(Δstep / halflife); the spans frozen by the spike guard since
   the last point used, each from its spike to the end of its window, are not counted in Δstep, so the first point
   after a window has the weight of two logging intervals: the one before the spike and the one after the window).
   NaN points are skipped: they neither move the average nor count towards ``persist``.
2. **Gate on memorisation**: nothing happens before the first point with train accuracy ≥ ``memorised_acc``. The
   peak is the largest smoothed value up to and including that point (or the first finite one after it).
3. **A real drop**: after the gate the detector tracks the running minimum of the smoothed series. The drop is
   real once peak − minimum ≥ ``min_drop``.
4. **A persistent rise**: once the drop is real, a rise begins when smoothed − minimum ≥ ``rise``; the alarm fires
   when the rise has held at every point for ``persist`` steps (steps frozen by the spike guard neither count
   nor break it). The alarm step is the step at which that is
   confirmed (the earliest step an online observer could know), and the rise's onset is reported too.
5. **Spike guard** (issue 8 §5): full-batch AdamW runs have periodic train-loss spikes (loss 1e-3…1e-7 jumping back
   to ~1, the "slingshot"), and Ô01 jumps at each. A spike is a point whose train loss (the largest since the
   previous point, if the trainer logs it) is ≥ ``spike_ratio`` × the previous point's and ≥ ``spike_min_loss``
   (so the slow recovery after a spike is not a new spike). With ``spike_guard="hold"`` the series is ignored (smoothed value,
   minimum and rise clock all frozen) for ``spike_window`` steps after each spike; ``"rebase"`` does that and then
   restarts both the average and the running minimum from the first point after the window, so that a level shift
   caused by the spike cannot count as a rise (at the price of one unsmoothed point); ``"off"`` disables the guard.

``Detection.first_rise_step`` is the first step at which the rise condition of 4 held at all (even if it then broke
off before ``persist``); ``rise_onset_step`` is the start of the rise that raised the alarm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

SPIKE_GUARDS = ("off", "hold", "rebase")
# Bumped whenever a change can move an alarm on the same log; written into every run's summary, so that a report can
# tell which rule produced an alarm recorded during training (it recomputes every alarm with the current rule).
DETECTOR_VERSION = 3  # 3: back-to-back frozen spans are all taken off the smoothing gap (v2 took off only the last)


@dataclass
class DetectorConfig:
    halflife: float = field(default=50.0, metadata={"help": "EMA half-life of the causal smoothing, in steps"})
    memorised_acc: float = field(default=0.99, metadata={"help": "train accuracy that opens the memorisation gate"})
    min_drop: float = field(default=0.05, metadata={"help": "peak − running minimum needed before a rise counts"})
    rise: float = field(default=0.05, metadata={"help": "smoothed − running minimum that counts as a rise"})
    persist: int = field(default=100, metadata={"help": "steps the rise must hold before the alarm fires"})
    direction: int = field(default=1, metadata={"help": "+1: warn on a re-rise; -1: warn on a re-fall (series negated)"})
    spike_guard: str = field(default="hold", metadata={"help": "train-loss spike guard: off | hold | rebase"})
    spike_ratio: float = field(default=10.0, metadata={"help": "loss / the previous point's loss that marks a spike"})
    spike_min_loss: float = field(default=0.05, metadata={"help": "a spike's loss must also be at least this"})
    spike_window: int = field(default=200, metadata={"help": "steps the series is ignored after a spike"})

    def __post_init__(self) -> None:
        if self.spike_guard not in SPIKE_GUARDS:
            raise ValueError(f"--spike-guard: expected one of {', '.join(SPIKE_GUARDS)}, got {self.spike_guard!r}")
        if self.direction not in (1, -1):
            raise ValueError(f"--direction: expected +1 or -1, got {self.direction}")
        for name in ("halflife", "memorised_acc", "min_drop", "rise", "spike_ratio", "spike_min_loss"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                # a NaN threshold compares False with everything: the detector would silently never fire
                raise ValueError(f"--{name.replace('_', '-')}: expected a finite number, got {v!r}")
        for name in ("persist", "spike_window"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"--{name.replace('_', '-')}: expected a whole number of steps, got {v!r}")
        if self.halflife <= 0 or self.persist < 0 or self.spike_window < 0:
            raise ValueError("--halflife must be > 0, --persist and --spike-window >= 0")
        if not 0.0 < self.memorised_acc <= 1.0:
            raise ValueError(f"--memorised-acc: expected a train accuracy in (0, 1], got {self.memorised_acc}")
        if self.min_drop < 0 or self.rise < 0 or self.spike_ratio <= 1 or self.spike_min_loss < 0:
            raise ValueError("--min-drop, --rise and --spike-min-loss must be >= 0, --spike-ratio > 1")


@dataclass
class Detection:
    """What the detector saw. Steps are None when the event did not happen."""

    alarm_step: Optional[int] = None
    rise_onset_step: Optional[int] = None
    first_rise_step: Optional[int] = None
    memorised_step: Optional[int] = None
    peak: Optional[float] = None  # in the series' own sign, as are minimum and smoothed
    minimum: Optional[float] = None
    minimum_step: Optional[int] = None
    spike_steps: list[int] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)  # one per point fed (NaN before the first finite value)
    ignored: list[bool] = field(default_factory=list)  # points frozen by the spike guard


class Detector:
    """Feed points in step order with :meth:`update`; read :attr:`result`."""

    def __init__(self, cfg: Optional[DetectorConfig] = None):
        self.cfg = cfg or DetectorConfig()
        self.result = Detection()
        self._s: Optional[float] = None  # smoothed value, in detector sign (direction applied)
        self._last_step: Optional[int] = None
        self._peak = -math.inf
        self._min = math.inf
        self._min_step: Optional[int] = None
        self._rise_since: Optional[int] = None  # first step of the current rise
        self._rise_held = 0  # steps the current rise has held, frozen stretches not counted
        self._rise_last: Optional[int] = None  # last unfrozen step of the rise (None right after a freeze)
        self._prev_loss = math.inf
        self._frozen_until = -math.inf
        self._freeze_start: Optional[int] = None  # the spike that began the current (or last) frozen span
        self._frozen_closed = 0  # steps frozen by the spans that have ended before the current one began
        self._frozen_at_last = 0  # the frozen total when the last point was used
        self._rebase_pending = False

    def update(self, step: int, value: float, train_acc: float, train_loss: Optional[float] = None) -> bool:
        """One logged point. Returns True exactly once: at the point where the alarm fires."""
        c, r = self.cfg, self.result
        if r.memorised_step is None and train_acc >= c.memorised_acc:
            r.memorised_step = step
        frozen = self._spike_check(step, train_loss)
        x = c.direction * value
        finite = math.isfinite(x)
        rebased = False
        if not frozen and finite:
            if self._s is None or self._rebase_pending:  # rebase restarts the average too, at the window's end
                self._s, rebased, self._rebase_pending = x, self._rebase_pending, False
            else:
                # the frozen spans (spike → end of its window) since the last point used count as absent time, so
                # the first point after a window does not nearly replace the average
                gap = step - self._last_step - (self._frozen_total() - self._frozen_at_last)
                w = 1.0 - 0.5 ** (gap / c.halflife)
                self._s += w * (x - self._s)
            self._last_step, self._frozen_at_last = step, self._frozen_total()
        r.smoothed.append(c.direction * self._s if self._s is not None else math.nan)
        r.ignored.append(frozen)
        if frozen or self._s is None or not finite:
            self._rise_last = None  # a missing (NaN) point neither counts towards ``persist`` nor breaks a rise
            return False
        s = self._s
        # the peak: up to and including the memorisation point, or the first finite point after it
        if r.memorised_step is None or step == r.memorised_step or self._peak == -math.inf:
            self._peak = max(self._peak, s)
            if r.memorised_step is None:
                return False
        if r.alarm_step is not None:  # done: the minimum and peak stay those the alarm was measured from
            return False
        if rebased:  # the guard's window just ended: measure rises from here on
            self._min, self._min_step, self._rise_since = s, step, None
            self._rise_held, self._rise_last = 0, None
        if s < self._min:
            self._min, self._min_step = s, step
        r.peak, r.minimum, r.minimum_step = c.direction * self._peak, c.direction * self._min, self._min_step
        if self._peak - self._min < c.min_drop:
            return False
        if s - self._min >= c.rise:
            if r.first_rise_step is None:
                r.first_rise_step = step
            if self._rise_since is None:
                self._rise_since, self._rise_held, self._rise_last = step, 0, step
            self._rise_held += step - (self._rise_last if self._rise_last is not None else step)
            self._rise_last = step
            if self._rise_held >= c.persist:
                r.alarm_step, r.rise_onset_step = step, self._rise_since
                return True
        else:
            self._rise_since, self._rise_held, self._rise_last = None, 0, None
        return False

    def _frozen_total(self) -> int:
        """Steps frozen by the spike guard so far: every ended span plus the current (or last) one."""
        current = self._frozen_until - self._freeze_start if self._freeze_start is not None else 0
        return self._frozen_closed + current

    def _spike_check(self, step: int, loss: Optional[float]) -> bool:
        """Record a spike at this point if there is one; True while the guard freezes the series."""
        c = self.cfg
        if c.spike_guard == "off":
            return False
        if loss is not None and math.isfinite(loss):  # a missing loss cannot start a spike, but the window still runs
            prev, self._prev_loss = self._prev_loss, loss
            if loss >= c.spike_min_loss and loss >= c.spike_ratio * prev:
                self.result.spike_steps.append(step)
                if step > self._frozen_until:  # a new frozen span (a spike inside a window only extends it)
                    self._frozen_closed = self._frozen_total()
                    self._freeze_start = step
                self._frozen_until = step + c.spike_window
        if step <= self._frozen_until:
            self._rise_last = None  # the frozen stretch does not count towards ``persist``
            self._rebase_pending = c.spike_guard == "rebase"
            return True
        return False


def detect(
    steps: Sequence[int],
    values: Sequence[float],
    train_acc: Sequence[float],
    train_loss: Optional[Sequence[float]] = None,
    cfg: Optional[DetectorConfig] = None,
) -> Detection:
    """Run the online detector over a whole logged series (same result as feeding it point by point)."""
    d = Detector(cfg)
    losses = train_loss if train_loss is not None else [None] * len(steps)
    for step, v, a, l in zip(steps, values, train_acc, losses):
        d.update(int(step), float(v), float(a), None if l is None else float(l))
    return d.result

"""The online detector on synthetic curves with known answers."""

import math
import random

import pytest

from fastcka.grok.detect import DetectorConfig, Detector, detect

STEPS = list(range(0, 4001, 25))


def _curves(rise_at=None, rise=0.15, noise=0.0, seed=0, memorise_at=200, grok_at=3000):
    """Ô01: 0.7 until memorisation, falls to 0.5 over 300 steps, optionally rises by ``rise`` from ``rise_at``."""
    rng = random.Random(seed)
    o, acc, test = [], [], []
    for s in STEPS:
        v = 0.7 if s < memorise_at else max(0.5, 0.7 - (s - memorise_at) / 1500)
        if rise_at is not None and s >= rise_at:
            v += rise * min(1.0, (s - rise_at) / 300)
        o.append(v + rng.gauss(0, noise))
        acc.append(min(1.0, s / memorise_at))
        test.append(1.0 if s >= grok_at else 0.1)
    return o, acc, test


def _alarm(o, acc, loss=None, **kw):
    return detect(STEPS, o, acc, loss, DetectorConfig(**kw))


def test_rise_before_the_jump_raises_the_alarm_before_the_jump():
    o, acc, _ = _curves(rise_at=1500)
    d = _alarm(o, acc)
    assert d.memorised_step == 200
    assert d.alarm_step is not None and 1500 < d.alarm_step < 3000
    assert d.minimum == pytest.approx(0.5, abs=0.02)


def test_no_rise_no_alarm():
    o, acc, _ = _curves(rise_at=None)
    assert _alarm(o, acc).alarm_step is None


@pytest.mark.parametrize("seed", range(5))
def test_noise_only_no_alarm(seed):
    o, acc, _ = _curves(rise_at=None, noise=0.02, seed=seed)
    assert _alarm(o, acc).alarm_step is None


@pytest.mark.parametrize("seed", range(3))
def test_noisy_rise_still_alarms(seed):
    o, acc, _ = _curves(rise_at=1500, noise=0.02, seed=seed)
    assert 1500 < _alarm(o, acc).alarm_step < 3000


def test_rise_after_the_jump_alarms_after_the_jump():
    o, acc, _ = _curves(rise_at=3200)
    d = _alarm(o, acc)
    assert d.alarm_step is not None and d.alarm_step > 3000  # a negative lead: reported as such, not hidden


def test_no_drop_means_no_alarm():
    o = [0.6 + (0.1 if s > 1500 else 0.0) for s in STEPS]  # rises, but never dropped after memorisation
    acc = [min(1.0, s / 200) for s in STEPS]
    assert _alarm(o, acc).alarm_step is None


def test_nothing_before_memorisation():
    o, _, _ = _curves(rise_at=1500)
    assert _alarm(o, [0.5] * len(STEPS)).alarm_step is None  # never memorises


def test_rise_must_persist():
    o, acc, _ = _curves()
    o = [v + (0.2 if 2000 <= s < 2050 else 0.0) for v, s in zip(o, STEPS)]  # a 50-step blip
    assert _alarm(o, acc, halflife=1.0, persist=100).alarm_step is None
    assert _alarm(o, acc, halflife=1.0, persist=0).alarm_step is not None


def _spiky(step_up: bool):
    """A flat post-memorisation Ô01 that jumps at a train-loss spike at step 2000 (and stays up if ``step_up``)."""
    o, acc, _ = _curves()
    loss = [1e-5 if s >= 400 else 1.0 for s in STEPS]
    for i, s in enumerate(STEPS):
        if s == 2000:
            loss[i] = 1.0
        if s >= 2000 and (step_up or s < 2100):
            o[i] += 0.1
    return o, acc, loss


def test_spike_guard_hold_ignores_a_transient_spike():
    o, acc, loss = _spiky(step_up=False)
    assert _alarm(o, acc, loss, spike_guard="off", halflife=1.0, persist=50).alarm_step is not None
    d = _alarm(o, acc, loss, spike_guard="hold", halflife=1.0, persist=50)
    assert d.spike_steps == [2000] and d.alarm_step is None


def test_spike_guard_rebase_ignores_a_level_shift_at_a_spike():
    o, acc, loss = _spiky(step_up=True)
    assert _alarm(o, acc, loss, spike_guard="hold").alarm_step is not None  # the shift outlasts the window
    assert _alarm(o, acc, loss, spike_guard="rebase").alarm_step is None


def test_memorisation_decline_of_the_loss_is_not_a_spike():
    o, acc, _ = _curves(rise_at=1500)
    loss = [math.exp(-s / 100) for s in STEPS]
    assert _alarm(o, acc, loss).spike_steps == []


def test_direction_minus_one_is_the_mirror_image():
    o, acc, _ = _curves(rise_at=1500)
    a = _alarm(o, acc).alarm_step
    assert _alarm([1 - v for v in o], acc, direction=-1).alarm_step == a


def test_online_equals_offline_and_fires_once():
    o, acc, _ = _curves(rise_at=1500)
    det = Detector()
    fired = [s for s, v, a in zip(STEPS, o, acc) if det.update(s, v, a)]
    assert fired == [detect(STEPS, o, acc).alarm_step]


def test_bad_detector_config():
    with pytest.raises(ValueError, match="--spike-guard"):
        DetectorConfig(spike_guard="maybe")


@pytest.mark.parametrize("kw, match", [
    ({"rise": float("nan")}, "--rise"), ({"min_drop": float("nan")}, "--min-drop"),
    ({"memorised_acc": float("nan")}, "--memorised-acc"), ({"halflife": float("inf")}, "--halflife"),
    ({"spike_ratio": float("nan")}, "--spike-ratio"), ({"spike_min_loss": float("-inf")}, "--spike-min-loss"),
    ({"memorised_acc": 1.5}, "--memorised-acc"), ({"memorised_acc": 0.0}, "--memorised-acc"),
    ({"rise": -0.1}, "--rise"), ({"spike_ratio": 0.5}, "--spike-ratio"), ({"persist": 2.5}, "--persist"),
    ({"spike_window": True}, "--spike-window"), ({"rise": "0.05"}, "--rise"),
])
def test_detector_config_refuses_non_finite_and_out_of_range_values(kw, match):
    """A NaN threshold compares False with everything, so the detector it configures would never fire, silently."""
    with pytest.raises(ValueError, match=match):
        DetectorConfig(**kw)


def test_nan_rise_would_silence_the_detector():
    """Why the check above matters: the same curves alarm with rise 0.05 and, were NaN let through, never would."""
    o, acc, _ = _curves(rise_at=1500)
    assert detect(STEPS, o, acc, None, DetectorConfig()).alarm_step is not None
    cfg = DetectorConfig()
    object.__setattr__(cfg, "rise", float("nan"))  # bypassing the check
    assert detect(STEPS, o, acc, None, cfg).alarm_step is None


def test_spikes_pause_but_do_not_reset_the_persistence_clock():
    """Spikes every 300 steps with a 200-step guard window leave 100-step gaps: a real rise must still alarm."""
    o, acc, _ = _curves(rise_at=1200)
    loss = [1.0 if s < 400 else (1.0 if s in (1600, 1900, 2200, 2500) else 1e-5) for s in STEPS]
    d = _alarm(o, acc, loss, spike_guard="hold", spike_window=200, persist=100)
    assert d.spike_steps == [1600, 1900, 2200, 2500]
    assert d.alarm_step is not None and d.alarm_step < 3000
    no_rise, _, _ = _curves(rise_at=None)
    assert _alarm(no_rise, acc, loss, spike_guard="hold").alarm_step is None


def test_nan_points_neither_count_towards_persist_nor_move_the_average():
    o, acc, _ = _curves()
    # one finite rising point at 2000, then NaN for 300 steps: nothing may accrue towards ``persist``
    o = [0.8 if s == 2000 else (math.nan if 2000 < s <= 2300 else v) for v, s in zip(o, STEPS)]
    d = _alarm(o, acc, halflife=1.0, persist=100)
    assert d.alarm_step is None
    i = STEPS.index(2300)
    assert d.smoothed[i] == d.smoothed[STEPS.index(2000)]  # the average did not move through the NaNs


def test_a_nan_train_loss_inside_the_spike_window_stays_frozen():
    o, acc, loss = _spiky(step_up=False)
    loss = [math.nan if 2000 < s < 2200 else v for v, s in zip(loss, STEPS)]
    d = _alarm(o, acc, loss, spike_guard="hold", halflife=1.0, persist=50)
    assert d.spike_steps == [2000] and d.alarm_step is None
    assert all(d.ignored[STEPS.index(s)] for s in range(2000, 2201, 25))


def test_peak_is_taken_at_the_first_finite_point_when_memorisation_is_nan():
    o, acc, _ = _curves(rise_at=1500)
    o = [math.nan if s <= 200 else v for v, s in zip(o, STEPS)]  # NaN up to and including memorisation
    d = _alarm(o, acc)
    assert d.peak is not None and math.isfinite(d.peak)
    assert d.alarm_step is not None and 1500 < d.alarm_step < 3000


def test_the_first_point_after_a_spike_window_is_smoothed_not_adopted():
    """The frozen span (spike at 2000 → 2200) counts as absent time: the point at 2225 after the last unfrozen point
    at 1975 gets the weight of a 250 − 200 = 50-step gap."""
    o, acc, loss = _spiky(step_up=True)
    d = _alarm(o, acc, loss, spike_guard="hold", halflife=50.0)
    i = STEPS.index(2225)  # the first point after the window (2000 + 200)
    before, raw = d.smoothed[i - 1], o[i]
    assert d.smoothed[i - 1] == d.smoothed[STEPS.index(1975)]  # held through the window
    w = 1 - 0.5 ** (50 / 50)
    assert d.smoothed[i] == pytest.approx(before + w * (raw - before))


def test_rebase_restarts_the_average_at_the_first_point_after_the_window():
    o, acc, loss = _spiky(step_up=True)
    d = _alarm(o, acc, loss, spike_guard="rebase", halflife=50.0)
    i = STEPS.index(2225)
    assert d.smoothed[i] == o[i]  # hold would give a smoothed value between the old level and o[i]
    assert _alarm(o, acc, loss, spike_guard="hold", halflife=50.0).smoothed[i] != o[i]


def test_first_rise_step_sees_a_rise_that_broke_off():
    o, acc, _ = _curves()
    o = [v + (0.2 if 900 <= s < 950 else 0.0) for v, s in zip(o, STEPS)]  # a 50-step blip: no alarm
    d = _alarm(o, acc, halflife=1.0, persist=100)
    assert d.alarm_step is None and d.rise_onset_step is None and d.first_rise_step == 900


def test_back_to_back_frozen_spans_are_all_taken_off_the_smoothing_gap():
    # used point at 1000 (value 0); a spike at 1025 freezes to 1225, a second one lands on the next point (1250) and
    # freezes to 1450; the first point used after them (1475) must count 1475 − 1000 − 2·200 = 75 steps, not 275
    cfg = DetectorConfig(halflife=50.0, spike_guard="hold", spike_window=200)
    d = Detector(cfg)
    for step in range(0, 1476, 25):
        loss = 1.0 if step in (1025, 1250) else 0.001
        d.update(step, 1.0 if step == 1475 else 0.0, 1.0, loss)
    assert d.result.spike_steps == [1025, 1250] and d.result.ignored[-2] and not d.result.ignored[-1]
    assert d.result.smoothed[-1] == pytest.approx(1.0 - 0.5 ** (75 / 50))

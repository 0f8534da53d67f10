"""Issue 20's report corrections: the spike sawtooth and the spikes-removed detector, Pearson's r, unresolved
weight-decay-0 controls, the run order, the alarm-against-grok scatter and the pre-registered section."""

import math
import statistics

import pytest

from fastcka.grok.detect import DetectorConfig, detect
from fastcka.grok.study.analysis import spike_sawtooth
from fastcka.grok.study.figures import plot_alarm_vs_grok, run_order
from fastcka.grok.study.stats import pearson


def sawtooth_rows(spikes=(1000, 1500, 2000, 2500), jump=0.06, fall=0.02, drift=0.0, last=4000):
    """Memorised at 200; Ô01 drops to 0.3 by 500, then jumps by ``jump`` on each spike's row and falls ``fall``
    linearly until the next spike; ``drift`` per 1,000 steps is a slow rise on top."""
    rows, level, k = [], 0.3, 0
    for step in range(0, last + 1, 25):
        spike = step in spikes
        if spike:
            level += jump
            k += 1
        elif k and k < len(spikes) + 1 and step > spikes[k - 1]:
            nxt = spikes[k] if k < len(spikes) else step + 500
            level -= fall * 25 / (nxt - spikes[k - 1])
        base = 0.8 - step / 1000 if step < 500 else level
        rows.append({"step": step, "o01": base + drift * max(0, step - 500) / 1000,
                     "train_acc": 1.0 if step >= 200 else 0.5,
                     "train_loss_max": 1.0 if spike else 1e-4, "test_acc": 0.01})
    return rows


def test_sawtooth_jumps_falls_and_removed_alarm():
    det = DetectorConfig()
    rows = sawtooth_rows()
    s = spike_sawtooth(rows, det, span=0)
    assert s["spikes"] == [1000, 1500, 2000, 2500]
    assert s["jumps"] == pytest.approx([0.06] * 4)
    assert all(x < 0 for x in s["falls"]) and len(s["falls"]) == 3
    assert s["pre_spike_rise"] == pytest.approx(0.0, abs=1e-12)  # flat between the drop and the first spike
    # the ratchet (+0.06, −0.02 per spike) makes the guard-off detector fire; with the jumps removed it does not
    raw = detect([r["step"] for r in rows], [r["o01"] for r in rows], [r["train_acc"] for r in rows],
                 [r["train_loss_max"] for r in rows], DetectorConfig(spike_guard="off"))
    assert raw.alarm_step is not None and s["removed_alarm"] is None


def test_a_slow_rise_survives_the_removal():
    rows = sawtooth_rows(jump=0.0, fall=0.0, drift=0.1)  # no Ô01 jump at the spikes, a steady rise of 0.1 / 1,000
    s = spike_sawtooth(rows, DetectorConfig(), span=1)
    assert s["jumps"] == pytest.approx([0.005] * 4)  # from the row before the spike to the row after it: 2 rows of drift
    assert s["removed_alarm"] is not None and s["removed_alarm"] < 2000
    with pytest.raises(ValueError, match="span"):
        spike_sawtooth(rows, DetectorConfig(), span=-1)


def test_longer_spans_remove_more():
    rows = sawtooth_rows(jump=0.03, fall=0.0, drift=0.02)
    removed = [spike_sawtooth(rows, DetectorConfig(), span)["jumps"] for span in (0, 1, 4)]
    assert sum(removed[0]) < sum(removed[1]) < sum(removed[2])


def test_pearson_against_statistics():
    xs, ys = [1.0, 2.0, 4.0, 8.0], [3.0, 1.0, 4.0, 1.5]
    assert pearson(xs, ys) == pytest.approx(statistics.correlation(xs, ys))
    assert math.isnan(pearson([1, 2], [3, 4])) and math.isnan(pearson([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="ys"):
        pearson([1, 2, 3], [1, 2])


def test_unresolved_and_run_order(tmp_path):
    from test_study import PILOT_CFG, make_run

    from fastcka.grok import study

    runs = tmp_path / "runs"
    make_run(runs, "wd0-s0", "control", grok=None, rise_at=1000, weight_decay=0.0)  # fast regime, 3,000 steps
    make_run(runs, "frac-s0", "control", grok=None, rise_at=1000)
    make_run(runs, "pa-s0", "grok", grok=2500, rise_at=700, **PILOT_CFG)
    make_run(runs, "fast-s0", "grok", grok=2000, rise_at=1000)
    facts = {f["name"]: f for f in (study.analyse_run(r) for r in study.load_runs(runs))}
    assert facts["wd0-s0"]["unresolved"] and not facts["frac-s0"]["unresolved"]
    assert not facts["pa-s0"]["unresolved"]
    order = [f["name"] for f in sorted(facts.values(), key=run_order)]
    assert order == ["pa-s0", "fast-s0", "frac-s0", "wd0-s0"]  # pilot first, then fast: grok before control
    v = study.verdicts.discriminating_verdict(study.verdicts.modular_runs(facts.values(), "pilot"),
                                              study.verdicts.modular_runs(facts.values(), "fast"))
    assert "false alarms in 1/1 runs that did not grok (frac-s0); 1 weight-decay-0 control(s) are unresolved" in v.evidence
    plot_alarm_vs_grok(list(facts.values()), tmp_path / "scatter.png")
    assert (tmp_path / "scatter.png").stat().st_size > 0


def test_report_has_the_scatter_the_sawtooth_and_the_preregistered_section(tmp_path):
    import shutil
    from pathlib import Path

    from test_study import PILOT_CFG, make_run

    from fastcka.grok import study

    runs = tmp_path / "runs"
    make_run(runs, "pa-s0", "grok", grok=2500, rise_at=700, **PILOT_CFG)
    doc = tmp_path / "docs" / "STUDY.md"
    (tmp_path / "docs" / "study").mkdir(parents=True)
    root = Path(__file__).resolve().parents[1]
    shutil.copyfile(root / "docs" / "study" / "prereg_grid.toml", tmp_path / "docs" / "study" / "prereg_grid.toml")
    text = study.write_report(runs, doc).read_text()
    assert (tmp_path / "docs" / "study" / "alarm_vs_grok.png").exists()
    assert "### The spike sawtooth" in text and "| 4 |" in text
    assert "## The pre-registered test (issue 20)" in text
    assert "pending (0 of 8 S runs finished)" in text and "pending (0 of 16 runs finished)" in text


def test_grok_report_prints_the_test_accuracy_watcher_beside_the_alarm(tmp_path):
    from test_grok_train import tiny

    from fastcka.grok.study.analysis import test_acc_alarm
    from fastcka.grok.train import format_report, read_log, train

    s = train(tiny(tmp_path / "r", max_steps=200))
    rows = read_log(tmp_path / "r" / "log.csv")
    assert s["test_acc_watch_step"] == test_acc_alarm(rows, 0.99)
    mem = next(r for r in rows if r["train_acc"] >= 0.99)
    assert s["test_acc_at_memorised"] == mem["test_acc"]
    text = format_report(s)
    alarm_at = text.index("alarm (Ô01 re-rise")
    watch_at = text.index("test-accuracy watcher (test acc +0.1 over its value at memorisation")
    assert alarm_at < watch_at < text.index("grokked (test acc")
    assert "not that or when it will grok" in text
    old = {k: v for k, v in s.items() if not k.startswith("test_acc_watch") and k != "test_acc_at_memorised"}
    assert "test-accuracy watcher" not in format_report(old)  # a summary from before the watcher still prints


def test_a_sequential_grid_runs_again_after_a_ctrl_c_left_the_stop_mark(tmp_path):
    """A Ctrl-C in a --jobs 1 grid leaves ``.stop`` in the checkpoint folder; the next call must train, not return
    'interrupted' at once (found resuming the pre-registered runs)."""
    from fastcka.grok import study

    ckpt = tmp_path / "ck"
    ckpt.mkdir()
    (ckpt / study.STOP).touch()
    specs = study.load_grid(study.QUICK_GRID)[:1]
    results = study.run_grid([dataclasses_replace(specs[0], max_steps=20)], tmp_path / "runs", ckpt, progress=False)
    assert [r["interrupted"] for r in results] == [False]
    assert (tmp_path / "runs" / specs[0].name / "summary.json").exists()


def dataclasses_replace(spec, **config):
    import dataclasses

    return dataclasses.replace(spec, config={**spec.config, **config})

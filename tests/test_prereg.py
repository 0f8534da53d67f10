"""The pre-registered test of issue 20 (fastcka/grok/study/prereg.py): its constants are PREREG.md's, the blind
calibration's rule and bookkeeping, the H1/H2 verdict records on made-up facts, and run facts on a real run."""

import dataclasses
import json
import math
import re
import shutil
from pathlib import Path

import pytest

from fastcka.grok.detect import DetectorConfig
from fastcka.grok.study import prereg
from fastcka.grok.study.analysis import load_runs
from fastcka.grok.study.grid import load_grid
from fastcka.grok.study.records import Verdict, render_line, render_table

ROOT = Path(__file__).resolve().parents[1]
PREREG_MD = ROOT / "docs" / "study" / "PREREG.md"
GRID = ROOT / "docs" / "study" / "prereg_grid.toml"


def test_constants_are_the_preregistered_ones():
    text = PREREG_MD.read_text()
    assert "ε = 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2" in text
    assert prereg.LADDER == (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
    assert f"seed {prereg.CALIBRATION_SEED}" in text and prereg.CALIBRATION_SEED == 1000
    assert "[100, 3,000]" in text and (prereg.SPIKE_FREE_FROM, prereg.SPIKE_FREE_TO) == (100, 3000)
    assert "at most 2 spikes" in text and prereg.H1_MAX_SPIKES == 2
    assert "k ≥ 0.75 n" in text and "k ≤ 0.25 n" in text and "n < 4" in text
    assert (prereg.H1_SURVIVES, prereg.H1_ARTEFACT, prereg.H1_MIN_ELIGIBLE) == (0.75, 0.25, 4)
    assert "step ≤ 1,950" in text and prereg.H2_ALARM_BY == 1950
    assert "at least 0.011 above" in text and "test accuracy at step 1,000" in text
    assert (prereg.H2_TEST_STEP, prereg.H2_TEST_GAIN) == (1000, 0.011)
    assert "20,000 steps" in text and prereg.MAX_STEPS == 20000


def test_grid_is_the_preregistered_runs():
    """16 runs on fresh seeds, the S arm refused until calibrated; calibration seed never used by a run."""
    text = GRID.read_text()
    filled = text.replace(prereg.PLACEHOLDER, "adam_eps = 1e-4 }") if prereg.PLACEHOLDER in text else text
    specs = load_grid(filled)
    arms = [prereg.arm(s.name) for s in specs]
    assert (arms.count("S"), arms.count("D"), arms.count("N")) == (8, 4, 4)
    assert {s.seed for s in specs if prereg.arm(s.name) == "S"} == {1001, 1002, 1003, 1004}
    assert {s.seed for s in specs if prereg.arm(s.name) == "N"} == {1007, 1008, 1009, 1010}
    assert prereg.CALIBRATION_SEED not in {s.seed for s in specs}
    for s in specs:
        c = s.config
        assert (c["p"], c["lr"], c["weight_decay"], c["max_steps"]) == (97, 1e-3, 1.0, 20000)
        assert c["train_frac"] == (0.2 if prereg.arm(s.name) == "N" else 0.3)
        assert ("adam_eps" in c) == (prereg.arm(s.name) == "S")
    if prereg.PLACEHOLDER in text:
        with pytest.raises(ValueError, match="--adam-eps"):
            load_grid(text)


def rows_with_spikes(last: int, spikes=(), every=25):
    """Train-loss rows only: a loss of 1e-4 with a jump to 1.0 at each spike step."""
    return [{"step": s, "train_loss_max": 1.0 if s in spikes else 1e-4} for s in range(0, last + 1, every)]


def test_calibration_outcome():
    det = DetectorConfig()
    assert prereg.calibration_outcome(rows_with_spikes(2000), det) is None  # undecided
    assert prereg.calibration_outcome(rows_with_spikes(3000), det) == {"passed": True, "first_spike": None}
    assert prereg.calibration_outcome(rows_with_spikes(3000, (75,)), det)["passed"]  # before the window
    assert prereg.calibration_outcome(rows_with_spikes(1500, (1200, 1400)), det) == {"passed": False,
                                                                                     "first_spike": 1200}
    assert prereg.calibration_outcome(rows_with_spikes(3000, (100,)), det)["first_spike"] == 100  # inclusive
    assert prereg.calibration_outcome(rows_with_spikes(3100, (3025,)), det)["passed"]  # after it


def test_spike_steps_reads_train_loss_only_and_is_the_detectors_rule():
    rows = rows_with_spikes(1000, (500,))
    assert prereg.spike_steps(rows, DetectorConfig()) == [500]
    # a jump below spike_min_loss or under spike_ratio is no spike
    rows[8]["train_loss_max"] = 0.04
    rows[30]["train_loss_max"] = 9e-4
    assert prereg.spike_steps(rows, DetectorConfig()) == [500]


TINY = dict(p=11, train_frac=0.5, d_model=32, n_heads=2, d_mlp=64, lr=1e-2)


def test_calibrate_end_to_end_resumes_and_fills_the_grid(tmp_path, monkeypatch):
    reg = dataclasses.replace(prereg.REG1, spike_free=(prereg.SPIKE_FREE_FROM, 300))
    grid = tmp_path / "grid.toml"
    uncalibrated = re.sub(r"adam_eps = [0-9.e+-]+ \}  # calibrated \(PREREG §2; docs/study/prereg/calibration/\)",
                          prereg.PLACEHOLDER, GRID.read_text())  # the grid as committed before the calibration
    assert uncalibrated.count(prereg.PLACEHOLDER) == 8
    grid.write_text(uncalibrated)
    ladder = (1e-2, 10.0)  # at lr 1e-2 the tiny run spikes near step 175 with eps 1e-2; eps 10 barely moves
    chosen = prereg.calibrate(grid, tmp_path / "rec", tmp_path / "ck", ladder=ladder, chunk=100, log=lambda s: None,
                              overrides=TINY, reg=reg)
    record = json.loads((tmp_path / "rec" / "calibration.json").read_text())
    tried = [c["adam_eps"] for c in record["candidates"]]
    assert tried == list(ladder[: len(tried)])
    passed = [c["adam_eps"] for c in record["candidates"] if c["passed"]]
    assert chosen == (passed[0] if passed else None) and record["chosen"] == chosen
    assert all(not c["passed"] for c in record["candidates"][:-1])  # stops at the first that passes
    for c in record["candidates"]:
        lines = (tmp_path / "rec" / f"eps-{c['adam_eps']:g}.csv").read_text().splitlines()
        assert lines[0] == ",".join(prereg.CALIBRATION_COLUMNS)  # nothing but the train-loss columns is kept
        assert int(lines[-1].split(",")[0]) == c["steps_run"]
        if not c["passed"]:
            assert c["steps_run"] - c["first_spike"] < 100  # stopped within the chunk of its first spike
    if chosen is not None:
        assert prereg.PLACEHOLDER not in grid.read_text()
        specs = load_grid(grid.read_text())
        assert {s.config["adam_eps"] for s in specs if prereg.arm(s.name) == "S"} == {chosen}
    # a second call reads the decided candidates back and trains nothing; on the filled grid it only checks the value
    monkeypatch.setattr("fastcka.grok.train.train", lambda *a, **k: pytest.fail("trained again"))
    again = dict(ladder=ladder, chunk=100, log=lambda s: None, overrides=TINY, reg=reg)
    assert prereg.calibrate(grid, tmp_path / "rec", tmp_path / "ck", **again) == chosen
    if chosen is not None:
        grid.write_text(grid.read_text().replace(f"adam_eps = {chosen:g} }}", "adam_eps = 0.5 }"))
        with pytest.raises(ValueError, match="calibration chose"):
            prereg.calibrate(grid, tmp_path / "rec", tmp_path / "ck", **again)
    grid.write_text(uncalibrated)
    assert prereg.calibrate(grid, tmp_path / "rec", tmp_path / "ck", **again) == chosen


def test_write_calibrated_refuses_a_grid_without_the_placeholder(tmp_path):
    g = tmp_path / "g.toml"
    g.write_text("[defaults]\n")
    with pytest.raises(ValueError, match="grid"):
        prereg.write_calibrated(g, 1e-4)


def fact(name, grok, spikes=0, alarm_off=None, alarm_hold=None, r_t=False):
    return {"name": name, "arm": prereg.arm(name), "grok": grok, "spikes_before_grok": None if grok is None else spikes,
            "alarm_off": alarm_off, "alarm_hold": alarm_hold,
            "r_o": alarm_hold is not None and alarm_hold <= prereg.H2_ALARM_BY, "r_t": r_t}


@pytest.mark.parametrize("k, n, verdict", [(6, 8, "survives"), (8, 8, "survives"), (5, 8, "inconclusive"),
                                           (3, 8, "inconclusive"), (2, 8, "artefact"), (0, 8, "artefact"),
                                           (3, 4, "survives"), (1, 4, "artefact"), (2, 3, "not testable")])
def test_h1_thresholds(k, n, verdict):
    facts = [fact(f"S-add-p97-s{i}", 5000, alarm_off=1500 if i < k else None) for i in range(n)]
    facts += [fact(f"S-mul-p97-s{i}", None) for i in range(8 - n)]  # not eligible: did not grok
    v = prereg.h1_verdict(facts, 8)
    assert verdict in v.verdict and (v.numbers["k"], v.numbers["n"]) == (k, n)


def test_h1_eligibility_and_pending():
    facts = [fact(f"S-add-p97-s{i}", 5000, spikes=2, alarm_off=1500) for i in range(6)]
    facts += [fact("S-mul-p97-s1", 5000, spikes=3, alarm_off=1500), fact("S-mul-p97-s2", 5000, alarm_off=5000)]
    v = prereg.h1_verdict(facts, 8)  # 2 spikes still eligible, 3 not; an alarm at the grok step is no hit
    assert (v.numbers["k"], v.numbers["n"], v.numbers["spiky"]) == (6, 7, ["S-mul-p97-s1"])
    assert "survives" in v.verdict
    assert prereg.h1_verdict(facts[:5] + [fact("D-add-p97-s1005", 5000)], 8).verdict == "pending (5 of 8 S runs finished)"
    assert "not testable" in prereg.h1_verdict([], 8, s_arm=False).verdict


def test_h2():
    base = [fact("S-add-p97-s1", 5000, alarm_hold=1500, r_t=True), fact("D-add-p97-s1", 9000, alarm_hold=2000, r_t=True),
            fact("N-add-p97-f0.2-s1", None, alarm_hold=3000), fact("N-add-p97-f0.2-s2", None)]
    v = prereg.h2_verdict(base, 4)  # R_O wrong once (alarm after 1,950), R_T never: more errors
    assert v.verdict == "Ô01 not useful" and v.numbers["errors_r_o"] == ["D-add-p97-s1"] and not v.numbers["errors_r_t"]
    base[1] = fact("D-add-p97-s1", 9000, alarm_hold=1900, r_t=False)
    v = prereg.h2_verdict(base, 4)
    assert v.verdict == "Ô01 useful" and v.numbers["errors_r_t"] == ["D-add-p97-s1"]
    base[2] = fact("N-add-p97-f0.2-s1", None, alarm_hold=1200)  # wrong on an N run: never useful
    base[1] = fact("D-add-p97-s1", 9000, alarm_hold=1900, r_t=False)
    assert prereg.h2_verdict(base, 4).verdict == "Ô01 not useful"
    assert prereg.h2_verdict(base[:3], 4).verdict == "pending (3 of 4 runs finished)"


def test_run_facts_on_a_study_run(tmp_path):
    """A finished pilot-regime run of the 47-run study, renamed as a D run: the facts agree with its summary."""
    src = ROOT / "docs" / "study" / "runs" / "pilot-add-p97-s1"
    dst = tmp_path / "D-add-p97-s1"
    shutil.copytree(src, dst)
    run = load_runs(tmp_path)[0]
    f = prereg.run_facts(run)
    s = run["summary"]
    assert f["grok"] == s["grok_step"] and f["memorised"] == s["memorised_step"]
    assert f["alarm_hold"] == s["alarm_step"] and f["r_o"] == (s["alarm_step"] <= 1950)
    assert f["alarm_off"] == s["alarm_step_by_spike_guard"]["off"]
    assert f["spikes_before_grok"] == sum(1 for x in s["spike_steps"] if x < s["grok_step"])
    rows = {r["step"]: r for r in run["rows"]}
    gain = rows[1000]["test_acc"] - rows[s["memorised_step"]]["test_acc"]
    assert math.isclose(f["test_gain_1000"], gain) and f["r_t"] == (gain >= 0.011)


def test_r_t_needs_memorisation_by_step_1000(tmp_path):
    rows = [{"step": s, "train_acc": 1.0 if s >= 1025 else 0.5, "test_acc": 0.01 * s / 25, "o01": 0.5,
             "train_loss_max": 1e-3} for s in range(0, 3001, 25)]
    cfg = {"detector": {}, "grok_acc": 0.95, "task": "add"}
    f = prereg.run_facts({"name": "N-add-p97-f0.2-s9", "summary": {"config": cfg}, "rows": rows})
    assert f["memorised"] == 1025 and f["test_gain_1000"] is None and not f["r_t"]


def test_records_render_prose_and_table_from_the_same_record():
    v = Verdict("A claim.", "partly", {"k": 3}, ("provisional",), "3/4 runs", "reproduced = all")
    assert render_line(v) == "- **A claim.** partly: 3/4 runs. Rule: reproduced = all."
    numbers_only = Verdict("Numbers.", "numbers only", table=False)
    assert render_table([v, numbers_only]) == ["| claim | verdict |", "|---|---|", "| A claim | partly; provisional |"]
    with pytest.raises(TypeError, match="caveats"):
        Verdict("c", "v", caveats="one string")
    with pytest.raises(ValueError, match="claim"):
        Verdict("", "v")


def test_save_and_restore_checkpoints_for_the_next_machine(tmp_path, monkeypatch):
    import torch

    for name, sub in (("RUNS_CKPT", "ck"), ("RUNS_DIR", "runs")):
        monkeypatch.setattr(prereg, name, tmp_path / sub)
    monkeypatch.setattr(prereg, "_CALIBRATION_KINDS", {
        "calibration": dataclasses.replace(prereg.REG1, calibration_dir=tmp_path / "rec", calibration_ckpt=tmp_path / "cal"),
        "calibration2": dataclasses.replace(prereg.REG2, calibration_dir=tmp_path / "rec2",
                                            calibration_ckpt=tmp_path / "cal2")})

    def ckpt(d, step):
        d.mkdir(parents=True, exist_ok=True)
        torch.save({"step": step}, d / "checkpoint.pt")
        (d / "config.json").write_text("{}")

    (tmp_path / "rec").mkdir()
    (tmp_path / "rec" / "calibration.json").write_text(json.dumps({"candidates": [{"adam_eps": 1e-07}]}))
    ckpt(tmp_path / "cal" / "eps-1e-07", 750)  # decided: not saved
    ckpt(tmp_path / "cal" / "eps-1e-06", 500)
    ckpt(tmp_path / "ck" / "S-add-p97-s1001", 4000)
    ckpt(tmp_path / "ck" / "D-add-p97-s1005", 9000)  # finished: not saved
    (tmp_path / "runs" / "D-add-p97-s1005").mkdir(parents=True)
    (tmp_path / "runs" / "D-add-p97-s1005" / "summary.json").write_text("{}")
    resume = tmp_path / "resume"
    ckpt(tmp_path / "cal2" / "eps-0.0015", 1250)  # the second registration's candidate, undecided
    saved = prereg.save_checkpoints(resume)
    assert sorted(p.relative_to(resume).as_posix() for p in saved) == [
        "calibration/eps-1e-06", "calibration2/eps-0.0015", "runs/S-add-p97-s1001"]
    # a fresh machine: nothing under runs/ -> restored; a local checkpoint that is further along is kept
    shutil.rmtree(tmp_path / "cal")
    ckpt(tmp_path / "ck" / "S-add-p97-s1001", 4500)
    shutil.rmtree(tmp_path / "cal2")
    restored = prereg.restore_checkpoints(resume)
    assert restored == [tmp_path / "cal" / "eps-1e-06", tmp_path / "cal2" / "eps-0.0015"]
    assert torch.load(tmp_path / "ck" / "S-add-p97-s1001" / "checkpoint.pt")["step"] == 4500
    # once the run has finished, its stale copy goes
    (tmp_path / "runs" / "S-add-p97-s1001").mkdir()
    (tmp_path / "runs" / "S-add-p97-s1001" / "summary.json").write_text("{}")
    prereg.save_checkpoints(resume)
    assert not (resume / "runs" / "S-add-p97-s1001").exists() and (resume / "calibration" / "eps-1e-06").exists()


def test_section_states_the_calibration_and_whether_the_chosen_eps_trained(tmp_path):
    cal = tmp_path / "cal"
    cal.mkdir()
    (cal / "calibration.json").write_text(json.dumps({"seed": 1000, "chosen": 0.01, "candidates": [
        {"adam_eps": 1e-3, "passed": False, "first_spike": 1100}, {"adam_eps": 0.01, "passed": True, "first_spike": None}]}))
    (cal / "eps-0.01.csv").write_text("step,train_loss,train_loss_max,train_acc\n3000,4.565,4.565,0.0135\n")
    text = "\n".join(prereg.prereg_section(tmp_path / "runs", cal, GRID))
    assert "ε 0.001: first spike at step 1100; ε 0.01: no spike in steps 100–3,000. Calibrated ε = 0.01." in text
    assert "train accuracy 0.013 and train loss 4.565 by step 3,000 — it did not memorise" in text
    (cal / "eps-0.01.csv").write_text("step,train_loss,train_loss_max,train_acc\n3000,0.001,0.001,1.0\n")
    assert "did not memorise" not in "\n".join(prereg.prereg_section(tmp_path / "runs", cal, GRID))
    assert "pending (0 of 8 S runs finished)" in text and "pending (0 of 16 runs finished)" in text


# --- the second registration (docs/study/PREREG2.md) -------------------------------------------------------------
PREREG2_MD = ROOT / "docs" / "study" / "PREREG2.md"
GRID2 = ROOT / "docs" / "study" / "prereg2_grid.toml"


def test_second_registration_constants_are_prereg2s():
    text = PREREG2_MD.read_text()
    r = prereg.REG2
    assert "ε = 1.5e-3, 2e-3, 3e-3, 5e-3" in text and r.ladder == (1.5e-3, 2e-3, 3e-3, 5e-3) == prereg.LADDER2
    assert "**1020**" in text and r.seed == 1020 and r.task == "add"
    assert "[100, 4,000]" in text and r.spike_free == (100, 4000)
    assert "train accuracy ≥ 0.99 at some logged step ≤ 2,000" in text and r.memorised_by == 2000
    assert DetectorConfig().memorised_acc == 0.99
    assert "at most 2 spikes" in text and "k ≥ 0.75 n" in text and "k ≤ 0.25 n" in text and "n < 4" in text
    assert r.s_arm == "S2" and r.planned_s == 8 and r.doc == "docs/study/PREREG2.md"
    assert "docs/study/prereg/calibration2/" in text and r.calibration_dir.as_posix() == "docs/study/prereg/calibration2"
    # the first registration's object carries PREREG.md's constants unchanged
    r1 = prereg.REG1
    assert (r1.seed, r1.ladder, r1.spike_free, r1.memorised_by, r1.s_arm) == (1000, prereg.LADDER, (100, 3000), None, "S")


def test_second_grid_is_the_preregistered_runs():
    text = GRID2.read_text()
    filled = text.replace(prereg.PLACEHOLDER2, "adam_eps = 2e-3 }") if prereg.PLACEHOLDER2 in text else text
    specs = load_grid(filled)
    assert [prereg.arm(s.name) for s in specs] == ["S2"] * 8
    assert sorted((s.seed, s.config["task"]) for s in specs) == sorted(
        (seed, t) for seed in (1011, 1012, 1013, 1014) for t in ("add", "mul"))
    first = load_grid(GRID.read_text().replace(prereg.PLACEHOLDER, "adam_eps = 1e-4 }"))
    used = {s.seed for s in specs} | {s.seed for s in first}
    assert prereg.REG2.seed not in used and prereg.REG1.seed not in used and not {s.seed for s in specs} & {
        s.seed for s in first}
    defaults = lambda t: t[t.index("[defaults]"):t.index("[[group]]")]  # noqa: E731
    assert defaults(GRID2.read_text()) == defaults(GRID.read_text())  # the same regime and detector
    for s in specs:
        c = s.config
        assert (c["p"], c["lr"], c["weight_decay"], c["train_frac"], c["max_steps"]) == (97, 1e-3, 1.0, 0.3, 20000)
    if prereg.PLACEHOLDER2 in text:
        with pytest.raises(ValueError, match="--adam-eps"):
            load_grid(text)


def rows_with_acc(last, memorised_at=None, spikes=(), every=25):
    return [{"step": s, "train_loss_max": 1.0 if s in spikes else 1e-4,
             "train_acc": 1.0 if memorised_at is not None and s >= memorised_at else 0.3}
            for s in range(0, last + 1, every)]


def test_second_calibration_outcome_asks_for_memorisation():
    det, r = DetectorConfig(), prereg.REG2
    out = lambda rows: prereg.calibration_outcome(rows, det, r)  # noqa: E731
    assert out(rows_with_acc(3975, memorised_at=600)) is None  # memorised, window not over yet
    assert out(rows_with_acc(4000, memorised_at=600)) == {"passed": True, "first_spike": None, "memorised": 600}
    assert out(rows_with_acc(1975)) is None  # not memorised yet, but step 2,000 not reached
    assert out(rows_with_acc(2000)) == {"passed": False, "first_spike": None, "memorised": None}
    assert out(rows_with_acc(4000, memorised_at=2000))["memorised"] == 2000  # inclusive
    assert out(rows_with_acc(4000, memorised_at=2025)) == {"passed": False, "first_spike": None, "memorised": None}
    assert out(rows_with_acc(3900, memorised_at=600, spikes=(3900,))) == {"passed": False, "first_spike": 3900,
                                                                          "memorised": 600}
    assert out(rows_with_acc(4100, memorised_at=600, spikes=(4050,)))["passed"]  # after the window
    # the first registration's rule never asks for memorisation
    assert prereg.calibration_outcome(rows_with_acc(3000), det) == {"passed": True, "first_spike": None}


def test_second_calibration_stops_the_ladder_at_a_run_that_does_not_memorise(tmp_path):
    """End to end on a tiny model: eps 10 barely moves the weights, so the first candidate fails by not memorising
    and the ladder ends there (the second candidate is never trained); the grid keeps its placeholders."""
    reg = dataclasses.replace(prereg.REG2, spike_free=(100, 300), memorised_by=200)
    grid = tmp_path / "grid2.toml"
    grid.write_text(_uncalibrated_grid2())
    chosen = prereg.calibrate(grid, tmp_path / "rec", tmp_path / "ck", ladder=(10.0, 20.0), chunk=100,
                              log=lambda s: None, overrides=TINY, reg=reg)
    record = json.loads((tmp_path / "rec" / "calibration.json").read_text())
    assert chosen is None and record["chosen"] is None and record["memorised_by"] == 200
    assert [c["adam_eps"] for c in record["candidates"]] == [10.0]
    assert record["candidates"][0] == {"adam_eps": 10.0, "steps_run": 200, "passed": False, "first_spike": None,
                                       "memorised": None}
    assert not (tmp_path / "ck" / "eps-20").exists()
    assert grid.read_text() == _uncalibrated_grid2()  # no ε chosen: the placeholders stay
    h1 = prereg.h1_verdict([], 8, s_arm=False, reg=prereg.REG2)
    assert h1.verdict == "not testable (no ε on the ladder both memorises and suppresses the spikes)"


def _uncalibrated_grid2() -> str:
    """prereg2_grid.toml as committed before its calibration (the placeholders back in)."""
    return re.sub(r"adam_eps = [0-9.e+-]+ \}  # calibrated \(PREREG2 §2; docs/study/prereg/calibration2/\)",
                  prereg.PLACEHOLDER2, GRID2.read_text())


def test_second_calibration_fills_only_its_own_arm(tmp_path):
    grid = tmp_path / "grid2.toml"
    grid.write_text(_uncalibrated_grid2())
    assert grid.read_text().count(prereg.PLACEHOLDER2) == 8
    prereg.write_calibrated(grid, 2e-3, prereg.REG2)
    text = grid.read_text()
    assert prereg.PLACEHOLDER2 not in text and text.count("# calibrated (PREREG2 §2; docs/study/prereg/calibration2/)") == 8
    assert {s.config["adam_eps"] for s in load_grid(text)} == {2e-3}
    with pytest.raises(ValueError, match="placeholder|line left"):
        prereg.write_calibrated(grid, 2e-3, prereg.REG2)


def test_second_h1_counts_only_s2_runs():
    s2 = [fact(f"S2-add-p97-s{1011 + i}", 5000, alarm_off=3000) for i in range(8)]
    s1 = [fact(f"S-add-p97-s{1001 + i}", None) for i in range(8)]
    v = prereg.h1_verdict(s1 + s2, 8, reg=prereg.REG2)
    assert v.verdict == "the re-rise survives without spikes" and v.numbers["k"] == 8 and v.numbers["s_runs"] == 8
    assert "(second registration, S2 runs)" in v.claim and "PREREG2.md §4" in v.rule
    assert prereg.h1_verdict(s1 + s2[:5], 8, reg=prereg.REG2).verdict == "pending (5 of 8 S2 runs finished)"
    assert prereg.h1_verdict(s1 + s2, 8).numbers["no_grok"] == [f["name"] for f in s1]  # REG1 reads the S runs


def test_second_section_is_pending_then_states_the_calibration(tmp_path):
    text = "\n".join(prereg.prereg2_section(tmp_path / "runs", tmp_path / "cal2", GRID2))
    assert "Calibration (PREREG2 §2): not run yet." in text and "pending (0 of 8 S2 runs finished)" in text
    cal = tmp_path / "cal2"
    cal.mkdir()
    (cal / "calibration.json").write_text(json.dumps({"seed": 1020, "chosen": 0.002, "candidates": [
        {"adam_eps": 1.5e-3, "passed": False, "first_spike": 1300, "memorised": 450},
        {"adam_eps": 2e-3, "passed": True, "first_spike": None, "memorised": 700}]}))
    text = "\n".join(prereg.prereg2_section(tmp_path / "runs", cal, GRID2))
    assert ("ε 0.0015: failed (spike at step 1,300); ε 0.002: passed (no spike in steps 100-4,000, memorised at "
            "step 700). Calibrated ε = 0.002.") in text


def test_the_runner_interleaves_the_two_registrations():
    assert prereg._interleaved([1, 2, 3], ["a", "b"]) == [1, "a", 2, "b", 3]
    assert prereg._interleaved([], ["a"]) == ["a"]


def test_one_runner_at_a_time_and_stop(tmp_path):
    """`run` holds a pid file and refuses to start beside a live runner (two would train the same runs from the
    same checkpoints); `stop` sends the runner SIGINT and waits for it to exit; a stale pid file is ignored."""
    import os
    import subprocess
    import sys
    import time

    pid_file = tmp_path / "prereg.pid"
    with prereg._single_runner(pid_file):
        assert pid_file.read_text().split() == [str(os.getpid())]
    assert not pid_file.exists()
    pid_file.write_text(f"{os.getppid()}\n")  # a live process that is not this one
    with pytest.raises(SystemExit, match="already training"):
        with prereg._single_runner(pid_file):
            pass
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    pid_file.write_text(f"{dead.pid}\n")  # stale: that process has exited
    with prereg._single_runner(pid_file):
        pass
    logs = []
    assert prereg.stop(pid_file, log=logs.append) is False and "no runner" in logs[-1]
    code = ("import sys, time; from fastcka.grok.study import prereg\n"
            "with prereg._single_runner(sys.argv[1]):\n    [time.sleep(0.1) for _ in range(600)]")
    proc = subprocess.Popen([sys.executable, "-c", code, str(pid_file)])
    t0 = time.time()
    while prereg._runner_pid(pid_file) != proc.pid and time.time() - t0 < 30:
        time.sleep(0.05)
    assert prereg.stop(pid_file, timeout_s=30, log=logs.append) is True
    assert proc.wait(timeout=5) != 0 and "stopped" in logs[-1]


def test_run_all_interleaves_both_grids_and_drops_an_arm_without_an_eps(tmp_path, monkeypatch):
    """`run` trains the first registration's runs (without its S arm when its calibration passed no ε) and the
    second's, one of each in turn; the calibrations, read back from their records, train nothing."""
    import fastcka.grok.study.grid as grid_mod

    rec1, rec2 = tmp_path / "cal1", tmp_path / "cal2"
    for rec, chosen, eps in ((rec1, None, 1e-7), (rec2, 0.003, 0.003)):
        rec.mkdir()
        cands = [{"adam_eps": eps, "passed": chosen is not None, "first_spike": None if chosen else 500}]
        (rec / "calibration.json").write_text(json.dumps({"candidates": cands, "chosen": chosen}))
    g1, g2 = tmp_path / "g1.toml", tmp_path / "g2.toml"
    g1.write_text(re.sub(r"adam_eps = [0-9.e+-]+ \}  # calibrated \(PREREG §2; docs/study/prereg/calibration/\)",
                         prereg.PLACEHOLDER, GRID.read_text()))
    g2.write_text(GRID2.read_text().replace(prereg.PLACEHOLDER2, "adam_eps = 0.003 }"))
    r1 = dataclasses.replace(prereg.REG1, grid=g1, calibration_dir=rec1, ladder=(1e-7,))
    r2 = dataclasses.replace(prereg.REG2, grid=g2, calibration_dir=rec2, ladder=(0.003,))
    monkeypatch.setattr(prereg, "REGISTRATIONS", (r1, r2))
    monkeypatch.setattr(prereg, "restore_checkpoints", lambda: [])
    monkeypatch.setattr("fastcka.grok.train.train", lambda *a, **k: pytest.fail("trained a calibration candidate"))
    seen = {}
    monkeypatch.setattr(grid_mod, "run_grid", lambda specs, *a, **k: seen.update(names=[s.name for s in specs], **k))
    prereg.run_all(log=lambda s: None, jobs=2)
    names = seen["names"]
    assert seen["jobs"] == 2
    assert not any(prereg.arm(n) == "S" for n in names)  # the first registration passed no ε: no S arm
    assert sum(prereg.arm(n) == "S2" for n in names) == 8 and sum(prereg.arm(n) in "DN" for n in names) == 8
    assert [prereg.arm(n) == "S2" for n in names[:16]] == [False, True] * 8  # one of each in turn

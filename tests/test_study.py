"""fastcka study: the aggregation on synthetic run directories with known answers, the grid file, and resume."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastcka.grok import study
from fastcka.grok.detect import DetectorConfig, detect
from fastcka.grok.train import COLUMNS

DET = {"halflife": 50.0, "memorised_acc": 0.99, "min_drop": 0.05, "rise": 0.05, "persist": 100, "spike_guard": "hold",
       "spike_ratio": 10.0, "spike_min_loss": 0.05, "spike_window": 200}


def o01_curve(step, rise_at):
    """0.8 until 200, down to 0.5 at 600, flat, then (if rise_at) up to 0.7 over 200 steps from rise_at."""
    if step <= 200:
        return 0.8
    if step <= 600:
        return 0.8 - 0.3 * (step - 200) / 400
    if rise_at is None or step <= rise_at:
        return 0.5
    return 0.5 + 0.2 * min(1.0, (step - rise_at) / 200)


def make_run(root, name, role, grok, rise_at, steps=3000, seed=0, test_creep=None, o01=None, relapse_at=None,
             **config):
    """A synthetic finished run (fast regime unless ``config`` says otherwise); ``o01(step)`` overrides the curve;
    from ``relapse_at`` on, test accuracy falls back to 0.5."""
    rows = []
    for step in range(0, steps + 1, 25):
        test = 1.0 if grok is not None and step >= grok else (0.2 if test_creep and step >= test_creep else 0.01)
        test = 0.5 if relapse_at is not None and step >= relapse_at else test
        rows.append({"step": step, "train_loss": 0.01, "train_loss_max": 0.01, "train_acc": 1.0 if step >= 200 else 0.5,
                     "test_loss": 4.0, "test_acc": test, "o01": o01(step) if o01 else o01_curve(step, rise_at),
                     "fourier": 0.2, "weight_norm": 50.0, "spec_entropy": 3.0})
    d = Path(root) / name
    d.mkdir(parents=True)
    with open(d / "log.csv", "w") as f:
        f.write(",".join(COLUMNS) + "\n")
        for r in rows:
            f.write(",".join(str(r[c]) for c in COLUMNS) + "\n")
    cfg = {"task": "add", "p": 59, "seed": seed, "grok_acc": 0.95, "detector": DET, "lr": 3e-3, "train_frac": 0.4,
           "weight_decay": 1.0, "layer_norm": False, "force_cka": 0.0, "max_steps": steps, "stop_after_grok": -1,
           "every": 25, "n_bits": 10, "k": 3, **config}
    summary = {"config": cfg, "wall_s": 60.0, "study": {"run": name, "group": name.rsplit("-s", 1)[0], "role": role,
                                                         "seed": seed, "wall_s_total": 60.0}}
    (d / "summary.json").write_text(json.dumps(summary))
    (d / "config.json").write_text(json.dumps(cfg))
    return rows


def expected_alarm(rows):
    return detect([r["step"] for r in rows], [r["o01"] for r in rows], [r["train_acc"] for r in rows],
                  [r["train_loss_max"] for r in rows], DetectorConfig(**DET)).alarm_step


@pytest.fixture
def synthetic(tmp_path):
    runs = tmp_path / "runs"
    r0 = make_run(runs, "g-s0", "grok", grok=2000, rise_at=1000, seed=0)
    r1 = make_run(runs, "g-s1", "grok", grok=2500, rise_at=1500, seed=1, test_creep=1200)
    make_run(runs, "g-s2", "grok", grok=1000, rise_at=1500, seed=2)  # the alarm comes after the jump
    make_run(runs, "c-s0", "control", grok=None, rise_at=None)  # flat: no alarm
    make_run(runs, "c-s1", "control", grok=None, rise_at=2000, seed=1)  # re-rises but never groks: a false alarm
    return runs, expected_alarm(r0), expected_alarm(r1)


def test_wilson_and_quantiles_known_values():
    lo, hi = study.wilson(0, 5)
    assert lo == 0.0 and hi == pytest.approx(0.4345, abs=1e-3)
    lo, hi = study.wilson(16, 16)
    assert lo == pytest.approx(0.8064, abs=1e-3) and hi == 1.0
    assert all(math.isnan(v) for v in study.wilson(0, 0))
    assert study.quantile([1, 2, 3, 4], 0.5) == 2.5
    assert study.quantile([1, 2, 3, 4, 5], 0.25) == 2
    lo, hi = study.bootstrap_median_ci([10, 20, 30, 40, 50])
    assert 10 <= lo <= 30 <= hi <= 50
    assert study.bootstrap_median_ci([10, 20, 30]) == study.bootstrap_median_ci([10, 20, 30])  # seeded


def test_aggregation_known_answers(synthetic):
    runs_dir, a0, a1 = synthetic
    assert 1000 < a0 <= 1300 and 1500 < a1 <= 1800  # the detector's alarm on the synthetic curves
    facts = {f["name"]: f for f in (study.analyse_run(r) for r in study.load_runs(runs_dir))}
    assert facts["g-s0"]["grok"] == 2000 and facts["g-s0"]["alarms"]["o01"] == a0
    assert facts["g-s0"]["leads"]["o01"] == 2000 - a0
    assert facts["g-s2"]["leads"]["o01"] < 0
    assert facts["c-s0"]["alarms"]["o01"] is None and facts["c-s1"]["alarms"]["o01"] is not None
    # flat baselines never alarm; test acc crosses 10% only at the jump (s0) or at the creep (s1)
    assert all(facts[n]["alarms"][s] is None for n in facts for s in ("fourier", "weight_norm", "spec_entropy",
                                                                      "test_loss"))
    assert facts["g-s0"]["alarms"]["test_acc"] == 2000 and facts["g-s1"]["alarms"]["test_acc"] == 1200
    st = study.signal_stats(list(facts.values()), "o01")
    assert (st["n_grok"], st["hits"], st["late"], st["n_never"], st["false"]) == (3, 2, 1, 2, 1)
    assert st["hit_ci"] == study.wilson(2, 3) and st["false_ci"] == study.wilson(1, 2)
    assert st["lead_median"] == pytest.approx(((2000 - a0) + (2500 - a1)) / 2)
    assert st["frac_median"] == pytest.approx(((2000 - a0) / 2000 + (2500 - a1) / 2500) / 2)
    assert st["beats_test_acc"] == 1  # s0 alarms before test acc moves; s1's test acc crept to 20% at 1200 first
    ta = study.signal_stats(list(facts.values()), "test_acc")
    assert ta["hits"] == 1 and ta["late"] == 2  # at the jump itself in s0 and s2 (lead 0): not a warning


def test_report_from_run_directories(synthetic, tmp_path):
    runs_dir, a0, _ = synthetic
    doc = study.write_report(runs_dir, tmp_path / "docs" / "STUDY.md")
    text = doc.read_text()
    assert (tmp_path / "docs" / "study" / "runs.png").exists() and (tmp_path / "docs" / "study" / "leads.png").exists()
    assert "| g-s0 |" in text and "| c-s1 |" in text
    # fast-regime runs only: the pilot's claims stay untested, the fast regime is reported beside them
    assert ("**Ô01 re-rises before the jump in every grokking run and in no run that does not grok (pilot: 16/16 "
            "against 0/5).** not yet tested in the pilot's regime") in text
    assert "Fast regime (p 59, lr 3e-3; not the pilot's regime, no verdict): 2/3" in text
    assert "false alarms in 1/2 runs that did not grok (c-s1)" in text
    assert "**On k-sparse parity the signal blurs / Ô01 drops instead of rising.** not yet tested: no parity run" in text
    assert study.write_report(runs_dir, tmp_path / "docs" / "STUDY.md").read_text() == text  # regenerable


def test_load_grid_order_and_errors():
    specs = study.load_grid(study.QUICK_GRID)
    assert [s.name for s in specs] == ["quick-add-s0", "quick-add-s1", "quick-wd0-s0"]
    assert specs[2].config["weight_decay"] == 0.0 and specs[2].role == "control"
    with pytest.raises(ValueError, match="unknown config"):
        study.load_grid('[[group]]\nname = "x"\nconfig = { nope = 1 }\n')
    with pytest.raises(ValueError, match="appears twice"):
        study.load_grid('[[group]]\nname = "x"\nseeds = [0]\n[[group]]\nname = "x"\nseeds = [0]\n')
    with pytest.raises(ValueError, match="train-frac"):
        study.load_grid('[[group]]\nname = "x"\nconfig = { train_frac = 2.0 }\n')
    grid = Path(__file__).parents[1] / "docs" / "study" / "grid.toml"
    if grid.exists():
        specs = study.load_grid(grid.read_text())
        assert specs[0].name.startswith("fast-add-p59") and len({s.name for s in specs}) == len(specs)


def test_killed_grid_resumes(tmp_path):
    """Kill the quick grid (SIGKILL) once the first run has checkpointed; the rerun resumes that run from its
    checkpoint, runs the others, and the resumed log has every row once."""
    runs, ckpt = tmp_path / "runs", tmp_path / "ckpt"
    args = ["study", "--quick", "--quiet", "--no-report", "--runs-dir", str(runs), "--ckpt-dir", str(ckpt)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "fastcka", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ck = ckpt / "quick-add-s0" / "checkpoint.pt"
    t0 = time.time()
    while not ck.exists() and time.time() - t0 < 120 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ck.exists()
    assert not (runs / "quick-add-s0" / "summary.json").exists()
    from fastcka.cli import main

    assert main(args) == 0
    for name in ("quick-add-s0", "quick-add-s1", "quick-wd0-s0"):
        assert (runs / name / "summary.json").exists() and (runs / name / "log.csv").exists()
    s0 = json.loads((runs / "quick-add-s0" / "summary.json").read_text())
    assert s0["study"]["resumed"] and s0["steps"] == 300
    steps = [int(line.split(",")[0]) for line in (runs / "quick-add-s0" / "log.csv").read_text().splitlines()[1:]]
    assert steps == list(range(0, 301, 10))
    # a third invocation finds everything done and trains nothing
    mtime = (runs / "quick-add-s0" / "summary.json").stat().st_mtime
    assert main(args) == 0
    assert (runs / "quick-add-s0" / "summary.json").stat().st_mtime == mtime


def test_parallel_grid_skips_finished(tmp_path):
    """--jobs 2: two worker processes, every run's small outputs land in runs_dir, a finished run is not retrained."""
    grid = ('[defaults]\np = 7\ntrain_frac = 0.5\nd_model = 16\nn_heads = 2\nd_mlp = 32\nevery = 10\nmax_steps = 20\n'
            'device = "cpu"\n[[group]]\nname = "t"\nseeds = [0, 1, 2]\n')
    specs = study.load_grid(grid)
    res = study.run_grid(specs, tmp_path / "runs", tmp_path / "ckpt", jobs=2, progress=False)
    assert sorted(r["name"] for r in res) == ["t-s0", "t-s1", "t-s2"] and not any(r["interrupted"] for r in res)
    for s in specs:
        d = tmp_path / "runs" / s.name
        assert {p.name for p in d.iterdir()} == {"config.json", "log.csv", "summary.json"}
        assert json.loads((d / "summary.json").read_text())["study"]["group"] == "t"
        assert not (d / "checkpoint.pt").exists() and (tmp_path / "ckpt" / s.name / "checkpoint.pt").exists()
    assert study.run_grid(specs, tmp_path / "runs", tmp_path / "ckpt", jobs=2, progress=False) == []


PILOT_CFG = {"p": 97, "lr": 1e-3}


def _verdict(text, claim):
    line = next(l for l in text.splitlines() if l.startswith(f"- **{claim}"))
    return line.split("**", 2)[2].strip()


def _report(tmp_path, runs):
    return study.write_report(runs, tmp_path / "docs" / "STUDY.md").read_text()


def test_pilot_regime_verdicts_partly_and_false_alarm(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "pa-s0", "grok", grok=2000, rise_at=700, **PILOT_CFG)
    make_run(runs, "pa-s1", "grok", grok=2500, rise_at=1500, seed=1, **PILOT_CFG)
    make_run(runs, "pa-s2", "grok", grok=1000, rise_at=1500, seed=2, **PILOT_CFG)  # alarm after the jump
    make_run(runs, "pc-s0", "control", grok=None, rise_at=2000, **PILOT_CFG)  # false alarm
    make_run(runs, "pc-s1", "control", grok=1500, rise_at=None, seed=1, **PILOT_CFG)  # a control that grokked
    make_run(runs, "fast-s0", "grok", grok=2000, rise_at=1000)  # fast regime: must not enter the pilot's counts
    text = _report(tmp_path, runs)
    v1 = _verdict(text, "Ô01 re-rises")
    # one discriminating claim: a false alarm in a control that ran past the slowest grok refutes it at any count
    assert v1.startswith("not: the alarm fired before the grok step in 2/4 pilot-regime grokking runs"), v1
    assert "and in 1/1 pilot-regime runs that did not grok (Wilson 95% [21%, 100%]): pc-s0" in v1
    assert "no verdict): 1/1" in v1 and "provisional" not in v1.split(" Rule:")[0]
    assert "| Ô01 re-rises before the jump in every grokking run and in no run that does not grok (pilot: 16/16 " \
           "against 0/5) | not; 2/4 grokking runs vs 1/1 that did not grok alarmed" in text
    v6 = _verdict(text, "Runs with no re-rise")
    # 3 of the 5 tested runs contradict the implication: more than half, so "not"
    assert v6.startswith("not") and "3/4 pilot-regime grokking runs had no rise by step 1,000 (pa-s1, pa-s2, pc-s1)" in v6
    assert "0/1 that did not grok had one by step 1,000" in v6  # pc-s0 rises from 2000
    short = next(line for line in text.splitlines() if line.startswith("In short"))
    assert "before the jump in 2/4 grokking runs" in short and "It also fired in 1/1 runs that did not grok" in short
    # two grokking runs had no alarm before their jump, so no timing separation is claimed
    assert "did not tell the runs that would grok" in short and "Its timing did here" not in short, short


def test_lead_verdicts_reproduced_and_not(tmp_path):
    runs = tmp_path / "runs"
    for s in range(2):  # addition: the rise ~3,300 steps before the jump
        make_run(runs, f"pa-s{s}", "grok", grok=4600, rise_at=1000, steps=6000, seed=s, **PILOT_CFG)
    for s in range(2):  # multiplication: the rise a few hundred steps before the jump
        make_run(runs, f"pm-s{s}", "grok", grok=1800, rise_at=1000, seed=s, task="mul", **PILOT_CFG)
    text = _report(tmp_path, runs)
    facts = [study.analyse_run(r) for r in study.load_runs(runs)]
    add_leads = sorted(f["leads"]["o01"] for f in facts if f["task"] == "add")
    assert abs(add_leads[0] - 3297) <= 922  # the construction is what the test says it is
    lead = _verdict(text, "The lead is")
    assert lead.startswith("reproduced: median lead") and "in 2/2 pilot-regime addition runs" in lead
    assert "provisional: 2 pilot-regime addition runs, fewer than the pilot's 10" in lead
    mul = _verdict(text, "Multiplication")
    assert mul.startswith("not: median lead") and "within 2 SD (3,083 ± 372)" in mul


def test_parity_and_forcing_verdicts(tmp_path):
    runs = tmp_path / "runs"
    for s in range(3):  # parity: Ô01 drops and stays down, then the run groks
        make_run(runs, f"par-s{s}", "parity", grok=2500, rise_at=None, seed=s, task="parity", p=2, lr=1e-3)
    held = lambda step: 0.95  # forcing held Ô01 near 1
    make_run(runs, "f1-s0", "forcing", grok=2500, rise_at=None, o01=held, force_cka=1.0)
    make_run(runs, "f1-s1", "forcing", grok=None, rise_at=None, o01=held, seed=1, force_cka=1.0)
    make_run(runs, "f1-s2", "forcing", grok=2800, rise_at=None, o01=held, seed=2, force_cka=1.0)
    text = _report(tmp_path, runs)
    par = _verdict(text, "On k-sparse parity")
    assert par.startswith("reproduced: Ô01 dropped by ≥ 0.05 after memorisation in 3/3") and "3/3 grokked" in par
    force = _verdict(text, "Forcing")
    assert force.startswith("reproduced: 2/3 runs in which forcing held Ô01 ≥ 0.9 still grokked"), force
    assert "λ = 1: 2/3 grokked within 3,000 steps" in force


def test_forcing_that_did_not_hold_is_inconclusive_and_parity_without_grok_is_untested(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "f-s0", "forcing", grok=2500, rise_at=None, force_cka=0.1)  # Ô01 sits at 0.5: not forced
    make_run(runs, "par-s0", "parity", grok=None, rise_at=1500, task="parity", p=2, lr=1e-3)
    text = _report(tmp_path, runs)
    assert _verdict(text, "Forcing").startswith("inconclusive")
    assert _verdict(text, "On k-sparse parity").startswith("not tested: none of the 1 parity runs generalised")


def test_test_acc_baseline_is_relative_to_memorisation(tmp_path):
    runs = tmp_path / "runs"
    rows = make_run(runs, "g-s0", "grok", grok=2000, rise_at=1000, test_creep=100)  # test acc 0.2 from step 100 on
    f = study.analyse_run(study.load_runs(runs)[0])
    # at memorisation (200) test acc is already 0.2: an absolute 10% threshold would fire there; +0.10 waits for 2000
    assert f["memorised"] == 200 and f["alarms"]["test_acc"] == 2000
    assert study.test_acc_alarm(rows, 0.99, gain=0.05) == 2000


def test_setup_states_the_grids_hyperparameters_and_survives_a_grok_at_step_0(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "g-s0", "grok", grok=0, rise_at=None, d_model=32)
    text = _report(tmp_path, runs)
    assert "d_model 32" in text and "d_model 128" not in text


@pytest.mark.parametrize("to_group, ignored", [(True, False), (False, False), (False, True)],
                         ids=["ctrl-c", "kill-main", "kill-main-started-in-background"])
def test_ctrl_c_stops_a_parallel_grid(tmp_path, to_group, ignored):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) during `--jobs 2`, or `kill -INT` to the
    main process alone (a grid in the background; `nohup ... &` from a script starts it with SIGINT ignored): the
    running runs checkpoint, the queued run never starts, and the command exits with the interrupted code."""
    from fastcka.cli import EXIT_INTERRUPTED

    runs, ckpt = tmp_path / "runs", tmp_path / "ckpt"
    args = ["study", "--quick", "--quiet", "--no-report", "--jobs", "2", "--runs-dir", str(runs), "--ckpt-dir", str(ckpt)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignored else None
    proc = subprocess.Popen([sys.executable, "-m", "fastcka", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, preexec_fn=ignore)
    ck = ckpt / "quick-add-s0" / "checkpoint.pt"
    t0 = time.time()
    while not ck.exists() and time.time() - t0 < 180 and proc.poll() is None:
        time.sleep(0.05)
    if to_group:
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGINT)
    try:
        rc = proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert rc == EXIT_INTERRUPTED
    assert ck.exists() and not (runs / "quick-add-s0" / "summary.json").exists()
    assert not (ckpt / "quick-wd0-s0").exists()  # queued behind the two running runs: never started
    assert not (ckpt / study.STOP).exists()  # the stop marker is cleared for the next invocation


def test_sensitivity_table_matches_the_detector_at_the_default_setting(synthetic):
    runs_dir, _, _ = synthetic
    runs = study.load_runs(runs_dir)
    facts = [study.analyse_run(r) for r in runs]
    st = study.signal_stats(facts, "o01")
    row = next(l for l in study.sensitivity_table(runs, facts) if l.startswith("| fast | 0.05 | 100 |"))
    assert f"| {st['hits']}/{st['n_grok']} | {st['false']}/{st['n_never']} | {st['lead_median']:.0f} |" in row
    # a larger rise or a longer persistence can only remove alarms (hits + false alarms never grow)
    count = {}
    for line in study.sensitivity_table(runs, facts)[2:]:
        _, _, rise, persist, hit, false, _, _ = [c.strip() for c in line.split("|")]
        count[float(rise), int(persist)] = int(hit.split("/")[0]) + int(false.split("/")[0])
    for (rise, persist), n in count.items():
        for (r2, p2), n2 in count.items():
            if r2 >= rise and p2 >= persist:
                assert n2 <= n


def test_rise_by_1000_verdicts_when_only_one_kind_of_run_is_tested(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "pa-s0", "grok", grok=2500, rise_at=700, **PILOT_CFG)  # rises by 1,000 and groks: consistent
    text = _report(tmp_path, runs)
    assert _verdict(text, "Runs with no re-rise").startswith("no counterexample yet, half tested (no pilot-regime run "
                                                             "failed to grok)")
    make_run(runs, "pc-s0", "control", grok=None, rise_at=700, **PILOT_CFG)  # rises by 1,000, never groks
    assert _verdict(_report(tmp_path, runs), "Runs with no re-rise").startswith("partly")
    runs2 = tmp_path / "runs2"
    make_run(runs2, "pc-s0", "control", grok=None, rise_at=700, **PILOT_CFG)
    assert _verdict(_report(tmp_path, runs2), "Runs with no re-rise").startswith("not (no pilot-regime run grokked)")


def test_parity_that_re_rises_is_not_reproduced_and_weak_forcing_is_not(tmp_path):
    runs = tmp_path / "runs"
    for s in range(2):
        make_run(runs, f"par-s{s}", "parity", grok=2500, rise_at=1000, seed=s, task="parity", p=2, lr=1e-3)
    held = lambda step: 0.95  # noqa: E731
    for s in range(3):
        make_run(runs, f"f-s{s}", "forcing", grok=2500 if s == 0 else None, rise_at=None, o01=held, seed=s,
                 force_cka=1.0)
    text = _report(tmp_path, runs)
    assert _verdict(text, "On k-sparse parity").startswith("not: Ô01 dropped")
    assert _verdict(text, "Forcing").startswith("partly: 1/3 runs in which forcing held Ô01 ≥ 0.9 still grokked")


def test_regime_comes_from_the_config():
    base = {"task": "add", "p": 97, "lr": 1e-3, "force_cka": 0.0, "layer_norm": False}
    assert study.regime(base) == "pilot" and study.regime({**base, "task": "mul"}) == "pilot"
    assert study.regime({**base, "task": "sub"}) == "other"  # the pilot ran addition and multiplication only
    assert study.regime({**base, "p": 59, "lr": 3e-3}) == "fast"
    assert study.regime({**base, "layer_norm": True}) == "layernorm"
    assert study.regime({**base, "force_cka": 1.0}) == "forcing"
    assert study.regime({**base, "task": "parity"}) == "parity"


def test_report_says_where_a_recorded_alarm_differs_from_the_recomputed_one(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "g-s0", "grok", grok=2000, rise_at=1000)
    summary = json.loads((runs / "g-s0" / "summary.json").read_text())
    summary["alarm_step"] = 123  # as if an older rule had raised it during training
    (runs / "g-s0" / "summary.json").write_text(json.dumps(summary))
    text = _report(tmp_path, runs)
    assert "g-s0 123 → " in text and "(an unversioned rule" in text


def test_parity_that_generalises_at_memorisation_cannot_test_the_claim(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "par-s0", "parity", grok=200, rise_at=None, task="parity", p=2, lr=1e-3)  # memorised at 200 too
    verdict = _verdict(_report(tmp_path, runs), "On k-sparse parity")
    assert verdict.startswith("not tested: 1/1 parity runs generalised by the step they memorised or within the "
                              "detector's persistence after it (par-s0 memorised at 200, generalised at 200)"), verdict


def test_layernorm_line_counts_alarms_per_guard_and_the_frozen_share(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "ln-s0", "arch", grok=2000, rise_at=1000, layer_norm=True)
    make_run(runs, "ln-s1", "arch", grok=None, rise_at=None, seed=1, layer_norm=True, lr=1e-3)
    text = _report(tmp_path, runs)
    line = _verdict(text, "Architecture: pre-LN blocks")
    # no spikes in the synthetic logs: nothing frozen, and every guard sees the same rise as the detector
    assert "lr 0.003: 1/1 grokked (grok steps 2000), median 0.0 train-loss spikes per 1,000 steps" in line, line
    assert "froze a median 0% of the logged points" in line
    assert "guard hold 1/1, off 1/1, rebase 1/1" in line
    assert "lr 0.001: 0/1 grokked, median 0.0" in line and "guard hold 0/0" in line
    assert "| guard off, LayerNorm on | o01 | 1/2 " not in text and "| guard off, LayerNorm on | o01 | 1/1 " in text


def test_frozen_share_counts_the_hold_window_after_a_spike():
    from fastcka.grok.study.analysis import _frozen_fraction
    from fastcka.grok.detect import Detector
    det = DetectorConfig(**DET)
    rows = [{"step": s, "train_loss_max": 1.0 if s == 1000 else 0.01, "train_acc": 1.0 if s >= 200 else 0.5,
             "o01": 0.5} for s in range(0, 3001, 25)]
    d = Detector(det)
    for r in rows:
        d.update(r["step"], r["o01"], r["train_acc"], r["train_loss_max"])
    # memorised at 200: 113 points from there; the spike at 1000 freezes 1000 … 1000 + spike_window (9 points)
    assert _frozen_fraction(rows, d.result) == pytest.approx((det.spike_window // 25 + 1) / 113)
    assert _frozen_fraction(rows[:8], Detector(det).result) is None  # never memorised


def test_brief_table_and_prose_come_from_the_same_records(synthetic):
    """Issue 20: the table is rendered from the verdict records, never parsed back out of the prose."""
    from fastcka.grok.study.records import Verdict, render_line

    runs = study.load_runs(synthetic[0])
    facts = [study.analyse_run(r) for r in runs]
    records = study.verdicts.claim_verdicts(facts)
    assert all(isinstance(v, Verdict) for v in records)
    table = study.verdicts.brief_table(records)
    shown = [v for v in records if v.table]
    assert len(table) == 2 + len(shown) and not any("numbers only" in row for row in table)
    for v, row in zip(shown, table[2:]):
        assert row == f"| {v.claim.rstrip('.')} | {'; '.join((v.verdict, *v.caveats))} |"
        assert render_line(v).startswith(f"- **{v.claim}** {v.verdict}")
    # the numbers-only records (baselines, architecture) are in the prose, not the table
    assert {v.claim.split(" (")[0] for v in records if not v.table} == {"What the baselines detect",
                                                                       "Architecture: pre-LN blocks"}


def test_lead_outside_in_steps_is_not_even_inside_as_a_share_of_the_grok_step(tmp_path):
    runs = tmp_path / "runs"
    for s in range(2):  # the jump at 8,000 (twice the pilot's ~4,000) and the rise near 1,400: lead ~0.8 of the grok step
        make_run(runs, f"pa-s{s}", "grok", grok=8000, rise_at=1400, steps=9000, seed=s, **PILOT_CFG)
    lead = _verdict(_report(tmp_path, runs), "The lead is")
    # issue 20: the share of the grok step no longer rescues a lead outside the band in steps (any early alarm passes)
    assert lead.startswith("not: median lead"), lead
    assert "the jumps came at 8000–8000" in lead and "as a share of the grok step 0.80 (reported, not decisive" in lead


def test_watching_test_accuracy_must_be_beaten_both_ways(tmp_path):
    runs = tmp_path / "runs"
    for s in range(2):  # test accuracy creeps (0.01 → 0.2) at 1,000, before the Ô01 rise at 1,400: both watchers win
        make_run(runs, f"pa-s{s}", "grok", grok=2800, rise_at=1400, seed=s, test_creep=1000, **PILOT_CFG)
    v = _verdict(_report(tmp_path, runs), "Does the Ô01 alarm beat")
    assert v.startswith("pilot regime: no: pilot regime: the Ô01 alarm came"), v
    assert "before both in 0/2" in v
    runs2 = tmp_path / "runs2"
    for s in range(2):  # no creep: test accuracy moves only at the jump, long after the Ô01 alarm
        make_run(runs2, f"pa-s{s}", "grok", grok=2800, rise_at=1000, seed=s, **PILOT_CFG)
    v = _verdict(_report(tmp_path, runs2), "Does the Ô01 alarm beat")
    assert v.startswith("pilot regime: yes: ") and "before both in 2/2" in v, v


def test_parity_verdict_needs_both_guards_leaves_out_short_delays_and_reports_relapses(tmp_path):
    import copy

    from fastcka.grok.study.records import render_line

    runs = tmp_path / "runs"
    for s in range(2):  # Ô01 drops and stays down; the run groks at 2,500 and relapses at 2,700
        make_run(runs, f"par-s{s}", "parity", grok=2500, rise_at=None, seed=s, task="parity", p=2, lr=1e-3,
                 relapse_at=2700)
    make_run(runs, "par-s2", "parity", grok=275, rise_at=None, seed=2, task="parity", p=2, lr=1e-3)  # 75-step delay
    loaded = study.load_runs(runs)
    facts = [study.analyse_run(r) for r in loaded]
    assert [f["relapse"] for f in facts] == [2700, 2700, None]
    by_guard = {g: [study.analyse_run(r, g) for r in loaded] for g in study.verdicts.GUARDS}
    par = lambda bg: next(render_line(v) for v in study.verdicts.claim_verdicts(facts, bg)  # noqa: E731
                          if "k-sparse parity" in v.claim)
    v = par(by_guard).split("**", 2)[2].strip()
    assert v.startswith("reproduced: Ô01 dropped by ≥ 0.05 after memorisation in 2/2 parity runs"), v
    assert "with the spike guard off in 0/2" in v and "(par-s2: 75 steps)" in v
    assert "2/3 parity runs relapsed: test accuracy fell below 0.70 after their grok step (par-s0 at 2700" in v
    off = copy.deepcopy(by_guard)
    for f in off["off"]:  # as if, with the guard off, Ô01 had re-risen at 900 in every run
        f["alarms"]["o01"] = 900
    v = par(off).split("**", 2)[2].strip()
    assert v.startswith("partly: ") and "with the spike guard off in 2/2 (par-s0 at 900, par-s1 at 900)" in v, v


def test_rise_by_1000_reports_where_the_first_rises_fell(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "pa-s0", "grok", grok=2800, rise_at=1200, **PILOT_CFG)
    make_run(runs, "pa-s1", "grok", grok=2800, rise_at=1300, seed=1, **PILOT_CFG)
    make_run(runs, "pc-s0", "control", grok=None, rise_at=2000, **PILOT_CFG)
    facts = {f["name"]: f for f in (study.analyse_run(r) for r in study.load_runs(runs))}
    v = _verdict(_report(tmp_path, runs), "Runs with no re-rise")
    lo, hi, ctrl = facts["pa-s0"]["first_rise"], facts["pa-s1"]["first_rise"], facts["pc-s0"]["first_rise"]
    assert 1200 < lo < hi < 2000 < ctrl
    assert v.startswith("not: 2/2 pilot-regime grokking runs had no rise by step 1,000"), v
    assert f"First rises: steps {lo}–{hi} in 2/2 grokking runs, {ctrl}–{ctrl} in 1/1 runs that did not grok" in v
    assert f"a mark between steps {hi} and {ctrl} would have separated them" in v


def test_a_rise_set_at_a_spike_is_told_apart_from_a_gradual_one():
    from fastcka.grok.detect import Detector
    from fastcka.grok.study.analysis import _rise_made_at_spike

    det = DetectorConfig(**DET)

    def rows_of(o01, spike):
        return [{"step": s, "train_acc": 1.0 if s >= 200 else 0.5, "train_loss_max": 1.0 if s == spike else 0.001,
                 "o01": o01(s)} for s in range(0, 3001, 25)]

    def result(rows):
        d = Detector(det)
        for r in rows:
            d.update(r["step"], r["o01"], r["train_acc"], r["train_loss_max"])
        return d.result

    jump = rows_of(lambda s: 0.65 if s >= 1500 else o01_curve(s, None), spike=1500)  # the level jumps at the spike
    res = result(jump)
    assert res.spike_steps == [1500] and res.rise_onset_step == 1725  # the average catches up after the window
    assert _rise_made_at_spike(jump, res, det, 25) is True
    slow = rows_of(lambda s: o01_curve(s, 2000), spike=1500)  # a spike, then a gradual rise 500 steps later
    res = result(slow)
    assert res.rise_onset_step is not None and res.rise_onset_step > 2000
    assert _rise_made_at_spike(slow, res, det, 25) is False
    flat = rows_of(lambda s: o01_curve(s, None), spike=1500)
    assert _rise_made_at_spike(flat, result(flat), det, 25) is None


def test_lead_is_decided_on_timing_not_on_the_share_of_the_grok_step():
    """Issue 20: a lead of ~3,000 steps is a timing: the alarm must follow the jump. Alarms at a fixed step before
    ever later jumps give leads that spread with the grok step: not reproduced, whatever their share."""
    import statistics

    from fastcka.grok.study.verdicts import _lead_verdict

    def fact(alarm, grok):
        return {"grok": grok, "leads": {"o01": grok - alarm}, "alarms": {"o01": alarm, "test_acc": grok - 500},
                "half": grok - 100}

    timed = [fact(g - 3083 + d, g) for g, d in ((5000, 0), (7000, 100), (9000, -100), (11000, 50))]
    v, ev, num = _lead_verdict(timed, 3083, 186, 6, "runs")
    assert v == "reproduced" and num["lead_sd"] <= 372
    alarms, groks = [f["alarms"]["o01"] for f in timed], [f["grok"] for f in timed]
    assert num["r_alarm_grok"] == pytest.approx(statistics.correlation(groks, alarms))  # an independent formula
    assert num["median_lead_to_ramp"] == 2558 and num["median_lead_to_half"] == 2958  # medians of lead − 500, − 100
    fixed = [fact(1300, g) for g in (3500, 4000, 4400, 4600)]  # median lead inside the band, but the alarm is fixed
    v, ev, num = _lead_verdict(fixed, 3083, 186, 6, "runs")
    assert v == "partly" and num["lead_sd"] > 372 and math.isnan(num["r_alarm_grok"])
    late = [fact(1300, g) for g in (8000, 10000, 12000, 14000)]  # shares 0.84–0.91, leads far outside the band
    v, ev, num = _lead_verdict(late, 3083, 186, 6, "runs")
    assert v == "not" and num["r_lead_grok"] == pytest.approx(1.0) and "not decisive" in ev
    assert _lead_verdict(late[:3], 3083, 186, 6, "runs", verdict=False)[0] == "numbers only"


def test_control_lengths_name_a_control_shorter_than_the_slowest_grok():
    from fastcka.grok.study.verdicts import _control_lengths

    def fact(name, grok, steps, alarm):
        return {"name": name, "grok": grok, "steps": steps, "leads": {"o01": None}, "alarms": {"o01": alarm}}

    fs = [fact("g1", 9000, 10000, 1000), fact("g2", 14400, 15400, 1500),
          fact("c-long", None, 20000, None), fact("c-alarm", None, 13000, 7700), fact("c-quiet", None, 12000, None)]
    line = _control_lengths(fs, "pilot regime")
    assert "ran 20000, 13000, 12000 steps, against the slowest grok at 14400 (g2)" in line, line
    assert "c-alarm (its alarm at 7700 is false only within its 13000 steps: censored)" in line
    assert "c-quiet (no alarm within its steps: censored)" in line and "c-long (" not in line
    assert _control_lengths(fs[:2], "pilot regime") == ""  # no control: nothing to say


def test_in_short_claims_a_timing_separation_only_when_there_is_one():
    from fastcka.grok.study.verdicts import in_short

    def fact(name, grok, alarm, acc_alarm=None, role="grok"):
        return {"name": name, "grok": grok, "regime": "pilot", "role": role, "task": "add", "rise_at_spike": False,
                "steps": 20000,
                "alarms": {"o01": alarm, "test_acc_rise": acc_alarm},
                "leads": {"o01": None if grok is None or alarm is None else grok - alarm,
                          "test_acc_rise": None if grok is None or acc_alarm is None else grok - acc_alarm}}

    fs = [fact("g1", 8000, 1500, acc_alarm=1000), fact("g2", 9000, 3000, acc_alarm=4000),
          fact("c1", None, 2000, role="control")]
    s = in_short(fs)
    assert "fired at steps 1500–3000, before the jump in 2/2 grokking runs" in s, s
    assert "did not tell the runs that would grok" in s and "Its timing did here" not in s  # 2,000 < 3,000
    fs[2]["alarms"]["o01"] = 3500  # now every grokking alarm came before the control's
    assert "Its timing did here: grokking runs alarmed by step 3000, the others from step 3500" in in_short(fs)
    assert "fired no later than Ô01 in 1/2 of these runs, with 0/1 false alarms" in s
    fs[2]["alarms"]["o01"] = None  # the control stays quiet: no false alarm, nothing to tell apart
    s = in_short(fs)
    assert "It also fired in 0/1 runs that did not grok." in s and "did not tell" not in s, s
    assert in_short([fact("c1", None, 2000, role="control")]) == ""  # nothing grokked yet


def test_config_drift_lists_runs_that_ran_with_other_settings_than_the_grid():
    from fastcka.grok.study.grid import RunSpec
    from fastcka.grok.study.report import _config_drift

    facts = [{"name": "a-s0", "config": {"max_steps": 12000, "lr": 1e-3, "detector": {"rise": 0.05}}},
             {"name": "a-s1", "config": {"max_steps": 20000, "lr": 1e-3, "detector": {"rise": 0.05}}},
             {"name": "extra", "config": {"max_steps": 5}}]  # not in the grid: nothing to compare
    specs = [RunSpec(n, "a", "grok", i, {"max_steps": 20000, "lr": 0.001, "detector": {"rise": 0.1}})
             for i, n in enumerate(["a-s0", "a-s1"])]
    assert _config_drift(facts, specs) == ["a-s0: max_steps 12000 (grid: 20000)"]  # the detector settings are stated on their own


def test_setup_table_shows_each_seeds_value_where_a_groups_seeds_differ(tmp_path):
    specs = study.load_grid('[[group]]\nname = "g"\nseeds = [0]\nconfig = { max_steps = 100 }\n'
                            '[[group]]\nname = "g"\nseeds = [1]\nconfig = { max_steps = 200 }\n')
    runs = tmp_path / "runs"
    make_run(runs, "g-s0", "grok", grok=2000, rise_at=700)
    text = study.write_report(runs, tmp_path / "docs" / "STUDY.md", specs).read_text()
    row = next(line for line in text.splitlines() if line.startswith("| g |"))
    assert "| 100 (s0), 200 (s1) |" in row and "| 0.4 |" in row, row  # differing: per seed; shared: once


def test_in_short_with_quiet_or_short_controls_and_a_partial_separation():
    from fastcka.grok.study.verdicts import in_short

    def fact(name, grok, alarm, steps=20000, role="grok"):
        return {"name": name, "grok": grok, "regime": "pilot", "role": role, "task": "add", "rise_at_spike": False,
                "steps": steps, "alarms": {"o01": alarm, "test_acc_rise": None},
                "leads": {"o01": None if grok is None or alarm is None else grok - alarm, "test_acc_rise": None}}

    quiet_short = [fact("g1", 8000, 1500), fact("c1", None, None, steps=5000, role="control")]
    s = in_short(quiet_short)
    assert "It also fired in 0/1 runs that did not grok (1 of the 1 stopped before the slowest grok step" in s, s
    assert "at steps ;" not in s and "(at steps" not in s
    partial = [fact("g1", 8000, 1500), fact("c1", None, 5000, role="control"), fact("c2", None, None, role="control")]
    s = in_short(partial)
    assert "the 1 of 2 others that alarmed from step 5000" in s and "did not tell" not in s, s


def test_a_false_alarm_only_in_a_censored_control_gives_partly(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "pa-s0", "grok", grok=2500, rise_at=700, **PILOT_CFG)
    make_run(runs, "pc-s0", "control", grok=None, rise_at=1000, steps=2000, **PILOT_CFG)  # stopped before 2,500
    v = _verdict(_report(tmp_path, runs), "Ô01 re-rises")
    assert v.startswith("partly: the alarm fired before the grok step in 1/1 pilot-regime grokking runs"), v
    assert "and in 1/1 pilot-regime runs that did not grok" in v and "censored: pc-s0" in v
    make_run(runs, "pc-s1", "control", grok=None, rise_at=1000, steps=3000, seed=1, **PILOT_CFG)  # ran past it
    assert _verdict(_report(tmp_path, runs), "Ô01 re-rises").startswith("not: ")

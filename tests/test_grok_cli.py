"""`fastcka grok` from the command line: bad input names the flag; a short run prints the report; resume works."""

import dataclasses
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

import fastcka
from fastcka.cli import EXIT_DIVERGED, main
from fastcka.grok.detect import DetectorConfig
from fastcka.grok.train import TrainConfig, divergence, format_report, read_log

TINY = ["--p", "11", "--train-frac", "0.5", "--d-model", "32", "--n-heads", "2", "--d-mlp", "64", "--every", "10",
        "--threads", "1", "--device", "cpu", "--quiet"]


@pytest.mark.parametrize("argv, flag", [
    (["--task", "div", "--p", "12"], "--p"),
    (["--train-frac", "1.5"], "--train-frac"),
    (["--train-frac", "0"], "--train-frac"),
    (["--task", "parity", "--n-bits", "4", "--k", "5"], "--k"),
    (["--task", "parity", "--n-bits", "4", "--n-samples", "17"], "--n-samples"),
    (["--task", "parity", "--n-bits", "63"], "--n-bits"),
    (["--n-samples", "100"], "--n-samples"),
    (["--n-heads", "5"], "--n-heads"),
    (["--n-layers", "1"], "--n-layers"),
    (["--every", "0"], "--every"),
    (["--force-cka", "-1"], "--force-cka"),
    (["--spike-guard", "sometimes"], "--spike-guard"),
])
def test_bad_input_names_the_flag(tmp_path, capsys, argv, flag):
    assert main(["grok", "--out", str(tmp_path / "r"), "--quiet", "--threads", "1", *argv]) == 2
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err


def test_argparse_type_errors_name_the_flag(capsys):
    with pytest.raises(SystemExit):
        main(["grok", "--p", "eleven"])
    assert "--p" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["grok", "--task", "xor"])
    assert "--task" in capsys.readouterr().err


def test_run_report_resume_and_config_mismatch(tmp_path, capsys):
    out = str(tmp_path / "r")
    assert main(["grok", *TINY, "--max-steps", "20", "--out", out]) == 0
    report = capsys.readouterr().out
    assert "memorised" in report and "grok" in report and out in report
    for f in ("config.json", "log.csv", "summary.json", "plot.png", "checkpoint.pt"):
        assert (tmp_path / "r" / f).exists()
    # the same command again refuses to overwrite; --overwrite replaces; --resume extends
    assert main(["grok", *TINY, "--max-steps", "20", "--out", out]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["grok", "--resume", out, "--max-steps", "30", "--quiet", "--json"]) == 0
    assert '"steps": 30' in capsys.readouterr().out
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["steps"] == 30 and summary["config"]["p"] == 11
    assert main(["grok", "--resume", out, "--lr", "0.1", "--quiet"]) == 2
    assert "--lr" in capsys.readouterr().err
    assert main(["grok", "--resume", str(tmp_path / "nothing")]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["grok", *TINY, "--max-steps", "10", "--out", out, "--overwrite"]) == 0
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["steps"] == 10


def test_no_subcommand_prints_help(capsys):
    assert main([]) == 2
    assert "grok" in capsys.readouterr().out


# --- issue 22: no traceback on a user's mistake or a diverging run --------------------------------------------------

def _one_line_error(err: str, flag: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and flag in lines[0] and "error" in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv, flag", [
    (["--d-model", "0"], "--d-model"),
    (["--n-heads", "0"], "--n-heads"),
    (["--n-heads", "-1"], "--n-heads"),
    (["--d-mlp", "-1"], "--d-mlp"),
    (["--threads", "-1"], "--threads"),
    (["--grok-acc", "2"], "--grok-acc"),
    (["--grok-acc", "0"], "--grok-acc"),
    (["--grok-acc", "nan"], "--grok-acc"),
    (["--lr=inf"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--force-cka", "nan"], "--force-cka"),
    (["--force-cka", "inf"], "--force-cka"),
    (["--weight-decay", "-1"], "--weight-decay"),
    (["--weight-decay", "nan"], "--weight-decay"),
    (["--fourier-top-k", "0"], "--fourier-top-k"),
])
def test_more_bad_input_names_the_flag_and_writes_nothing(tmp_path, capsys, argv, flag):
    out = tmp_path / "r"
    assert main(["grok", *TINY, "--out", str(out), *argv]) == 2
    _one_line_error(capsys.readouterr().err, flag)
    assert not out.exists()


def test_empty_out_and_resume_are_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the old code wrote the run into the current directory
    assert main(["grok", *TINY, "--out", ""]) == 2
    _one_line_error(capsys.readouterr().err, "--out")
    assert main(["grok", "--resume", ""]) == 2
    _one_line_error(capsys.readouterr().err, "--resume")
    assert list(tmp_path.iterdir()) == []


def _unwritable(tmp_path):
    if os.geteuid() == 0:  # root writes anywhere a mode allows nothing; /sys refuses new directories even to root
        if not os.path.isdir("/sys/kernel"):
            pytest.skip("needs /sys (root) or a non-root user")
        return "/sys/fastcka-test-unwritable"
    d = tmp_path / "locked"
    d.mkdir(mode=0o500)
    return str(d / "r")


def test_out_at_a_file_under_a_file_or_unwritable(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("not a directory")
    for out in (str(f), str(f / "r"), _unwritable(tmp_path)):
        assert main(["grok", *TINY, "--max-steps", "0", "--out", out]) == 2, out
        _one_line_error(capsys.readouterr().err, "--out")
    assert f.read_text() == "not a directory"


def test_overwrite_removes_only_the_run_files(tmp_path):
    out = tmp_path / "r"
    assert main(["grok", *TINY, "--max-steps", "0", "--out", str(out)]) == 0
    (out / "notes.txt").write_text("mine")
    assert main(["grok", *TINY, "--max-steps", "0", "--out", str(out), "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "checkpoint.pt").exists()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny finished run; tests copy it before damaging it."""
    out = tmp_path_factory.mktemp("runs") / "r"
    assert main(["grok", *TINY, "--max-steps", "10", "--out", str(out)]) == 0
    return out


def _copy_run(src, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("damage, words", [
    ("empty checkpoint", "not a readable checkpoint"),
    ("truncated checkpoint", "not a readable checkpoint"),
    ("checkpoint of something else", "not a fastcka grok checkpoint"),
    ("checkpoint with broken log rows", "does not fit"),
    ("config not JSON", "not readable JSON"),
    ("config a list", "not a fastcka grok config"),
    ("config with an unknown key", "not a fastcka grok config"),
    ("config detector not a dict", "not a fastcka grok config"),
])
def test_resume_of_a_damaged_run_directory(finished_run, tmp_path, capsys, damage, words):
    run = _copy_run(finished_run, tmp_path)
    ckpt, cfg = run / "checkpoint.pt", run / "config.json"
    if damage == "empty checkpoint":
        ckpt.write_bytes(b"")
    elif damage == "truncated checkpoint":
        ckpt.write_bytes(ckpt.read_bytes()[:1000])
    elif damage == "checkpoint of something else":
        torch.save({"weights": torch.ones(3)}, ckpt)
    elif damage == "checkpoint with broken log rows":
        state = torch.load(ckpt, weights_only=True)
        state["rows"] = [{"step": 0}]
        torch.save(state, ckpt)
    elif damage == "config not JSON":
        cfg.write_text(cfg.read_text()[:-40])
    elif damage == "config a list":
        cfg.write_text("[1, 2]")
    elif damage == "config with an unknown key":
        cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "learning_speed": 3}))
    else:
        cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "detector": [1]}))
    assert main(["grok", "--resume", str(run), "--max-steps", "20", "--quiet"]) == 2
    err = capsys.readouterr().err
    _one_line_error(err, "--resume")
    assert words in err


class _WritesAFile:
    """Unpickling this calls open(path, "w"): a stand-in for any code a crafted checkpoint could run."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_resume_refuses_a_crafted_pickle(finished_run, tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path)
    marker = tmp_path / "pwned"
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["rows"].append(_WritesAFile(str(marker)))
    torch.save(state, run / "checkpoint.pt")
    assert main(["grok", "--resume", str(run), "--max-steps", "20", "--quiet"]) == 2
    err = capsys.readouterr().err
    _one_line_error(err, "--resume")
    assert "refused" in err and "weights_only" in err
    assert not marker.exists()
    # the payload is live: an unrestricted load runs it (so the refusal above is what kept the file from appearing)
    torch.load(run / "checkpoint.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("argv, first_bad", [(["--lr", "3"], None), (["--lr", "1e30"], 1)])
def test_a_diverging_run_stops_cleanly_and_keeps_its_files(tmp_path, capsys, argv, first_bad):
    out = tmp_path / "r"
    assert main(["grok", *TINY, "--max-steps", "60", "--out", str(out), *argv]) == EXIT_DIVERGED
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    for f in ("config.json", "log.csv", "summary.json", "plot.png", "checkpoint.pt"):
        assert (out / f).stat().st_size > 0, f
    summary = json.loads((out / "summary.json").read_text())
    d = summary["diverged"]
    rows = read_log(out / "log.csv")
    assert d["step"] <= summary["steps"] < 60 and summary["steps"] == rows[-1]["step"]
    assert summary["steps"] - d["step"] < 10  # stopped at the first logged row after it (--every 10)
    if first_bad is not None:
        assert d["step"] == first_bad
    assert f"at step {d['step']}" in d["reason"] and "DIVERGED" in captured.out and d["reason"] in captured.out
    assert all(math.isfinite(r["train_loss"]) for r in rows if r["step"] < d["step"])
    assert not math.isfinite(rows[-1]["train_loss_max"])
    state = torch.load(out / "checkpoint.pt", weights_only=True)  # the checkpoint is written, and plain data
    assert state["step"] == summary["steps"] and state["diverged"] == d
    # nothing to resume
    assert main(["grok", "--resume", str(out), "--max-steps", "80", "--quiet"]) == 2
    _one_line_error(capsys.readouterr().err, "--resume")


def test_non_finite_activations_with_a_finite_loss_count_as_divergence():
    row = {"step": 30, "o01": math.nan, "spec_entropy": math.nan}
    assert divergence(-1, 0.0, row, forced=False)["step"] == 30
    assert divergence(-1, 0.0, {**row, "o01": 0.5, "spec_entropy": 2.0}, forced=False) is None
    assert "loss became inf at step 7" in divergence(7, math.inf, row, forced=True)["reason"]


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"fastcka {fastcka.__version__}"


def test_study_without_a_grid_says_where_to_get_one(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    import fastcka.cli as cli

    monkeypatch.setattr(cli, "default_grid", lambda: None)  # an editable install run outside the checkout
    assert main(["study", "--quiet"]) == 2
    err = capsys.readouterr().err
    _one_line_error(err, "grid")
    assert "docs/study/grid.toml" in err and "--quick" in err
    (tmp_path / "bad.toml").write_text("[[run]\n")
    assert main(["study", str(tmp_path / "bad.toml"), "--quiet"]) == 2
    _one_line_error(capsys.readouterr().err, "bad.toml")


def test_default_grid_is_the_checkouts_or_the_packaged_copy(monkeypatch):
    import fastcka.cli as cli

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)
    assert cli.default_grid() == Path("docs/study/grid.toml")


def test_every_numeric_flag_fails_cleanly(tmp_path, capsys, monkeypatch):
    """0, -1, NaN and ±inf for every numeric flag of `fastcka grok`: a valid run or a one-line error naming the flag,
    never a traceback (a run with --max-steps 0, so each accepted value costs one forward; the plot is stubbed)."""
    import fastcka.grok.plot

    monkeypatch.setattr(fastcka.grok.plot, "plot_run", lambda *a, **k: None)
    base = ["--p", "11", "--train-frac", "0.5", "--d-model", "8", "--n-heads", "2", "--d-mlp", "8", "--every", "1",
            "--threads", "1", "--quiet", "--device", "cpu"]
    fields = [f for cls in (TrainConfig, DetectorConfig) for f in dataclasses.fields(cls)
              if f.type in ("int", "float") and f.name not in ("n_bits", "k", "n_samples")]  # parity-only flags
    assert len(fields) > 20
    for f in fields:
        flag = "--" + f.name.replace("_", "-")
        for v in (["0", "-1"] if f.type == "int" else ["0", "-1", "nan", "inf", "-inf"]):
            out = tmp_path / f"{f.name}{v}"
            steps = [] if f.name == "max_steps" else ["--max-steps", "0"]
            rc = main(["grok", *base, *steps, "--out", str(out), f"{flag}={v}"])
            err = capsys.readouterr().err
            assert rc in (0, 2), (flag, v, rc, err)
            if rc == 2:
                _one_line_error(err, flag)


def test_divergence_after_the_last_logged_row_is_reported_on_ctrl_c(tmp_path):
    """A run stopped by Ctrl-C between two logged rows, after its loss went non-finite, still says it diverged."""
    import signal

    from fastcka.grok.train import train

    cfg = TrainConfig(p=11, train_frac=0.5, d_model=32, n_heads=2, d_mlp=64, every=10, threads=1, device="cpu",
                      progress=False, max_steps=60, lr=1e30, out=str(tmp_path / "r"))
    summary = train(cfg, callback=lambda step: os.kill(os.getpid(), signal.SIGINT) if step == 4 else None)
    assert summary["interrupted"] and summary["steps"] == 4
    assert summary["diverged"]["step"] == 1 and "DIVERGED" in format_report(summary)

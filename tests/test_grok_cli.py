"""`fastcka grok` from the command line: bad input names the flag; a short run prints the report; resume works."""

import json

import pytest

from fastcka.cli import main

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

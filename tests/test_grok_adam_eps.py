"""The trainer's --adam-eps flag (issue 20: the spike-suppressing setting of the pre-registered runs): it reaches
AdamW, one update matches a float64 hand-written AdamW step, it is recorded in config.json and the summary, a resume
with another value is refused, and a bad value names the flag."""

import json

import pytest
import torch

from fastcka.cli import main
from fastcka.grok.train import TrainConfig, build, format_report, train
from test_grok_train import tiny  # the tiny 60-step run of the trainer's tests


def test_default_is_torchs_and_the_optimiser_gets_the_value(tmp_path):
    assert TrainConfig().adam_eps == 1e-8
    _, _, opt, _ = build(tiny(tmp_path, adam_eps=0.25), torch.device("cpu"))
    assert all(g["eps"] == 0.25 for g in opt.param_groups)


@pytest.mark.parametrize("eps", [1e-8, 1.0])
def test_one_update_matches_a_float64_adamw_step(tmp_path, eps):
    """From the initialisation and its float32 gradient, the first AdamW update in float64 (bias-corrected m and v,
    decoupled weight decay): with eps = 1 the update is |g| / (|g| + 1) of the eps = 1e-8 one, so a flag that did not
    reach the optimiser fails here."""
    import torch.nn.functional as F

    lr, wd, b1, b2 = 1e-2, 0.5, 0.9, 0.98
    cfg = tiny(tmp_path / "run", max_steps=1, warmup=0, lr=lr, weight_decay=wd, beta1=b1, beta2=b2, adam_eps=eps)
    ds, model, _, _ = build(cfg, torch.device("cpu"))
    logits, _ = model(ds.train_x, fast=cfg.fast)
    F.cross_entropy(logits, ds.train_y).backward()
    expected = {}
    for name, p in model.named_parameters():
        w, g = p.detach().double(), (p.grad if p.grad is not None else torch.zeros_like(p)).double()
        m_hat = (1 - b1) * g / (1 - b1)
        v_hat = (1 - b2) * g * g / (1 - b2)
        expected[name] = w * (1 - lr * wd) - lr * m_hat / (v_hat.sqrt() + eps)
    train(cfg)
    got = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["model"]
    for name, e in expected.items():
        torch.testing.assert_close(got[name].double(), e, rtol=1e-5, atol=1e-6, msg=name)


def test_recorded_in_config_and_summary_and_a_resume_cannot_change_it(tmp_path):
    s = train(tiny(tmp_path / "r", adam_eps=1e-4))
    assert json.loads((tmp_path / "r" / "config.json").read_text())["adam_eps"] == 1e-4
    assert s["config"]["adam_eps"] == 1e-4
    assert "adam-eps 0.0001" in format_report(s)
    with pytest.raises(ValueError, match="--adam-eps"):
        train(tiny(tmp_path / "r", adam_eps=1e-3, max_steps=80), resume=True)


def test_a_config_without_the_field_reads_as_the_default(tmp_path):
    """The 47 runs of the first study have no adam_eps in their config.json: they ran with torch's default."""
    cfg = {k: v for k, v in json.loads(json.dumps(tiny(tmp_path).__dict__, default=lambda o: o.__dict__)).items()
           if k != "adam_eps"}
    assert TrainConfig(**cfg).adam_eps == 1e-8


@pytest.mark.parametrize("bad", [0.0, -1e-8, float("inf"), float("nan")])
def test_a_bad_value_names_the_flag(tmp_path, bad):
    with pytest.raises(ValueError, match="--adam-eps"):
        tiny(tmp_path, adam_eps=bad)


def test_cli_flag(tmp_path, capsys):
    assert main(["grok", "--adam-eps", "-1", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "--adam-eps" in capsys.readouterr().err

"""The trainer: determinism, resume (and Ctrl-C) bit for bit, Ô01 as logged, the forcing term."""

import os
import signal

import pytest
import torch

import fastcka
from fastcka import reference
from fastcka.grok.train import CHECKPOINT, TrainConfig, build, read_log, train

torch.set_num_threads(1)


def tiny(out, **kw):
    base = dict(p=11, train_frac=0.5, d_model=32, n_heads=2, d_mlp=64, max_steps=60, every=10, lr=3e-3,
                threads=1, progress=False, out=str(out), device="cpu")
    return TrainConfig(**{**base, **kw})


def _params(out):
    return torch.load(os.path.join(out, CHECKPOINT), weights_only=False)["model"]


def test_same_seed_same_log(tmp_path):
    a = train(tiny(tmp_path / "a"))
    b = train(tiny(tmp_path / "b"))
    assert read_log(tmp_path / "a" / "log.csv") == read_log(tmp_path / "b" / "log.csv")
    assert a["steps"] == b["steps"] == 60
    c = train(tiny(tmp_path / "c", seed=1))
    assert read_log(tmp_path / "c" / "log.csv") != read_log(tmp_path / "a" / "log.csv")
    for f in ("config.json", "log.csv", "summary.json", "plot.png", "checkpoint.pt"):
        assert (tmp_path / "a" / f).exists()


def test_same_seed_same_log_with_two_threads(tmp_path):
    """Multi-threaded CPU kernels must not make the run depend on thread timing (the fast forward's token lookup
    once did, through indexing's accumulating backward)."""
    big = dict(threads=2, p=59, train_frac=0.4, d_model=128, n_heads=4, d_mlp=512, max_steps=5, every=5)
    train(tiny(tmp_path / "a", **big))
    train(tiny(tmp_path / "b", **big))
    torch.set_num_threads(1)
    assert read_log(tmp_path / "a" / "log.csv") == read_log(tmp_path / "b" / "log.csv")


@pytest.mark.parametrize("stop_at", [30, 37])  # on a log step, and between two
def test_resume_after_ctrl_c_equals_uninterrupted(tmp_path, stop_at):
    train(tiny(tmp_path / "full"))

    def ctrl_c(step):
        if step == stop_at:
            os.kill(os.getpid(), signal.SIGINT)

    s = train(tiny(tmp_path / "cut"), callback=ctrl_c)
    assert s["interrupted"] and s["steps"] == stop_at
    s = train(tiny(tmp_path / "cut"), resume=True)
    assert not s["interrupted"] and s["steps"] == 60
    assert read_log(tmp_path / "cut" / "log.csv") == read_log(tmp_path / "full" / "log.csv")
    pa, pb = _params(tmp_path / "full"), _params(tmp_path / "cut")
    assert all(torch.equal(pa[k], pb[k]) for k in pa)


def test_extending_a_finished_run_equals_the_longer_run(tmp_path):
    train(tiny(tmp_path / "long", max_steps=60))
    train(tiny(tmp_path / "short", max_steps=35))  # ends between two log steps: an extra last row
    train(tiny(tmp_path / "short", max_steps=60), resume=True)
    assert read_log(tmp_path / "short" / "log.csv") == read_log(tmp_path / "long" / "log.csv")


def test_logged_o01_equals_cka_recomputed_from_the_checkpoint(tmp_path):
    cfg = tiny(tmp_path / "r", probe=40)
    train(cfg)
    last = read_log(tmp_path / "r" / "log.csv")[-1]
    state = torch.load(tmp_path / "r" / CHECKPOINT, weights_only=False)
    assert state["step"] == last["step"] == 60
    ds, model, _, probe = build(cfg, torch.device("cpu"))
    model.load_state_dict(state["model"])
    with torch.no_grad():
        _, resid = model(ds.train_x, fast=False)  # the plain forward, independently of the trainer's fast one
    x, y = resid[0][probe], resid[1][probe]
    assert probe.numel() == 40
    assert fastcka.cka(x, y).item() == pytest.approx(last["o01"], abs=1e-6)
    assert reference.linear_cka(x, y).item() == pytest.approx(last["o01"], abs=1e-5)


def test_force_cka_pushes_o01_up(tmp_path):
    train(tiny(tmp_path / "free"))
    train(tiny(tmp_path / "forced", force_cka=1.0))
    free = read_log(tmp_path / "free" / "log.csv")[-1]["o01"]
    forced = read_log(tmp_path / "forced" / "log.csv")[-1]["o01"]
    assert forced > free + 0.05


def test_resume_with_a_different_config_names_the_flag(tmp_path):
    train(tiny(tmp_path / "r", max_steps=20))
    with pytest.raises(ValueError, match="--lr"):
        train(tiny(tmp_path / "r", max_steps=40, lr=1e-3), resume=True)
    with pytest.raises(ValueError, match="--out"):
        train(tiny(tmp_path / "r", max_steps=40))  # not a resume: refuses to overwrite

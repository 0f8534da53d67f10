"""The monitor inside Lightning and Hugging Face training, and on the layers people compare (ViT, ResNet from
`transformers` configs: no download). Each test skips cleanly when its package is missing."""

from __future__ import annotations

import csv
import os

import pytest
import torch
from torch import nn

import fastcka
from fastcka.monitor import CKAMonitor

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


# ---------------------------------------------------------------------------------------------------------------
# Lightning
# ---------------------------------------------------------------------------------------------------------------

def _lightning():
    try:
        import lightning.pytorch as pl  # noqa: F401
    except ImportError:
        pl = pytest.importorskip("pytorch_lightning")
    return pl


def test_lightning_callback_writes_the_metric_to_csvlogger(tmp_path):
    pl = _lightning()
    from torch.utils.data import DataLoader, TensorDataset

    from fastcka.integrations.lightning import CKACallback

    class Net(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.l1 = nn.Linear(6, 16)
            self.l2 = nn.Linear(16, 16)
            self.l3 = nn.Linear(16, 2)

        def forward(self, x):
            return self.l3(torch.tanh(self.l2(torch.tanh(self.l1(x)))))

        def training_step(self, batch, _):
            x, y = batch
            loss = nn.functional.mse_loss(self(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(160, 6, generator=g), torch.randn(160, 2, generator=g))
    probe = torch.randn(32, 6, generator=g)
    torch.manual_seed(0)
    net = Net()
    cb = CKACallback(["l1", "l2", "l3"], probe=probe, every=2)
    csv_logger = pl.loggers.CSVLogger(str(tmp_path), name="run")
    trainer = pl.Trainer(
        max_steps=20, accelerator="cpu", devices=1, logger=csv_logger, callbacks=[cb], log_every_n_steps=5,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(net, DataLoader(data, batch_size=8))
    assert trainer.global_step == 20

    with open(os.path.join(csv_logger.log_dir, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    name = "cka/l1/l2"
    got = {int(r["step"]): float(r[name]) for r in rows if r.get(name)}
    assert sorted(got) == list(range(2, 21, 2))
    assert "cka/l2/l3" in rows[0]
    assert all(0.0 <= v <= 1.0 + 1e-6 for v in got.values())
    # the last value is the CKA of the trained model on the probe
    with torch.no_grad():
        net.eval()
        h1 = net.l1(probe)
        h2 = net.l2(torch.tanh(h1))
    assert got[20] == pytest.approx(fastcka.cka(h1, h2).item(), rel=1e-5)
    # hooks are gone after fit; the series state is checkpointable
    assert all(not m._forward_hooks for m in net.modules())
    state = cb.state_dict()
    assert state["step"] == 20 and state["pending"] == []

    # resume from a checkpoint: the callback's state comes back and the series continues
    ckpt = str(tmp_path / "last.ckpt")
    trainer.save_checkpoint(ckpt)
    cb2 = CKACallback(["l1", "l2", "l3"], probe=probe, every=2)
    csv2 = pl.loggers.CSVLogger(str(tmp_path), name="resumed")
    trainer2 = pl.Trainer(
        max_steps=30, accelerator="cpu", devices=1, logger=csv2, callbacks=[cb2], log_every_n_steps=5,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer2.fit(Net(), DataLoader(data, batch_size=8), ckpt_path=ckpt)
    with open(os.path.join(csv2.log_dir, "metrics.csv")) as f:
        rows2 = [r for r in csv.DictReader(f) if r.get(name)]
    assert [int(r["step"]) for r in rows2] == list(range(22, 31, 2))
    assert cb2.monitor.step_count == 30


def test_lightning_resume_without_state_exception_flush_and_true_precision(tmp_path):
    pl = _lightning()
    from torch.utils.data import DataLoader, TensorDataset

    from fastcka.integrations.lightning import CKACallback

    class Net(pl.LightningModule):
        def __init__(self, fail_at=None):
            super().__init__()
            self.l1, self.l2, self.l3 = nn.Linear(6, 16), nn.Linear(16, 16), nn.Linear(16, 2)
            self.fail_at = fail_at

        def forward(self, x):
            return self.l3(torch.tanh(self.l2(torch.tanh(self.l1(x)))))

        def training_step(self, batch, _):
            if self.global_step == self.fail_at:
                raise FloatingPointError("diverged")
            x, y = batch
            return nn.functional.mse_loss(self(x), y.to(self.l3.weight.dtype))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    g = torch.Generator().manual_seed(1)
    data = DataLoader(TensorDataset(torch.randn(80, 6, generator=g), torch.randn(80, 2, generator=g)), batch_size=8)
    kw = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False)

    # 1. a checkpoint taken without this callback, resumed with probe=None: the series starts at the Trainer's step
    trainer = pl.Trainer(max_steps=4, enable_checkpointing=False, **kw)
    trainer.fit(Net(), data)
    ckpt = str(tmp_path / "no-cb.ckpt")
    trainer.save_checkpoint(ckpt)
    cb = CKACallback(["l1", "l2"], every=5)  # logger=False: the history is kept by default, not dropped
    pl.Trainer(max_steps=12, enable_checkpointing=False, callbacks=[cb], **kw).fit(Net(), data, ckpt_path=ckpt)
    assert cb.monitor.history["step"] == [5, 10]

    # 2. an exception mid-training: the values up to it are flushed, the hooks removed
    cb = CKACallback(["l1", "l2"], probe=torch.randn(16, 6), every=1, flush_every=1000, keep_history=True)
    net = Net(fail_at=3)
    with pytest.raises(FloatingPointError):
        pl.Trainer(max_steps=10, enable_checkpointing=False, callbacks=[cb], **kw).fit(net, data)
    assert cb.monitor.history["step"] == [1, 2, 3]
    assert all(not m._forward_hooks for m in net.modules())

    # 3. true precision: the float32 probe gets the conversion the batches get
    cb = CKACallback(["l1", "l2"], probe=torch.randn(16, 6), every=2, keep_history=True)
    pl.Trainer(max_steps=4, precision="bf16-true", enable_checkpointing=False, callbacks=[cb], **kw).fit(Net(), data)
    assert cb.monitor.history["step"] == [2, 4] and all(0 <= v <= 1.01 for v in cb.monitor.history["cka/l1/l2"])


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face Trainer
# ---------------------------------------------------------------------------------------------------------------

def test_hf_trainer_callback_logs_through_the_trainer(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from fastcka.integrations.hf import CKATrainerCallback

    cfg = transformers.GPT2Config(vocab_size=32, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 32, (40, 8), generator=g)
    train = [{"input_ids": r, "labels": r} for r in ids]
    probe = {"input_ids": torch.randint(0, 32, (16, 8), generator=g)}
    report = ["tensorboard"] if _has("tensorboard") else []
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=10, per_device_train_batch_size=4, learning_rate=1e-3,
        logging_steps=5, save_strategy="no", report_to=report, use_cpu=True, disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=train)
    hooks_before = {n: len(m._forward_hooks) for n, m in model.named_modules()}
    seen = []
    cb = CKATrainerCallback(["transformer.h.*"], probe=probe, every=1, logger=lambda s, d: seen.append(s),
                            trainer=trainer)
    trainer.train()
    assert cb.monitor.layers == ["transformer.h.0", "transformer.h.1"]
    assert {n: len(m._forward_hooks) for n, m in model.named_modules()} == hooks_before  # ours are gone

    name = "cka/transformer.h.0/transformer.h.1"
    logged = {e["step"]: e[name] for e in trainer.state.log_history if name in e}
    assert sorted(logged) == [5, 10]
    assert seen == list(range(1, 11))  # every measured step reaches the monitor's own logger
    assert all(0.0 <= v <= 1.0 + 1e-6 for v in logged.values())
    # the value logged at step 10 is the CKA of the final model's blocks on the probe (last token)
    with torch.no_grad():
        model.eval()
        hs = model(**probe, output_hidden_states=True).hidden_states
    # hidden_states[i + 1] is block i's output (the last one after ln_f): use hooks for block 1
    acts = {}
    hk = model.transformer.h[1].register_forward_hook(lambda m, i, o: acts.__setitem__("h1", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        model(**probe)
    hk.remove()
    assert logged[10] == pytest.approx(fastcka.cka(hs[1][:, -1], acts["h1"][:, -1]).item(), rel=1e-5)
    if report:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        runs = [r for r, _, fs in os.walk(tmp_path / "tb") if any("tfevents" in f for f in fs)]
        tags = set()
        for r in runs:
            acc = EventAccumulator(r)
            acc.Reload()
            tags |= set(acc.Tags()["scalars"])
        assert any(name in t for t in tags), tags  # installed ahead of the reporting callbacks


def _has(mod):
    try:
        __import__(mod)
        return True
    except ImportError:
        return False


# ---------------------------------------------------------------------------------------------------------------
# ViT and ResNet from transformers configs, layer by layer
# ---------------------------------------------------------------------------------------------------------------

def test_vit_monitored_layer_by_layer():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=3,
                                 num_attention_heads=2, intermediate_size=64, num_labels=3)
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(cfg)
    blocks = "vit.encoder.layer.*" if hasattr(model.vit, "encoder") else "vit.layers.*"  # transformers 4 / 5
    pixels = torch.randn(12, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    # `vit` returns a ModelOutput (its last_hidden_state is used); the blocks return tensors or tuples
    mon = CKAMonitor(model, ["vit.embeddings", blocks, "vit"], pairs="all", probe=pixels, position=0)
    assert len(mon.layers) == 5 and mon.layers[-1] == "vit"
    mon.step()
    mat = mon.matrix()
    mon.close()
    with torch.no_grad():
        model.eval()
        out = model.vit(pixels, output_hidden_states=True)
    cls = [h[:, 0] for h in out.hidden_states] + [out.last_hidden_state[:, 0]]  # embeddings, blocks, final norm
    want = torch.stack([fastcka.cka(cls[i], cls[j]) for i in range(5) for j in range(i + 1, 5)])
    got = torch.tensor([mon.history[n][0] for n in mon.names], dtype=want.dtype)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mat[0, 1:], want[:4], rtol=1e-5, atol=1e-6)


def test_resnet_monitored_stage_by_stage_4d_feature_maps():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16, 16], depths=[1, 1, 1],
                                    layer_type="basic")
    torch.manual_seed(0)
    model = transformers.ResNetForImageClassification(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(3)
    pixels = torch.randn(10, 3, 32, 32, generator=g)
    labels = torch.randint(0, 2, (10,), generator=g)
    model.config.num_labels = 2
    for reduce in (None, "mean"):
        mon = CKAMonitor(model, ["resnet.embedder", "resnet.encoder.stages.*"], probe=pixels[:8], reduce=reduce,
                         flush_every=1)
        assert mon.layers[1:] == [f"resnet.encoder.stages.{i}" for i in range(3)]
        out = model(pixel_values=pixels, labels=labels)  # a ModelOutput; the monitor only hooks submodules
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        mon.step()
        mon.close()
        with torch.no_grad():
            model.eval()
            hs = model.resnet(pixels[:8], output_hidden_states=True).hidden_states  # embedder, then each stage
            model.train()
        f = (lambda t: t.flatten(1)) if reduce is None else (lambda t: t.mean((2, 3)))
        want = torch.stack([fastcka.cka(f(hs[i]), f(hs[i + 1])) for i in range(3)])
        got = torch.tensor([mon.history[n][0] for n in mon.names], dtype=want.dtype)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert model.training and all(m.training for m in model.modules())


# ---------------------------------------------------------------------------------------------------------------
# Missing extras
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "module, blocked, extra",
    [
        ("fastcka.integrations.hf", ["transformers"], "fastcka[hf]"),
        ("fastcka.integrations.lightning", ["lightning", "lightning.pytorch", "pytorch_lightning"], "fastcka[lightning]"),
        ("fastcka.monitor:tensorboard_logger", ["torch.utils.tensorboard"], "fastcka[tensorboard]"),
    ],
)
def test_missing_extra_names_the_extra(monkeypatch, tmp_path, module, blocked, extra):
    import importlib
    import sys

    for b in blocked:
        monkeypatch.setitem(sys.modules, b, None)  # `import b` now raises ImportError
    if ":" in module:
        mod, fn = module.split(":")
        with pytest.raises(ImportError, match=extra.replace("[", r"\[").replace("]", r"\]")):
            getattr(importlib.import_module(mod), fn)(str(tmp_path))
        return
    if module in sys.modules:
        monkeypatch.delitem(sys.modules, module)
    with pytest.raises(ImportError, match=extra.replace("[", r"\[").replace("]", r"\]")):
        importlib.import_module(module)


# ---------------------------------------------------------------------------------------------------------------
# Both callbacks forward **monitor_kwargs to CKAMonitor (issue 22): new monitor options need no callback edit
# ---------------------------------------------------------------------------------------------------------------

def test_callbacks_forward_monitor_kwargs_and_reject_unknown_ones_at_construction():
    from types import SimpleNamespace

    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))
    probe = torch.randn(20, 6)
    kw = dict(probe=probe, every=3, kernel="rbf", sigma=0.7, unbiased=True, stop_early=False, prefix="sim")
    built = []
    try:
        pytest.importorskip("transformers")
        from fastcka.integrations.hf import CKATrainerCallback

        cb = CKATrainerCallback(["0", "2"], **kw)
        state = SimpleNamespace(logging_steps=5, is_world_process_zero=True, global_step=0, log_history=[])
        cb.on_train_begin(SimpleNamespace(logging_steps=5), state, None, model=model)
        built.append(cb.monitor)
        with pytest.raises(TypeError, match="did you mean"):
            CKATrainerCallback(["0", "2"], evry=3)
        with pytest.raises(TypeError):
            CKATrainerCallback(["0", "2"], None, 3)  # options are keyword-only
    except pytest.skip.Exception:
        pass
    try:
        _lightning()
        from fastcka.integrations.lightning import CKACallback

        cb = CKACallback(["0", "2"], **kw)
        trainer = SimpleNamespace(log_every_n_steps=7, loggers=[], is_global_zero=True)
        cb.setup(trainer, model, "fit")
        built.append(cb.monitor)
        assert cb.monitor.flush_every == 7 and "'every': 3" in cb.state_key  # same key as before
        with pytest.raises(TypeError, match="did you mean"):
            CKACallback(["0", "2"], kernal="rbf")
        with pytest.raises(TypeError, match="set by the callback"):
            CKACallback(["0", "2"], logger="x.csv")
    except pytest.skip.Exception:
        pass
    if not built:
        pytest.skip("neither transformers nor lightning is installed")
    for mon in built:
        assert (mon.every, mon.kernel, mon.unbiased, mon.stop_early, mon.prefix) == (3, "rbf", True, False, "sim")
        assert mon._kernel_args["sigma"] == 0.7 and mon.probe is probe
        mon.close()

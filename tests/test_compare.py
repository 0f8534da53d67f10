"""fastcka.compare: exact and minibatch CKA of two models over a data set, against fastcka.cka on the concatenated
activations and the float64 reference; errors before accumulation; eval/inference modes; CKAResult I/O and plot."""

from __future__ import annotations

import importlib
import os
import pickle

import pytest
import torch
from torch import nn

import fastcka
from fastcka import reference
from fastcka.compare import CKAResult

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


class Shifted(nn.Module):
    """x ↦ tanh(x) + offset: an activation whose mean is ``offset`` times its spread (when offset ≫ 1)."""

    def __init__(self, offset):
        super().__init__()
        self.offset = offset

    def forward(self, x):
        return torch.tanh(x) + self.offset


class Unshift(nn.Module):
    def __init__(self, offset):
        super().__init__()
        self.offset = offset

    def forward(self, x):
        return x - self.offset


def mlp(d_in=6, widths=(16, 8, 12), seed=0, offset=0.0, dtype=F64):
    """Linear / Shifted / Unshift stack: the hooked layers are the Linear ones (indices 0, 3, 6, ...) and the Shifted
    ones (1, 4, 7, ...), whose outputs have a mean ``offset`` times their spread; the next Linear sees them
    un-shifted."""
    torch.manual_seed(seed)
    layers, d = [], d_in
    for w in widths:
        layers += [nn.Linear(d, w), Shifted(offset), Unshift(offset)]
        d = w
    return nn.Sequential(*layers).to(dtype)


def acts_of(model, x, idx):
    """Activations of model[i] on all of x (an independent forward, no hooks)."""
    with torch.no_grad():
        return [model[: i + 1](x) for i in idx]


def batches_of(x, sizes):
    out, i = [], 0
    for s in sizes:
        out.append((x[i : i + s], torch.zeros(s)))
        i += s
    assert i == x.shape[0]
    return out


SIZES = [1, 30, 5, 60, 7]  # uneven, a 1-row batch first, an odd last batch


@pytest.mark.parametrize("dtype,tol", [(F64, 1e-9), (torch.float32, 1e-5)])
@pytest.mark.parametrize("unbiased", [False, True])
def test_exact_equals_cka_on_the_concatenated_activations(dtype, tol, unbiased):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(sum(SIZES), 6, generator=g, dtype=F64).to(dtype)
    a = mlp(offset=1e4, dtype=dtype)  # Linear outputs: mean ~1e4, spread ~1
    b = mlp(widths=(10, 5), seed=1, dtype=dtype)
    ia, ib = [1, 4, 6], [0, 1, 4]
    res = fastcka.compare(a, b, batches_of(x, SIZES), layers_a=[str(i) for i in ia], layers_b=[str(i) for i in ib],
                          unbiased=unbiased, progress=False)
    xa, xb = acts_of(a, x, ia), acts_of(b, x, ib)
    assert xa[0].mean() > 9e3 and xa[0].std(0).max() < 1  # the offset is there: 1e4 against a spread below 1
    want = torch.tensor([[fastcka.cka(u, v, unbiased=unbiased).item() for v in xb] for u in xa], dtype=F64)
    assert res.matrix.dtype == F64 and res.matrix.shape == (3, 3)
    torch.testing.assert_close(res.matrix, want, rtol=0, atol=tol)
    if dtype == F64:  # and the float64 reference, written independently (centred first, then Kornblith's eq. 3)
        ref = torch.tensor([[reference.feature_space_linear_cka(u, v, unbiased).item() for v in xb] for u in xa],
                           dtype=F64)
        torch.testing.assert_close(res.matrix, ref, rtol=0, atol=1e-9)
    assert (res.n, res.batches, res.layers_a, res.layers_b) == (103, 5, ["1", "4", "6"], ["0", "1", "4"])
    # independent of the batch size up to float64 rounding (in float32 the model's own activations round
    # differently with the batch size: that, not the accumulation, is the 1e-6)
    res2 = fastcka.compare(a, b, batches_of(x, [50, 53]), layers_a=res.layers_a, layers_b=res.layers_b,
                           unbiased=unbiased, progress=False)
    torch.testing.assert_close(res2.matrix, res.matrix, rtol=0, atol=1e-11 if dtype == F64 else 1e-6)


@pytest.mark.parametrize("kernel,sigma", [("linear", None), ("rbf", None), ("rbf", 2.0), ("rbf", (1.5, 3.0))])
def test_minibatch_equals_nguyen_reference_on_the_same_batches(kernel, sigma):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(78, 6, generator=g, dtype=F64)
    sizes = [20, 20, 20, 16, 2]  # the 2-row batch is left out (HSIC₁ needs 4 rows), with a warning
    a, b = mlp(), mlp(widths=(9, 7), seed=3)
    data = batches_of(x, sizes)
    with pytest.warns(RuntimeWarning, match="2 examples in batches of fewer than 4"):
        res = fastcka.compare(a, b, data, layers_a=["0", "3"], layers_b=["0", "3"], estimator="minibatch",
                              kernel=kernel, sigma=sigma, progress=False)
    pair = sigma if isinstance(sigma, tuple) else (None if sigma is None else (sigma, sigma))
    for i, la in enumerate([0, 3]):
        for j, lb in enumerate([0, 3]):
            xs = [acts_of(a, bx, [la])[0] for bx, _ in data[:4]]
            ys = [acts_of(b, bx, [lb])[0] for bx, _ in data[:4]]
            want = reference.minibatch_cka(xs, ys, kernel=kernel, sigma=pair)
            assert res.matrix[i, j].item() == pytest.approx(want.item(), abs=1e-9), (i, j)
    assert res.estimator == "minibatch" and res.unbiased and res.n == 76 and res.batches == 5


def test_a_model_against_itself_eval_and_inference_modes_restored():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(6, 12), nn.Dropout(0.5), nn.BatchNorm1d(12), nn.Tanh(), nn.Linear(12, 4)).double()
    model.train()
    x = torch.randn(64, 6, dtype=F64)
    model(x)  # running stats away from their init
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads_seen = []
    model[0].register_forward_hook(lambda m, i, o: grads_seen.append(torch.is_inference_mode_enabled()))
    res = fastcka.compare(model, None, torch.split(x, 10), layers_a=["0", "2", "4"], progress=False)
    assert model.training and all(m.training for m in model.modules())  # restored
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # eval: BN stats untouched
    assert grads_seen and all(grads_seen)  # the forwards ran under inference_mode
    torch.testing.assert_close(res.matrix.diagonal(), torch.ones(3, dtype=F64), rtol=0, atol=0)
    torch.testing.assert_close(res.matrix, res.matrix.T, rtol=0, atol=1e-12)
    assert not res.matrix.is_inference()  # a plain tensor the caller may modify
    model.eval()
    want = [fastcka.cka(u, v).item() for u, v in [(model[0](x), model[:3](x)), (model[0](x), model(x))]]
    assert [res.matrix[0, 1].item(), res.matrix[0, 2].item()] == pytest.approx(want, abs=1e-9)  # no dropout in it
    assert all(not m._forward_pre_hooks and len(m._forward_hooks) == (1 if m is model[0] else 0)
               for m in model.modules())  # ours are gone; the user's stays
    mb = fastcka.compare(model, None, torch.split(x, 16), layers_a=["0", "2", "4"], estimator="minibatch",
                         progress=False)
    want = reference.minibatch_cka([model[0](c) for c in torch.split(x, 16)], [model(c) for c in torch.split(x, 16)])
    torch.testing.assert_close(mb.matrix.diagonal(), torch.ones(3, dtype=F64), rtol=0, atol=1e-12)
    assert mb.matrix[0, 2].item() == pytest.approx(want.item(), abs=1e-9)
    # layers_b other than layers_a on the same model: one forward, both lists
    res2 = fastcka.compare(model, model, torch.split(x, 10), layers_a=["0"], layers_b=["2", "4"], progress=False)
    torch.testing.assert_close(res2.matrix, res.matrix[:1, 1:], rtol=0, atol=1e-12)


def test_two_transformers_models_from_configs_over_a_dataloader():
    transformers = pytest.importorskip("transformers")
    from torch.utils.data import DataLoader

    def bert(layers, seed):
        torch.manual_seed(seed)
        cfg = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                                      intermediate_size=32, max_position_embeddings=16)
        return transformers.BertModel(cfg)

    a, b = bert(2, 0), bert(3, 1)
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 40, (45, 8), generator=g)
    ds = [{"input_ids": r, "attention_mask": torch.ones(8, dtype=torch.long)} for r in ids]
    loader = DataLoader(ds, batch_size=8)  # dict batches, the last one of 5
    res = fastcka.compare(a, b, loader, layers_a="encoder.layer.*", layers_b="encoder.layer.*", progress=False)
    assert res.layers_a == ["encoder.layer.0", "encoder.layer.1"] and res.matrix.shape == (2, 3)
    with torch.no_grad():
        ha = a.eval()(input_ids=ids, output_hidden_states=True).hidden_states[1:]
        hb = b.eval()(input_ids=ids, output_hidden_states=True).hidden_states[1:]
    want = torch.tensor([[fastcka.cka(u.mean(1), v.mean(1)).item() for v in hb] for u in ha], dtype=F64)
    torch.testing.assert_close(res.matrix, want, rtol=0, atol=1e-5)
    self_res = fastcka.compare(b, b, loader, layers_a="encoder.layer.*", progress=False, reduce=0)  # [CLS] token
    torch.testing.assert_close(self_res.matrix.diagonal(), torch.ones(3, dtype=F64), rtol=0, atol=0)


class Counting(nn.Module):
    def __init__(self, drop_last_row=False):
        super().__init__()
        self.calls = 0
        self.l1, self.l2, self.unused = nn.Linear(6, 8), nn.Linear(8, 4), nn.Linear(4, 4)
        self.drop = drop_last_row

    def forward(self, x):
        self.calls += 1
        h = self.l1(x[:-1] if self.drop else x)
        return self.l2(h)


def test_errors_come_before_any_accumulation_and_name_the_problem(monkeypatch):
    x = torch.randn(40, 6)
    data = list(torch.split(x, 8))
    m = Counting()
    with pytest.raises(ValueError, match=r"layers_b: 'l3' matches no module of Counting; close names: 'l2', 'l1'"):
        fastcka.compare(m, m, data, layers_a=["l1"], layers_b=["l3"], progress=False)
    with pytest.raises(ValueError, match="layers_a: 'blocks.*' matches no module"):
        fastcka.compare(m, None, data, layers_a="blocks.*", progress=False)
    assert m.calls == 0  # no forward pass for a bad name
    with pytest.raises(ValueError, match=r"layers_a: \['unused'\] of Counting did not run in the forward of batch 0"):
        fastcka.compare(m, None, data, layers_a=["l1", "unused"], progress=False)
    assert m.calls == 1  # found on the first batch
    with pytest.raises(ValueError, match="model_a's layers gave 8 rows and model_b's 7"):
        fastcka.compare(m, Counting(drop_last_row=True), data, layers_a=["l1"], progress=False)
    with pytest.raises(ValueError, match="no batch"):
        fastcka.compare(m, None, [], layers_a=["l1"], progress=False)
    with pytest.raises(ValueError, match="no batch"):
        fastcka.compare(m, None, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:0])),
                        layers_a=["l1"], progress=False)
    with pytest.raises(ValueError) as ei:
        fastcka.compare(m, None, data, layers_a=["l1", "l2"], max_memory=1000, progress=False)
    msg = str(ei.value)
    for part in ("'l1'", "8 features per example", "reduce=", "estimator='minibatch'", "max_memory", "KiB"):
        assert part in msg, (part, msg)
    mod = importlib.import_module("fastcka.compare")  # the submodule (the package attribute is the function)
    with monkeypatch.context() as mp:
        mp.setattr(mod, "_free_bytes", lambda device: 2000)  # the default limit: half the device's free memory
        msg = r"1\.5 KiB for all the layers, more than 1000 B \(half the free memory of cpu\)"
        with pytest.raises(ValueError, match=msg):
            fastcka.compare(m, None, data, layers_a=["l1", "l2"], progress=False)
    with pytest.raises(ValueError, match="exact estimator is linear only"):
        fastcka.compare(m, None, data, layers_a=["l1"], kernel="rbf", progress=False)
    with pytest.raises(ValueError, match="estimator must be"):
        fastcka.compare(m, None, data, layers_a=["l1"], estimator="full", progress=False)
    with pytest.raises(ValueError, match="sigma"):
        fastcka.compare(m, None, data, layers_a=["l1"], sigma=1.0, progress=False)
    with pytest.raises(ValueError, match="max_batches"):
        fastcka.compare(m, None, data, layers_a=["l1"], max_batches=0, progress=False)
    with pytest.raises(TypeError, match="iterable of batches"):
        fastcka.compare(m, None, x, layers_a=["l1"], progress=False)
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())
    assert m.training


def test_max_batches_progress_bar_and_input_fn(capsys):
    pytest.importorskip("tqdm")
    m = mlp()
    x = torch.randn(50, 6, dtype=F64)
    data = [{"x": c} for c in torch.split(x, 10)]
    res = fastcka.compare(m, None, data, layers_a=["0", "3"], input_fn=lambda b: b["x"], max_batches=3,
                          progress=True)
    assert (res.n, res.batches) == (30, 3)
    want = fastcka.cka(*acts_of(m, x[:30], [0, 3])).item()
    assert res["0", "3"] == pytest.approx(want, abs=1e-9)
    assert "fastcka.compare" in capsys.readouterr().err  # the bar was drawn


def test_result_save_load_repr_and_plot(tmp_path):
    m = mlp()
    res = fastcka.compare(m, mlp(seed=5), [torch.randn(20, 6, dtype=F64)], layers_a=["0", "3"],
                          layers_b=["0", "3", "6"], progress=False)
    for name in ("r.json", "r.pt"):
        res.save(tmp_path / name)
        back = CKAResult.load(tmp_path / name)
        assert torch.equal(back.matrix, res.matrix) and back.to_dict() == res.to_dict()
    text = repr(res)
    assert "Sequential vs Sequential" in text and "exact linear CKA (biased)" in text and "n=20" in text
    assert f"{res.matrix[1, 2].item():.4f}" in text

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"kind": "fastcka.CKAResult", "evil": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError):
        CKAResult.load(tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="not a saved fastcka.CKAResult"):
        CKAResult.from_dict({"matrix": [[1.0]]})

    pytest.importorskip("matplotlib")
    fig = res.plot(tmp_path / "r.png")
    ax = fig.axes[0]
    assert "Sequential vs Sequential" in ax.get_title() and ax.get_ylabel() == "Sequential"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "3", "6"]
    assert (tmp_path / "r.png").stat().st_size > 0


def test_cli_compares_two_grok_checkpoints_block_by_block(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from fastcka.cli import main
    from fastcka.grok.train import TrainConfig, build, save_checkpoint

    models = []
    for seed in (0, 1):
        cfg = TrainConfig(p=11, n_layers=3, d_model=16, n_heads=2, d_mlp=32, seed=seed, out=str(tmp_path / f"s{seed}"),
                          device="cpu")
        ds, model, opt, _ = build(cfg, torch.device("cpu"))
        (tmp_path / f"s{seed}").mkdir()
        save_checkpoint(tmp_path / f"s{seed}" / "checkpoint.pt", cfg, 5 + seed, model, opt, [], torch.zeros(()))
        models.append((ds, model))
    png, saved = tmp_path / "c.png", tmp_path / "c.json"
    rc = main(["compare", str(tmp_path / "s0"), str(tmp_path / "s1" / "checkpoint.pt"), "--out", str(png),
               "--save", str(saved), "--quiet", "--batch-size", "50"])
    out = capsys.readouterr().out
    assert rc == 0 and png.stat().st_size > 0 and "s0 (step 5) vs s1/checkpoint.pt (step 6)" in out
    res = CKAResult.load(saved)
    assert res.layers_a == res.layers_b == ["blocks.0", "blocks.1", "blocks.2"] and res.n == 121
    ds = models[0][0]
    x = torch.cat([ds.train_x, ds.test_x])  # run A's inputs, all of them
    with torch.no_grad():
        ra, rb = models[0][1](x)[1], models[1][1](x)[1]  # residual stream at the answer position after each block
    want = torch.tensor([[fastcka.cka(u, v).item() for v in rb] for u in ra], dtype=F64)
    torch.testing.assert_close(res.matrix, want, rtol=0, atol=1e-5)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"config": {}, "evil": Evil()}, tmp_path / "evil.pt")
    assert main(["compare", str(tmp_path / "evil.pt"), str(tmp_path / "s0"), "--out", ""]) == 2
    err = capsys.readouterr().err
    assert "A: " in err and "not a readable fastcka grok checkpoint" in err and "UnpicklingError" in err
    assert main(["compare", str(tmp_path / "s0"), str(tmp_path / "missing"), "--out", ""]) == 2
    assert "fastcka compare: error: B: " in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "s0"), str(tmp_path / "s1"), "--layers", "blokcs.*", "--out", ""]) == 2
    assert "error: --layers: 'blokcs.*' matches no module" in capsys.readouterr().err

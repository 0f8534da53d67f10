"""CKAMonitor in a plain training loop: values, layer resolution, output shapes, no host sync, memory, errors,
loggers, checkpoints."""

from __future__ import annotations

import builtins
import csv
import gc
import os
import traceback

import pytest
import torch
from torch import nn

import fastcka
from fastcka.monitor import CKAMonitor, CSVLogger, resolve_layers


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


# ---------------------------------------------------------------------------------------------------------------
# Small models
# ---------------------------------------------------------------------------------------------------------------

class Blocks(nn.Module):
    """(n, d) -> (n, d) through `blocks.i`; a stand-in for a residual network."""

    def __init__(self, d=8, depth=3, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.inp = nn.Linear(6, d)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(d, d), nn.Tanh()) for _ in range(depth))
        self.out = nn.Linear(d, 2)

    def forward(self, x):
        h = self.inp(x)
        for b in self.blocks:
            h = h + b(h)
        return self.out(h)


class TupleBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, h):
        return (torch.tanh(self.lin(h)), {"aux": h})  # a tuple, like HF layers' (hidden, attn)


class TokenNet(nn.Module):
    """(n, T) token ids -> (n, T, d) per block: sequence outputs, some returned as tuples."""

    def __init__(self, vocab=11, d=8, depth=2, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(TupleBlock(d) for _ in range(depth))
        self.head = nn.Linear(d, vocab)

    def forward(self, ids):
        h = self.emb(ids)
        for b in self.blocks:
            h = h + b(h)[0]
        return self.head(h)


class ConvNet(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = torch.relu(self.c1(x))
        h = self.bn(torch.relu(self.c2(h)))
        return self.head(h.mean((2, 3)))


def capture(model, names, fn):
    """Outputs of the named modules during fn(), through our own hooks (the test's independent path)."""
    mods = dict(model.named_modules())
    got = {}
    hs = [mods[n].register_forward_hook(lambda m, i, o, n=n: got.__setitem__(n, o)) for n in names]
    try:
        fn()
    finally:
        for h in hs:
            h.remove()
    return got


def sgd_step(model, opt, x, y):
    loss = nn.functional.mse_loss(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


# ---------------------------------------------------------------------------------------------------------------
# Layer names
# ---------------------------------------------------------------------------------------------------------------

def test_layers_names_and_globs_resolve_in_order():
    m = Blocks()
    assert resolve_layers(m, "blocks.*") == ["blocks.0", "blocks.1", "blocks.2"]  # `*` stays in one segment
    assert resolve_layers(m, ["out", "blocks.[02]"]) == ["out", "blocks.0", "blocks.2"]
    assert "blocks.0.0" in resolve_layers(m, "blocks.**")
    mon = CKAMonitor(m, ["inp", "blocks.*"])
    assert mon.layers == ["inp", "blocks.0", "blocks.1", "blocks.2"]
    assert mon.pairs == [("inp", "blocks.0"), ("blocks.0", "blocks.1"), ("blocks.1", "blocks.2")]
    assert mon.names[0] == "cka/inp/blocks.0"
    mon.close()
    mon = CKAMonitor(m, "blocks.*", pairs=[(0, 2), ("blocks.1", "blocks.2")])
    assert mon.pairs == [("blocks.0", "blocks.2"), ("blocks.1", "blocks.2")]
    mon.close()


def test_unknown_layer_raises_value_error_with_close_names():
    m = Blocks()
    with pytest.raises(ValueError) as ei:
        CKAMonitor(m, ["blocks.0", "blokcs.1"])
    msg = str(ei.value)
    assert "'blokcs.1'" in msg and "blocks.1" in msg and "close names" in msg
    with pytest.raises(ValueError, match="matches no module"):
        CKAMonitor(m, ["layers.*"])
    assert all(not mod._forward_hooks for mod in m.modules())  # nothing left behind
    with pytest.raises(ValueError, match="at least two layers"):
        CKAMonitor(m, ["inp"])
    with pytest.raises(ValueError, match="not one of the monitored layers"):
        CKAMonitor(m, ["inp", "out"], pairs=[("inp", "oot")])


# ---------------------------------------------------------------------------------------------------------------
# Values equal fastcka.cka on the same activations
# ---------------------------------------------------------------------------------------------------------------

def test_probe_mode_values_equal_fastcka_cka():
    m = Blocks()
    opt = torch.optim.SGD(m.parameters(), lr=0.2)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 6, generator=g), torch.randn(64, 2, generator=g)
    probe = torch.randn(40, 6, generator=g)
    layers = ["blocks.0", "blocks.1", "blocks.2"]
    mon = CKAMonitor(m, "blocks.*", probe=probe, every=2, flush_every=1000)
    expected = []
    for _ in range(8):
        sgd_step(m, opt, x, y)
        mon.step()
        if mon.step_count % 2 == 0:
            with torch.no_grad():
                acts = capture(m, layers, lambda: m(probe))
            expected.append([fastcka.cka(acts[a], acts[b]).item() for a, b in zip(layers, layers[1:])])
    assert mon.history == {"step": [], "cka/blocks.0/blocks.1": [], "cka/blocks.1/blocks.2": []}
    mon.close()  # flushes
    assert mon.history["step"] == [2, 4, 6, 8]
    got = [[mon.history[n][i] for n in mon.names] for i in range(4)]
    torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-6)
    assert len(set(mon.history["cka/blocks.0/blocks.1"])) == 4  # training moves the value


def test_training_batch_mode_position_and_rows_equal_fastcka_cka():
    m = TokenNet()
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 11, (48, 5), generator=g)
    target = torch.randint(0, 11, (48, 5), generator=g)
    rows = torch.randperm(48, generator=g)[:30]
    layers = ["emb", "blocks.0", "blocks.1"]
    mon = CKAMonitor(m, layers, pairs="all", batch_rows=rows, flush_every=1000)
    expected = []
    for _ in range(4):
        def train():
            loss = nn.functional.cross_entropy(m(ids).flatten(0, 1), target.flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()

        acts = capture(m, layers, train)
        feats = {n: (o[0] if isinstance(o, tuple) else o).detach()[:, -1][rows] for n, o in acts.items()}
        expected.append([fastcka.cka(feats[a], feats[b]).item() for a, b in mon.pairs])
        mon.step()
    mon.flush()
    got = [[mon.history[n][i] for n in mon.names] for i in range(4)]
    torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-6)
    # the full matrix on request agrees with the pairs
    mat = mon.matrix(ids[rows])
    assert mat.shape == (3, 3)
    torch.testing.assert_close(mat, mat.T)
    torch.testing.assert_close(mat.diagonal(), torch.ones(3, dtype=mat.dtype))
    mon.close()


def test_output_kinds_tuple_mapping_4d_position_tensor_and_reduce():
    conv = ConvNet()
    x = torch.randn(12, 3, 6, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        conv.eval()
        acts = capture(conv, ["c1", "c2"], lambda: conv(x))
    conv.train()
    for reduce, f in [(None, lambda t: t.flatten(1)), ("mean", lambda t: t.mean((2, 3))), ("max", lambda t: t.amax((2, 3)))]:
        mon = CKAMonitor(conv, ["c1", "c2"], probe=x, reduce=reduce)
        mon.step()
        mon.close()
        want = fastcka.cka(f(acts["c1"]), f(acts["c2"])).item()
        assert mon.history["cka/c1/c2"] == [pytest.approx(want, rel=1e-6)]
    assert conv.training and conv.bn.training  # probe ran in eval mode, modes restored

    tok = TokenNet()
    ids = torch.randint(0, 11, (10, 4), generator=torch.Generator().manual_seed(4))
    pos = torch.tensor([3, 2, 1, 0, 3, 2, 1, 0, 1, 2])
    with torch.no_grad():
        tok.eval()
        acts = capture(tok, ["blocks.0", "blocks.1"], lambda: tok(ids))
    a0, a1 = acts["blocks.0"][0], acts["blocks.1"][0]
    cases = [
        (dict(position=pos), lambda t: t[torch.arange(10), pos]),
        (dict(position=1), lambda t: t[:, 1]),
        (dict(reduce="mean"), lambda t: t.mean(1)),
        (dict(reduce="flatten"), lambda t: t.flatten(1)),
        (dict(reduce=lambda t: t[:, :2].sum(1)), lambda t: t[:, :2].sum(1)),
    ]
    for kw, f in cases:
        mon = CKAMonitor(tok, "blocks.*", probe=ids, **kw)
        mon.step()
        mon.close()
        assert mon.history["cka/blocks.0/blocks.1"] == [pytest.approx(fastcka.cka(f(a0), f(a1)).item(), rel=1e-6)]

    # a mapping output (like a ModelOutput) gives its last_hidden_state
    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)

        def forward(self, z):
            return {"logits": self.b(self.a(z)), "last_hidden_state": self.a(z)}

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Wrap()
            self.head = nn.Linear(4, 3)

        def forward(self, z):
            return self.head(self.inner(z)["logits"])

    o = Outer()
    z = torch.randn(9, 4)
    mon = CKAMonitor(o, ["inner.a", "inner"], probe=z)
    mon.step()
    mon.close()
    assert mon.history["cka/inner.a/inner"] == [pytest.approx(1.0, abs=1e-6)]  # inner gives a(z) itself


# ---------------------------------------------------------------------------------------------------------------
# No host sync on the step path
# ---------------------------------------------------------------------------------------------------------------

def _raiser(name):
    def f(*a, **k):
        raise AssertionError(f"host sync on the step path: {name}")

    return f


@pytest.mark.parametrize("mode", ["probe", "batch"])
def test_no_host_sync_during_monitored_steps(monkeypatch, mode):
    m = TokenNet()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 11, (32, 5), generator=g)
    target = torch.randint(0, 11, (32 * 5,), generator=g)
    kw = dict(probe=ids[:20]) if mode == "probe" else dict(batch_rows=torch.arange(20))
    mon = CKAMonitor(m, ["emb", "blocks.*"], pairs="all", flush_every=1000, logger=lambda s, d: None,
                     keep_history=True, **kw)
    # warm up once so lazy imports and allocations happen outside the patched window
    loss = nn.functional.cross_entropy(m(ids).flatten(0, 1), target)
    loss.backward()
    opt.step()
    mon.step()
    names = ["item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__"]
    with monkeypatch.context() as mp:
        for n in names:
            mp.setattr(torch.Tensor, n, _raiser(f"Tensor.{n}"))
        mp.setattr(builtins, "print", _raiser("print"))
        real_to = torch.Tensor.to

        def to(self, *a, **k):  # a move to the host is a sync on an accelerator
            dev = k.get("device", a[0] if a else None)
            if isinstance(dev, (str, torch.device)) and torch.device(dev).type == "cpu":
                raise AssertionError("host sync on the step path: Tensor.to('cpu')")
            return real_to(self, *a, **k)

        mp.setattr(torch.Tensor, "to", to)
        for _ in range(20):
            loss = nn.functional.cross_entropy(m(ids).flatten(0, 1), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step()
        with pytest.raises(AssertionError, match="host sync"):  # the patch is live: flush is the one reader
            mon.flush()
    mon.flush()  # only flush reads
    assert mon.history["step"] == list(range(1, 22))
    assert all(0.0 <= v <= 1.0 + 1e-6 for v in mon.history[mon.names[0]])
    mon.close()


# ---------------------------------------------------------------------------------------------------------------
# Memory and hooks
# ---------------------------------------------------------------------------------------------------------------

def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _live_tensors():
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is torch.Tensor or type(o) is nn.Parameter)


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc for RSS")
def test_memory_flat_over_5000_monitored_steps_and_hooks_gone_after_close():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    seen = []
    mon = CKAMonitor(m, ["1", "3"], flush_every=250, logger=lambda s, d: seen.append(s), keep_history=False)

    def run(k):
        for _ in range(k):
            loss = nn.functional.mse_loss(m(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            mon.step()

    run(500)
    t0, r0 = _live_tensors(), _rss_bytes()
    run(4500)
    t1, r1 = _live_tensors(), _rss_bytes()
    assert len(seen) == 5000 and seen[-1] == 5000
    assert t1 == t0, f"live tensors grew from {t0} to {t1}"
    assert r1 - r0 < 4 * 2**20, f"RSS grew by {(r1 - r0) / 2**20:.1f} MiB over 4,500 monitored steps"
    assert not mon._capture.activations
    hooked = [m[1], m[3]]
    assert all(len(mod._forward_hooks) == 1 for mod in hooked)
    mon.close()
    assert all(len(mod._forward_hooks) == 0 for mod in hooked)
    with pytest.raises(RuntimeError, match="after close"):
        mon.step()


def test_context_manager_removes_hooks_on_exception_and_keeps_values():
    m = Blocks()
    got = []
    with pytest.raises(KeyError):
        with CKAMonitor(m, "blocks.*", probe=torch.randn(8, 6), logger=lambda s, d: got.append(s)) as mon:
            mon.step()
            raise KeyError("boom")
    assert got == [1]  # pending values were flushed
    assert all(not mod._forward_hooks for mod in m.modules())
    with CKAMonitor(m, "blocks.*", probe=torch.randn(8, 6)) as mon:
        mon.step()
    assert all(not mod._forward_hooks for mod in m.modules())


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------

def test_wrong_probe_shape_raises_the_models_error_once_with_context():
    m = Blocks()
    calls = []
    m.inp.register_forward_pre_hook(lambda mod, inp: calls.append(1))
    mon = CKAMonitor(m, "blocks.*", probe=torch.randn(8, 5))
    with pytest.raises(RuntimeError) as ei:
        mon.step()
    e = ei.value
    assert "mat1 and mat2" in str(e)  # the model's own error, same type
    assert any("CKAMonitor" in n and "probe" in n and "(8, 5)" in n for n in getattr(e, "__notes__", [str(e)]))
    assert e.__cause__ is None and e.__context__ is None  # not chained: raised once
    text = "".join(traceback.format_exception(e))
    assert text.count("mat1 and mat2") == 1 and "During handling" not in text
    assert len(calls) == 1  # no retry
    assert m.training and all(mod.training for mod in m.modules())  # modes restored
    assert not mon._in_probe and not mon._capture.activations
    mon.close()


def test_batch_mode_without_forward_and_bad_arguments():
    m = Blocks()
    mon = CKAMonitor(m, "blocks.*")
    with pytest.raises(RuntimeError, match="no training-mode forward"):
        mon.step()
    mon.close()
    with pytest.raises(ValueError, match="every"):
        CKAMonitor(m, "blocks.*", every=0)
    with pytest.raises(ValueError, match="reduce"):
        CKAMonitor(m, "blocks.*", reduce="median")
    with pytest.raises(ValueError, match="batch_rows"):
        CKAMonitor(m, "blocks.*", probe=torch.randn(4, 6), batch_rows=torch.arange(2))
    with pytest.raises(TypeError, match="logger"):
        CKAMonitor(m, "blocks.*", logger=42)
    assert all(not mod._forward_hooks for mod in m.modules())


# ---------------------------------------------------------------------------------------------------------------
# Cadence, loggers, checkpoints
# ---------------------------------------------------------------------------------------------------------------

def test_every_and_flush_every_cadence():
    m = Blocks()
    calls = []
    mon = CKAMonitor(m, "blocks.*", probe=torch.randn(8, 6), every=3, flush_every=10,
                     logger=lambda s, d: calls.append((mon.step_count, s, sorted(d))))
    mon.measure()  # step 0, before training
    for _ in range(21):
        mon.step()
    assert [(at, s) for at, s, _ in calls] == [(10, 0), (10, 3), (10, 6), (10, 9), (20, 12), (20, 15), (20, 18)]
    assert calls[0][2] == ["cka/blocks.0/blocks.1", "cka/blocks.1/blocks.2"]
    assert mon.last.shape == (2,) and mon._rows == 1  # step 21 waits for the next flush
    mon.close()
    assert calls[-1][1] == 21


def test_csv_and_tensorboard_loggers(tmp_path):
    m = Blocks()
    path = tmp_path / "cka.csv"
    mon = CKAMonitor(m, "blocks.*", probe=torch.randn(8, 6), every=2, flush_every=4, logger=str(path))
    for _ in range(6):
        mon.step()
    mon.close()
    rows = list(csv.DictReader(open(path)))
    assert [r["step"] for r in rows] == ["2", "4", "6"]
    assert set(rows[0]) == {"step", "cka/blocks.0/blocks.1", "cka/blocks.1/blocks.2"}
    assert 0 <= float(rows[0]["cka/blocks.0/blocks.1"]) <= 1

    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "tb"))
    mon = CKAMonitor(m, "blocks.*", probe=torch.randn(8, 6), flush_every=2, logger=[writer, CSVLogger(tmp_path / "b.csv")])
    for _ in range(3):
        mon.step()
    mon.close()
    writer.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    ev = acc.Scalars("cka/blocks.0/blocks.1")
    assert [e.step for e in ev] == [1, 2, 3]
    assert len(list(csv.DictReader(open(tmp_path / "b.csv")))) == 3


def test_state_dict_resume_continues_the_series(tmp_path):
    path = tmp_path / "series.csv"
    probe = torch.randn(8, 6, generator=torch.Generator().manual_seed(7))
    m = Blocks()
    mon = CKAMonitor(m, "blocks.*", probe=probe, every=1, flush_every=4, logger=CSVLogger(path), keep_history=True)
    for _ in range(10):
        mon.step()
    state = mon.state_dict()  # steps 9, 10 not flushed yet: carried in the state, no logger call
    assert state["step"] == 10 and [s for s, _ in state["pending"]] == [9, 10]
    assert [int(r["step"]) for r in csv.DictReader(open(path))] == list(range(1, 9))
    mon.remove_hooks()  # the process "dies" without flushing

    m2 = Blocks()
    m2.load_state_dict(m.state_dict())
    mon2 = CKAMonitor(m2, "blocks.*", probe=probe, every=1, flush_every=4, logger=CSVLogger(path), keep_history=True)
    mon2.load_state_dict(state)
    for _ in range(5):
        mon2.step()
    mon2.close()
    steps = [int(r["step"]) for r in csv.DictReader(open(path))]
    assert steps == list(range(1, 16))
    assert mon2.history["step"] == list(range(1, 16))
    with pytest.raises(ValueError, match="measured"):
        CKAMonitor(m2, ["blocks.0", "blocks.2"]).load_state_dict(state)


# ---------------------------------------------------------------------------------------------------------------
# Fixes from a review: in-place ops, step jumps, RBF σ, early validation, mismatched rows
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("probe", [False, True])
def test_in_place_op_after_a_hooked_layer_does_not_change_the_value(probe):
    torch.manual_seed(7)
    m = nn.Sequential(nn.Linear(6, 8), nn.ReLU(inplace=True), nn.Linear(8, 8), nn.ReLU(inplace=True), nn.Linear(8, 2))
    x = torch.randn(50, 6)
    with torch.no_grad():  # the true outputs of layers 0 and 2, before ReLU(inplace) rewrites them
        a = m[0](x)
        b = m[2](torch.relu(a))
        want = fastcka.cka(a, b).item()
    mon = CKAMonitor(m, ["0", "2"], flush_every=1000, **({"probe": x} if probe else {}))
    if not probe:
        m(x).sum().backward()
    mon.step()
    mon.close()
    assert mon.history["cka/0/2"][0] == pytest.approx(want, rel=1e-6)
    assert want != pytest.approx(fastcka.cka(torch.relu(a), b).item(), rel=1e-3)  # the test can tell them apart


def test_step_jumps_skip_with_a_warning_and_follow_a_stride_of_two():
    m = Blocks()
    x = torch.randn(20, 6)
    mon = CKAMonitor(m, "blocks.*", every=4, flush_every=1000)
    m(x)
    mon.step(step=1)
    with pytest.warns(RuntimeWarning, match="jump in the step count"):
        m(x)
        mon.step(step=4)  # armed for 2 (and a stride of 1), not 4: skipped, not a crash
    for s in (6, 8, 10, 12):  # two optimizers per batch: the step moves by 2, and 8 and 12 are measured
        m(x)
        mon.step(step=s)
    mon.close()
    assert mon.history["step"] == [8, 12]


def test_rbf_sigma_reaches_cka_and_bad_kernel_fails_at_construction():
    m = Blocks()
    probe = torch.randn(30, 6)
    mon = CKAMonitor(m, ["blocks.0", "blocks.1"], probe=probe, kernel="rbf", sigma=2.0, flush_every=1000)
    mon.measure()
    mon.close()
    acts = capture(m, ["blocks.0", "blocks.1"], lambda: m(probe))
    want = fastcka.cka(acts["blocks.0"].detach(), acts["blocks.1"].detach(), kernel="rbf", sigma=2.0).item()
    assert mon.history["cka/blocks.0/blocks.1"][0] == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="kernel must be"):
        CKAMonitor(m, "blocks.*", kernel="rbff")
    with pytest.raises(ValueError, match="needs kernel='rbf'"):
        CKAMonitor(m, "blocks.*", sigma=1.0)
    assert all(not mod._forward_hooks for mod in m.modules())


def test_layers_with_different_rows_are_named():
    class TwoShapes(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):  # b sees the tokens flattened: (n·T, d) rows against a's (n, d)
            return self.b(x.reshape(-1, 8)).sum() + self.a(x[:, 0]).sum()

    m = TwoShapes()
    mon = CKAMonitor(m, ["a", "b"], probe=torch.randn(4, 5, 8))
    with pytest.raises(ValueError, match=r"different numbers of examples.*'a': 4, 'b': 20"):
        mon.measure()
    mon.close()


def test_a_dropped_monitor_takes_its_hooks_with_it():
    m = Blocks()
    probe = torch.randn(10, 6)
    for _ in range(3):  # a notebook cell run three times, the monitor never closed
        CKAMonitor(m, "blocks.*", probe=probe)
    gc.collect()
    assert all(not mod._forward_hooks for mod in m.modules())
    kept = CKAMonitor(m, "blocks.*", probe=probe)  # one that is held keeps its hooks
    gc.collect()
    assert sum(len(mod._forward_hooks) for mod in m.modules()) == 3
    kept.close()


def test_other_ranks_compute_but_do_not_log(monkeypatch):
    import fastcka.monitor as M

    monkeypatch.setattr(M, "_dist_rank", lambda: 1)
    logged = []
    m = Blocks()
    mon = CKAMonitor(m, "blocks.*", probe=torch.randn(10, 6), logger=lambda s, d: logged.append(s), flush_every=1)
    mon.step()
    assert mon.last is not None and logged == []  # computed, never logged
    mon.close()
    everyone = CKAMonitor(m, "blocks.*", probe=torch.randn(10, 6), logger=lambda s, d: logged.append(s), flush_every=1,
                          rank_zero_only=False)
    everyone.step()
    everyone.close()
    assert logged == [1]


# ---------------------------------------------------------------------------------------------------------------
# Regressions (issue 18): W3 matrix() uses the monitor's sigma/threshold; W4 a module called twice per forward
# ---------------------------------------------------------------------------------------------------------------

def test_matrix_uses_the_monitors_sigma_and_threshold():
    m = Blocks()
    probe = torch.randn(50, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float32)
    with torch.no_grad():
        acts = capture(m, ["blocks.0", "blocks.2"], lambda: m(probe))
    a, b = acts["blocks.0"], acts["blocks.2"]
    want = fastcka.cka(a, b, kernel="rbf", sigma=0.3).item()
    median = fastcka.cka(a, b, kernel="rbf").item()
    assert abs(want - median) > 1e-2  # the test can tell the two apart
    mon = CKAMonitor(m, ["blocks.0", "blocks.2"], probe=probe, kernel="rbf", sigma=0.3)
    mat = mon.matrix()
    assert mat[0, 1].item() == pytest.approx(want, rel=1e-5)
    mon.step()
    assert mon.last[0].item() == pytest.approx(mat[0, 1].item(), rel=1e-6)  # the logged value and matrix() agree
    mon.close()
    mon = CKAMonitor(m, ["blocks.0", "blocks.2"], probe=probe, kernel="rbf", threshold=0.5)
    assert mon.matrix()[0, 1].item() == pytest.approx(fastcka.cka(a, b, kernel="rbf", threshold=0.5).item(), rel=1e-5)
    mon.close()
    mon = CKAMonitor(m, ["blocks.0", "blocks.2"], probe=probe, kernel="rbf", sigma=(0.3, 0.5))
    with pytest.raises(ValueError, match="one sigma"):
        mon.matrix()
    mon.close()


class Twice(nn.Module):
    """`block` runs twice in one forward (weights shared), `head` after it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(11)
        self.inp = nn.Linear(6, 8)
        self.block = nn.Sequential(nn.Linear(8, 8), nn.Tanh())
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        h = self.inp(x)
        return self.head(self.block(self.block(h)))


@pytest.mark.parametrize("stop_early", [True, False])
def test_a_module_called_twice_is_measured_at_its_first_call(stop_early):
    m = Twice()
    probe = torch.randn(40, 6, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        h = m.inp(probe)
        first = m.block(h)
        second = m.block(first)
    want = fastcka.cka(h, first).item()
    assert abs(want - fastcka.cka(h, second).item()) > 1e-3  # first and last call differ
    mon = CKAMonitor(m, ["inp", "block"], probe=probe, stop_early=stop_early)
    mon.step()
    assert mon.last[0].item() == pytest.approx(want, rel=1e-6)
    mon.close()
    # training-batch mode: first call of the last forward of the model
    mon = CKAMonitor(m, ["inp", "block"])
    m(torch.randn(40, 6))  # an earlier forward: replaced by the next one
    m(probe).sum().backward()
    mon.step()
    assert mon.last[0].item() == pytest.approx(want, rel=1e-5)
    mon.close()

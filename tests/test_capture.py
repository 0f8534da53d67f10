"""fastcka.capture: layer resolution, output kinds and reductions, copies, the first-call rule, hook lifetime."""

from __future__ import annotations

import gc

import pytest
import torch
from torch import nn

from fastcka.capture import Capture, StopForward, feed, resolve_layers


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(11, 8)
        self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(3))
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, ids):
        h = self.emb(ids)  # (n, T, 8)
        outs = []
        for b in self.blocks:
            h = b(h)
            outs.append(h)
        img = self.conv(h[:, :2, :].reshape(h.shape[0], 2, 2, 4))  # (n, 3, 2, 4)
        self.relu(img)  # in place after a hooked layer
        return {"last_hidden_state": h, "img": img}


def hooks(m):
    return sum(len(x._forward_hooks) + len(x._forward_pre_hooks) for x in m.modules())


def test_reductions_of_token_and_map_outputs():
    m = Net()
    ids = torch.randint(0, 11, (5, 4), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        h0 = m.blocks[0](m.emb(ids))
        out = m(ids)
    img = out["img"]
    pos = torch.tensor([0, 3, 1, 2, 0])
    cases = [("mean", h0.mean(1), None), ("max", h0.amax(1), None), ("flatten", h0.flatten(1), None),
             (-1, h0[:, -1], None), (0, h0[:, 0], None), (pos, h0[torch.arange(5), pos], None),
             (lambda t: t[:, 1:3].sum(1), h0[:, 1:3].sum(1), None)]
    for reduce, want, _ in cases:
        with Capture(m, ["blocks.0", "conv"], reduce=reduce) as cap, torch.no_grad():
            acts = cap.run(m, ids)
        torch.testing.assert_close(acts["blocks.0"], want)
        assert acts["blocks.0"].dim() == 2
    with Capture(m, "conv", reduce="mean") as cap, torch.no_grad():
        got = cap.run(m, ids)["conv"]
    # the kept conv output is a copy taken before the in-place ReLU: it has negative values, img does not
    assert (got < 0).any()
    conv_out = m.conv(m.blocks[2](m.blocks[1](h0))[:, :2, :].reshape(5, 2, 2, 4)).detach()
    torch.testing.assert_close(got, conv_out.mean((2, 3)))
    with Capture(m, "conv", reduce=None) as cap, torch.no_grad():
        torch.testing.assert_close(cap.run(m, ids)["conv"], conv_out.flatten(1))
    assert (img >= 0).all()


def test_bad_arguments_and_close_names():
    m = Net()
    with pytest.raises(ValueError, match="close names: 'blocks.1'"):
        Capture(m, ["blokcs.1"])
    with pytest.raises(ValueError, match="layers_b: 'nope' matches no module"):
        resolve_layers(m, ["nope"], "layers_b")
    with pytest.raises(ValueError, match="reduce must be one of"):
        Capture(m, "blocks.*", reduce="median")
    with pytest.raises(TypeError, match="got bool"):
        Capture(m, "blocks.*", reduce=True)
    with pytest.raises(ValueError, match="position tensor"):
        Capture(m, "blocks.*", reduce=torch.tensor([0.5]))
    assert hooks(m) == 0


def test_first_call_of_a_module_per_forward_and_stop_early():
    lin = nn.Linear(4, 4)
    head = nn.Linear(4, 1)
    calls = []

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.head = lin, head

        def forward(self, x):
            calls.append("fwd")
            y = self.lin(self.lin(x))
            calls.append("head")
            return self.head(y)

    m = Twice()
    x = torch.randn(6, 4)
    with torch.no_grad():
        first = lin(x)
        other = torch.randn(6, 4)
        for stop in (False, True):
            calls.clear()
            with Capture(m, "lin", stop_early=stop) as cap:
                torch.testing.assert_close(cap.run(m, x)["lin"], first)
                assert calls == (["fwd"] if stop else ["fwd", "head"])  # stop_early cut the forward short
                if not stop:
                    m(other)  # a new forward of the model starts a new capture
                    torch.testing.assert_close(cap.activations["lin"], lin(other))
    with pytest.raises(StopForward):  # outside run() the StopForward reaches the caller
        with Capture(m, "lin", stop_early=True):
            m(x)
    assert hooks(m) == 0


def test_hooks_removed_on_exit_on_exception_and_when_dropped():
    m = Net()
    with pytest.raises(RuntimeError, match="boom"):
        with Capture(m, "blocks.*"):
            assert hooks(m) == 4  # three layers and the model's pre-hook
            raise RuntimeError("boom")
    assert hooks(m) == 0
    cap = Capture(m, "blocks.*")
    assert hooks(m) == 4
    del cap
    gc.collect()
    assert hooks(m) == 0


def test_feed_and_output_kinds():
    seen = []

    class Any_(nn.Module):
        def forward(self, *a, **k):
            seen.append((len(a), sorted(k)))
            return a[0] if a else k["x"]

    m = Any_()
    t = torch.zeros(2, 3)
    feed(m, t)
    feed(m, (t, t))
    feed(m, {"x": t})
    assert seen == [(1, []), (2, []), (0, ["x"])]

    class Kinds(nn.Module):
        def __init__(self):
            super().__init__()
            self.tup = nn.Identity()

        def forward(self, x):
            return self.tup((None, [x * 2, x]))

    k = Kinds()
    with Capture(k, "tup") as cap:
        torch.testing.assert_close(cap.run(k, t)["tup"], t * 2)  # first tensor, searched depth first

    class NoTensor(nn.Module):
        def forward(self, x):
            return "text"

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = NoTensor()

        def forward(self, x):
            return self.inner(x)

    o = Outer()
    with Capture(o, "inner") as cap, pytest.raises(TypeError, match="'inner' returned str"):
        cap.run(o, t)

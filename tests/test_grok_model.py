"""The grokking model and data: the fast forward equals the plain forward; the tasks are what they say."""

import pytest
import torch

from fastcka.grok.data import make_dataset, modular_table, parity_table
from fastcka.grok.model import ModelConfig, Transformer

torch.set_num_threads(1)


@pytest.mark.parametrize("layer_norm", [False, True])
@pytest.mark.parametrize("n_layers", [1, 2, 3])
@pytest.mark.parametrize("task", ["add", "parity"])
def test_fast_forward_equals_plain_forward(layer_norm, n_layers, task):
    ds = make_dataset(task, p=11, train_frac=0.5, seed=0, n_bits=6, k=2)
    torch.manual_seed(0)
    cfg = ModelConfig(ds.vocab_size, ds.n_classes, ds.seq_len, n_layers, d_model=16, n_heads=2, d_mlp=32,
                      layer_norm=layer_norm)
    model = Transformer(cfg).double()
    outs = {}
    for fast in (True, False):
        logits, resid = model(ds.train_x, fast=fast)
        loss = logits.logsumexp(-1).sum() + sum((r**2).sum() for r in resid)  # touches every output
        grads = torch.autograd.grad(loss, list(model.parameters()))
        outs[fast] = (logits, resid, grads)
    (l1, r1, g1), (l2, r2, g2) = outs[True], outs[False]
    torch.testing.assert_close(l1, l2, rtol=1e-10, atol=1e-10)
    for a, b in zip(r1, r2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10 * max(1.0, b.abs().max().item()))


def test_block_hooks_see_the_answer_position_once_per_forward():
    ds = make_dataset("add", p=7, train_frac=0.5, seed=0)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(ds.vocab_size, ds.n_classes, ds.seq_len, d_model=16, n_heads=2, d_mlp=32))
    seen = []
    hooks = [b.register_forward_hook(lambda m, i, o: seen.append(o[:, -1])) for b in model.blocks]
    for fast in (True, False):
        seen.clear()
        _, resid = model(ds.train_x, fast=fast)
        assert len(seen) == 2
        for a, b in zip(seen, resid):
            torch.testing.assert_close(a, b)
    for h in hooks:
        h.remove()


def test_modular_tables():
    p = 7
    for task, op in [("add", lambda a, b: (a + b) % p), ("sub", lambda a, b: (a - b) % p),
                     ("mul", lambda a, b: (a * b) % p), ("div", lambda a, b: (a * pow(b, -1, p)) % p)]:
        x, y = modular_table(task, p)
        assert x.shape == ((p * (p - 1), 3) if task == "div" else (p * p, 3))
        assert (x[:, 2] == p).all()
        assert all(op(int(a), int(b)) == int(c) for (a, b, _), c in zip(x.tolist(), y))


def test_parity_sample_is_distinct_seeded_and_labelled():
    for n_bits, n in ((10, 300), (30, 2000)):
        x, y = parity_table(n_bits, 3, seed=2, n_samples=n)
        assert x.shape == (n, n_bits + 1) and (x[:, -1] == 2).all()
        assert torch.unique(x, dim=0).shape[0] == n  # distinct: no string in both train and test
        x2, y2 = parity_table(n_bits, 3, seed=2, n_samples=n)
        assert torch.equal(x, x2) and torch.equal(y, y2)
        assert not torch.equal(x, parity_table(n_bits, 3, seed=3, n_samples=n)[0])
        # the label is the parity of the same k positions in every string: find them from the full table's seed
        relevant = torch.randperm(n_bits, generator=torch.Generator().manual_seed(2))[:3]
        assert torch.equal(y, x[:, relevant].sum(1) % 2)
    x, _ = parity_table(17, 3, seed=0)  # more than 16 bits, no n_samples: 2^16 distinct strings
    assert torch.unique(x, dim=0).shape[0] == 2**16
    with pytest.raises(ValueError, match="--n-samples"):
        parity_table(4, 2, seed=0, n_samples=17)
    with pytest.raises(ValueError, match="--n-bits"):
        parity_table(63, 2, seed=0, n_samples=10)
    ds = make_dataset("parity", train_frac=0.25, seed=1, n_bits=20, k=3, n_samples=400)
    assert ds.train_x.shape == (100, 21) and ds.test_x.shape == (300, 21)


def test_parity_table_and_split_are_seeded():
    x, y = parity_table(6, 3, seed=1)
    assert x.shape == (64, 7) and set(y.tolist()) == {0, 1}
    x2, y2 = parity_table(6, 3, seed=1)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    a, b = make_dataset("add", p=11, train_frac=0.3, seed=4), make_dataset("add", p=11, train_frac=0.3, seed=4)
    assert torch.equal(a.train_x, b.train_x) and a.train_x.shape[0] == round(0.3 * 121)
    c = make_dataset("add", p=11, train_frac=0.3, seed=5)
    assert not torch.equal(a.train_x, c.train_x)

"""Exact streaming CKA (fastcka.streaming): single-process tests against the float64 one-shot reference."""

from __future__ import annotations

import io

import pytest
import torch

from fastcka import reference as ref
from fastcka.streaming import LinearCKA, LinearCKAMatrix, MinibatchCKA, MinibatchCKAMatrix

F64 = torch.float64
# 17 uneven batch sizes from 1 to 4096 (16 640 rows in all)
SIZES = [1, 4096, 3, 17, 256, 1000, 2, 4095, 64, 7, 999, 2048, 5, 300, 1, 777, 2969]
OFFSET = 1e3


def stream_data(n: int, p: int = 8, q: int = 5, seed: int = 0, offset: float = OFFSET):
    """x, y sharing a low-rank signal; every column's mean is ``offset`` times the spread (with mixed signs)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 3, generator=g, dtype=F64)
    x = z @ torch.randn(3, p, generator=g, dtype=F64) + 0.8 * torch.randn(n, p, generator=g, dtype=F64)
    y = z @ torch.randn(3, q, generator=g, dtype=F64) + 0.8 * torch.randn(n, q, generator=g, dtype=F64)
    sx = torch.where(torch.arange(p) % 2 == 0, 1.0, -1.0).to(F64)
    sy = torch.where(torch.arange(q) % 3 == 0, -1.0, 1.0).to(F64)
    return x + offset * sx * x.std(0), y + offset * sy * y.std(0)


def batches(n_rows_list, *tensors):
    i = 0
    for s in n_rows_list:
        yield tuple(t[i : i + s] for t in tensors)
        i += s


def rel(a, b) -> float:
    a, b = float(a), float(b)
    return abs(a - b) / max(abs(b), 1e-300)


@pytest.mark.parametrize("debiased", [False, True])
def test_uneven_batches_with_large_offset_equal_one_shot(debiased):
    x, y = stream_data(sum(SIZES))
    acc = LinearCKA(unbiased=debiased)
    for xb, yb in batches(SIZES, x, y):
        acc.update(xb, yb)
    assert acc.n == sum(SIZES)
    got = acc.compute()
    assert got.dtype == F64 and got.dim() == 0
    want = ref.feature_space_linear_cka(x, y, unbiased=debiased)
    assert 0.2 < float(want) < 0.95
    assert rel(got, want) < 1e-9


@pytest.mark.parametrize("debiased", [False, True])
def test_matches_sample_space_reference(debiased):
    # the n × n definition (reference.linear_cka, HSIC₁ for debiased) on centred data (CKA is shift invariant;
    # the sample-space reference itself loses digits on uncentred offset data, so it gets the centred rows)
    sizes = [1, 2, 37, 5, 200, 11, 64]
    x, y = stream_data(sum(sizes), seed=3)
    acc = LinearCKA(unbiased=debiased)
    for xb, yb in batches(sizes, x, y):
        acc.update(xb, yb)
    want = ref.linear_cka(x - x.mean(0), y - y.mean(0), unbiased=debiased)
    assert rel(acc.compute(), want) < 1e-9


@pytest.mark.parametrize("debiased", [False, True])
def test_float32_and_nd_inputs(debiased):
    x, y = stream_data(600, p=12, q=6, seed=4)
    x32 = x.float().reshape(600, 3, 4)  # (n, seq, d): flattened to 12 features
    y32 = y.float()
    acc = LinearCKA(unbiased=debiased)
    for xb, yb in batches([100, 1, 299, 200], x32, y32):
        acc.update(xb, yb)
    want = ref.feature_space_linear_cka(x32.double(), y32.double(), unbiased=debiased)
    assert rel(acc.compute(), want) < 1e-9


def test_one_batch_equals_reference_and_1d_input():
    x, y = stream_data(50, p=1, q=3, seed=5)
    acc = LinearCKA()
    acc.update(x[:, 0], y)
    assert rel(acc.compute(), ref.feature_space_linear_cka(x, y)) < 1e-12


@pytest.mark.parametrize("debiased", [False, True])
def test_matrix_form_equals_per_pair(debiased):
    g = torch.Generator().manual_seed(7)
    n = 900
    z = torch.randn(n, 4, generator=g, dtype=F64)
    widths = [3, 7, 1, 5]
    reps = [z @ torch.randn(4, w, generator=g, dtype=F64) + torch.randn(n, w, generator=g, dtype=F64) + 500.0
            for w in widths]
    reps.append(torch.full((n, 2), 3.25, dtype=F64))  # a constant representation: CKA 0 with everything
    sizes = [1, 300, 2, 97, 500]
    mat = LinearCKAMatrix(unbiased=debiased)
    pairs = {(i, j): LinearCKA(unbiased=debiased) for i in range(5) for j in range(5) if i < j}
    for chunk in batches(sizes, *reps):
        mat.update(*chunk)
        for (i, j), acc in pairs.items():
            acc.update(chunk[i], chunk[j])
    m = mat.compute()
    assert m.shape == (5, 5) and mat.num_layers == 5
    assert torch.allclose(m, m.T, rtol=1e-12, atol=0)
    assert torch.allclose(torch.diagonal(m)[:4], torch.ones(4, dtype=F64), rtol=0, atol=1e-12)
    assert torch.all(m[4] == 0) and torch.all(m[:, 4] == 0)
    for (i, j), acc in pairs.items():
        assert abs(float(m[i, j]) - float(acc.compute())) < 1e-12
        want = ref.feature_space_linear_cka(reps[i], reps[j], unbiased=debiased)
        assert abs(float(m[i, j]) - float(want)) < 1e-9 * max(abs(float(want)), 1e-3)
    # a list works as well as varargs
    mat2 = LinearCKAMatrix(5, unbiased=debiased)
    mat2.update(list(reps))
    assert torch.allclose(mat2.compute(), m, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("debiased", [False, True])
def test_constant_representation_gives_zero(debiased):
    x, _ = stream_data(40, seed=8)
    c = torch.full((40, 3), 1e3 + 0.1, dtype=F64)
    acc = LinearCKA(unbiased=debiased)
    for xb, cb in batches([13, 27], x, c):
        acc.update(xb, cb)
    v = acc.compute()
    assert float(v) == 0.0 and not torch.isnan(v)


@pytest.mark.parametrize("debiased", [False, True])
def test_merge_equals_one_stream(debiased):
    x, y = stream_data(3000, seed=9)
    x2, y2 = stream_data(1500, seed=10, offset=3 * OFFSET)  # different data and a far-away shift
    a, b, both = LinearCKA(unbiased=debiased), LinearCKA(unbiased=debiased), LinearCKA(unbiased=debiased)
    for xb, yb in batches([1, 999, 2000], x, y):
        a.update(xb, yb)
        both.update(xb, yb)
    for xb, yb in batches([700, 3, 797], x2, y2):
        b.update(xb, yb)
        both.update(xb, yb)
    merged = a.merge(b)
    assert merged is a and a.n == 4500
    assert rel(a.compute(), both.compute()) < 1e-10
    want = ref.feature_space_linear_cka(torch.cat([x, x2]), torch.cat([y, y2]), unbiased=debiased)
    assert rel(a.compute(), want) < 1e-9
    # merging into / from an empty accumulator
    empty = LinearCKA(unbiased=debiased)
    assert rel(empty.merge(b).compute(), b.compute()) < 1e-15
    assert rel(b.merge(LinearCKA(unbiased=debiased)).compute(), empty.compute()) < 1e-15


def test_merge_rejects_mismatch():
    a, b = LinearCKA(), LinearCKA(unbiased=True)
    x, y = stream_data(10)
    a.update(x, y)
    b.update(x, y)
    with pytest.raises(ValueError, match="unbiased"):
        a.merge(b)
    c = LinearCKA()
    c.update(x[:, :3], y)
    with pytest.raises(ValueError, match="widths"):
        a.merge(c)
    with pytest.raises(TypeError):
        a.merge(MinibatchCKA())


@pytest.mark.parametrize("debiased", [False, True])
def test_state_dict_round_trip_resumes_exactly(debiased):
    x, y = stream_data(2000, seed=11)
    sizes = [1, 500, 333, 166, 1000]
    full = LinearCKA(unbiased=debiased)
    first = LinearCKA(unbiased=debiased)
    for k, (xb, yb) in enumerate(batches(sizes, x, y)):
        full.update(xb, yb)
        if k < 3:
            first.update(xb, yb)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = LinearCKA(unbiased=debiased)
    resumed.load_state_dict(torch.load(buf, weights_only=False))
    for k, (xb, yb) in enumerate(batches(sizes, x, y)):
        if k >= 3:
            resumed.update(xb, yb)
    assert resumed.n == full.n
    assert torch.equal(resumed.state_dict()["moments"], full.state_dict()["moments"])
    assert torch.equal(resumed.compute(), full.compute())
    # state_dict returns copies: later updates do not change a saved dict
    sd = full.state_dict()
    full.update(x[:5], y[:5])
    assert not torch.equal(sd["moments"], full.state_dict()["moments"])
    with pytest.raises(ValueError, match="unbiased"):
        LinearCKA(unbiased=not debiased).load_state_dict(sd)
    with pytest.raises(ValueError, match="LinearCKAMatrix"):
        LinearCKAMatrix().load_state_dict(sd)


def test_reset_and_sync_noop_without_distributed():
    x, y = stream_data(30)
    acc = LinearCKA()
    acc.update(x, y)
    v = acc.compute()
    assert acc.sync() is acc and not acc.synced
    assert torch.equal(acc.compute(), v)
    acc.reset()
    assert acc.n == 0
    with pytest.raises(RuntimeError, match="before any data"):
        acc.compute()


def test_empty_batch_changes_nothing():
    x, y = stream_data(30)
    acc = LinearCKA()
    acc.update(x[:0], y[:0])
    assert acc.n == 0 and acc.widths is None
    acc.update(x, y)
    v = acc.compute()
    acc.update(x[:0], y[:0])
    assert torch.equal(acc.compute(), v)


# ------------------------------------------------------------------------------------------------ bad input


def test_width_change_names_both_widths():
    x, y = stream_data(20)
    acc = LinearCKA()
    acc.update(x, y)
    with pytest.raises(ValueError, match=r"y has 4 features.*first batch had 5"):
        acc.update(x, y[:, :4])
    with pytest.raises(ValueError, match=r"x has 9 features.*first batch had 8"):
        acc.update(torch.cat([x, x[:, :1]], 1), y)
    mat = LinearCKAMatrix(names=["embed", "block0"])
    mat.update(x, y)
    with pytest.raises(ValueError, match=r"block0 has 2 features.*first batch had 5"):
        mat.update(x, y[:, :2])


def test_compute_before_update_is_a_clear_error():
    for acc in (LinearCKA(), LinearCKA(unbiased=True), LinearCKAMatrix(3), MinibatchCKA()):
        with pytest.raises(RuntimeError, match=r"compute\(\) called before any data"):
            acc.compute()


def test_too_few_examples():
    x, y = stream_data(5)
    acc = LinearCKA(unbiased=True)
    acc.update(x[:2], y[:2])
    acc.update(x[2:3], y[2:3])
    with pytest.raises(ValueError, match=r"n >= 4.*n=3"):
        acc.compute()
    acc.update(x[3:4], y[3:4])
    assert torch.isfinite(acc.compute())
    b = LinearCKA()
    b.update(x[:1], y[:1])
    with pytest.raises(ValueError, match=r"n >= 2.*n=1"):
        b.compute()


def test_other_bad_inputs():
    x, y = stream_data(10)
    acc = LinearCKA()
    with pytest.raises(ValueError, match=r"y has 9 examples but x has 10"):
        acc.update(x, y[:9])
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        acc.update(x.numpy(), y)
    with pytest.raises(TypeError, match="real"):
        acc.update(x.to(torch.complex128), y)
    with pytest.raises(ValueError, match="0-d"):
        acc.update(torch.tensor(1.0), y)
    mat = LinearCKAMatrix(3)
    with pytest.raises(ValueError, match="expected 3 representations"):
        mat.update(x, y)
    with pytest.raises(ValueError, match="num_layers"):
        LinearCKAMatrix(0)
    with pytest.raises(ValueError, match="kernel"):
        MinibatchCKA(kernel="poly")


# ------------------------------------------------------------------------------------------------ minibatch CKA


def test_minibatch_linear_matches_reference():
    x, y = stream_data(400, seed=12, offset=10.0)
    sizes = [4, 100, 37, 259]
    xs = [b[0] for b in batches(sizes, x, y)]
    ys = [b[1] for b in batches(sizes, x, y)]
    acc = MinibatchCKA()
    for xb, yb in zip(xs, ys):
        acc.update(xb, yb)
    assert acc.batches == 4 and acc.n == 400
    assert rel(acc.compute(), ref.minibatch_cka(xs, ys)) < 1e-9


def test_minibatch_rbf_matches_reference():
    x, y = stream_data(120, seed=13, offset=0.0)
    sizes = [40, 50, 30]
    xs = [b[0] for b in batches(sizes, x, y)]
    ys = [b[1] for b in batches(sizes, x, y)]
    for sigma in [None, (2.0, 3.0)]:
        acc = MinibatchCKA(kernel="rbf", sigma=sigma)
        for xb, yb in zip(xs, ys):
            acc.update(xb, yb)
        assert rel(acc.compute(), ref.minibatch_cka(xs, ys, kernel="rbf", sigma=sigma)) < 1e-9


def test_minibatch_matrix_merge_state_dict():
    g = torch.Generator().manual_seed(14)
    reps = [torch.randn(200, w, generator=g, dtype=F64) for w in (3, 4, 2)]
    reps[1] = reps[1] + reps[0] @ torch.randn(3, 4, generator=g, dtype=F64)
    sizes = [50, 50, 100]
    mat = MinibatchCKAMatrix()
    a, b = MinibatchCKAMatrix(3), MinibatchCKAMatrix(3)
    for k, chunk in enumerate(batches(sizes, *reps)):
        mat.update(*chunk)
        (a if k < 2 else b).update(*chunk)
    m = mat.compute()
    for i in range(3):
        for j in range(3):
            if i != j:
                want = ref.minibatch_cka([c[i] for c in batches(sizes, *reps)], [c[j] for c in batches(sizes, *reps)])
                assert rel(m[i, j], want) < 1e-9
    assert torch.allclose(a.merge(b).compute(), m, rtol=1e-12, atol=0)
    c = MinibatchCKAMatrix(3)
    c.load_state_dict(mat.state_dict())
    assert torch.equal(c.compute(), m)
    with pytest.raises(ValueError, match="at least 4 examples"):
        mat.update(*(r[:3] for r in reps))


# ------------------------------------------------------------------------------------------------ property


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=25, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=1, max_value=199), max_size=8),
    seed=st.integers(min_value=0, max_value=10_000),
    offset=st.sampled_from([0.0, 1.0, 1e3]),
    debiased=st.booleans(),
)
def test_any_split_equals_one_shot(cuts, seed, offset, debiased):
    x, y = stream_data(200, p=4, q=3, seed=seed, offset=offset)
    bounds = [0] + sorted(set(cuts)) + [200]
    acc = LinearCKA(unbiased=debiased)
    for a, b in zip(bounds[:-1], bounds[1:]):
        acc.update(x[a:b], y[a:b])
    want = ref.feature_space_linear_cka(x, y, unbiased=debiased)
    assert abs(float(acc.compute()) - float(want)) <= 1e-9 * max(abs(float(want)), 1e-6)


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_gives_nan_only_where_it_belongs(debiased, bad):
    g = torch.Generator().manual_seed(21)
    reps = [torch.randn(40, w, generator=g, dtype=F64) for w in (3, 4, 2)]
    dirty = [r.clone() for r in reps]
    dirty[1][7, 2] = bad  # in the second batch, not at the shift row
    pair = LinearCKA(unbiased=debiased)
    pair.update(dirty[0][:20], dirty[1][:20])
    pair.update(dirty[0][20:], dirty[1][20:])
    assert pair.compute().isnan()  # the README's promise: NaN in, NaN out (not 0)
    clean, acc = LinearCKAMatrix(unbiased=debiased), LinearCKAMatrix(unbiased=debiased)
    for part in (slice(0, 20), slice(20, 40)):
        clean.update(*(r[part] for r in reps))
        acc.update(*(r[part] for r in dirty))
    m, want = acc.compute(), clean.compute()
    assert m[1].isnan().all() and m[:, 1].isnan().all()
    keep = torch.tensor([0, 2])
    torch.testing.assert_close(m[keep][:, keep], want[keep][:, keep], rtol=1e-12, atol=1e-14)
    mb, mb_clean = MinibatchCKAMatrix(), MinibatchCKAMatrix()
    mb.update(*dirty)
    mb_clean.update(*reps)
    h = mb.compute()
    assert h[1].isnan().all() and h[:, 1].isnan().all()
    torch.testing.assert_close(h[keep][:, keep], mb_clean.compute()[keep][:, keep], rtol=1e-12, atol=1e-14)


def test_minibatch_rbf_takes_the_fused_op_and_rejects_integers(monkeypatch):
    import fastcka.functional as F

    calls = []
    op = F.fops.kernel_hsic
    monkeypatch.setattr(F.fops, "kernel_hsic", lambda *a: (calls.append(a[2]), op(*a))[1])
    x, y = stream_data(60, seed=22, offset=0.0)
    acc = MinibatchCKA(kernel="rbf", sigma=(2.0, 3.0))  # different σ per side: still the fused pass
    acc.update(x, y)
    assert len(calls) == 1 and torch.allclose(calls[0], torch.tensor([0.5 / 4.0, 0.5 / 9.0], dtype=F64))
    with pytest.raises(TypeError, match="floating-point"):
        MinibatchCKA(kernel="rbf").update(torch.ones(8, 2, dtype=torch.int64), torch.ones(8, 2, dtype=torch.int64))

"""cka_matrix equals the loop of single cka calls, entry by entry."""

import pytest
import torch

import fastcka
import fastcka.reference as R
from conftest import correlated_pair, randn


def layers(n, widths, seed):
    base, _ = correlated_pair(n, 8, 1, seed=seed)
    return [base @ randn(8, w, seed=seed + i) + 0.5 * randn(n, w, seed=seed + 100 + i) for i, w in enumerate(widths)]


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("method", ["auto", "feature", "sample"])
def test_symmetric_matrix_equals_loop(unbiased, method):
    xs = layers(40, [3, 17, 5, 60], seed=1)
    m = fastcka.cka_matrix(xs, unbiased=unbiased, method=method)
    assert m.shape == (4, 4) and m.dtype == torch.float64
    for i in range(4):
        assert m[i, i].item() == 1.0
        for j in range(4):
            torch.testing.assert_close(m[i, j], fastcka.cka(xs[i], xs[j], unbiased=unbiased, method=method), rtol=1e-12, atol=1e-14)
    assert torch.equal(m, m.T)


@pytest.mark.parametrize("unbiased", [False, True])
def test_cross_matrix_equals_loop(unbiased):
    xs = layers(30, [4, 9], seed=2)
    ys = layers(30, [2, 11, 6], seed=3)
    m = fastcka.cka_matrix(xs, ys, unbiased=unbiased)
    assert m.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(m[i, j], fastcka.cka(xs[i], ys[j], unbiased=unbiased), rtol=1e-12, atol=1e-14)


def test_rbf_and_float32_and_constant_layer():
    xs = [t.float() for t in layers(25, [3, 4], seed=4)] + [torch.ones(25, 2)]
    m = fastcka.cka_matrix(xs, kernel="rbf")
    assert m.dtype == torch.float32
    torch.testing.assert_close(m[0, 1], fastcka.cka(xs[0], xs[1], kernel="rbf"))
    lin = fastcka.cka_matrix(xs)
    assert lin[2, 2].item() == 0.0 and lin[0, 2].item() == 0.0


def test_bad_input():
    with pytest.raises(TypeError):
        fastcka.cka_matrix(torch.randn(4, 3))
    with pytest.raises(ValueError, match="same number of examples"):
        fastcka.cka_matrix([torch.randn(5, 2), torch.randn(6, 2)])


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("method", [0, 1, 2])
def test_opcheck(unbiased, method):
    xs, ys = layers(12, [3, 40], seed=5), layers(12, [2], seed=6)
    for args in ((xs, [], unbiased, method), ([t.float() for t in xs], [t.float() for t in ys], unbiased, method)):
        torch.library.opcheck(torch.ops.fastcka.linear_hsic_matrix, args,
                              test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("method", [0, 1, 2])
def test_raw_matrix_op_equals_reference_hsic(unbiased, method):
    """The HSIC values themselves, not only their CKA ratios (a wrong overall scale would cancel out of those)."""
    xs, ys = layers(30, [3, 45, 5], seed=9), layers(30, [2, 7], seed=10)
    for h, cols in ((torch.ops.fastcka.linear_hsic_matrix(xs, ys, unbiased, method), ys),
                    (torch.ops.fastcka.linear_hsic_matrix(xs, [], unbiased, method), xs)):
        want = torch.stack([torch.stack([R.hsic(R.gram_linear(a), R.gram_linear(b), unbiased) for b in cols]) for a in xs])
        torch.testing.assert_close(h, want, rtol=1e-10, atol=1e-12 * want.abs().max().item())


@pytest.mark.parametrize("unbiased", [False, True])
def test_matrix_equals_reference_on_hard_inputs(unbiased):
    """float32 layers whose means are 10⁴ times their spread, one p ≫ n and one rank-deficient, against the float64
    reference CKA of the same (rounded) inputs."""
    xs = layers(40, [3, 300, 6], seed=11)
    xs[2] = xs[2][:, :1] @ randn(1, 6, seed=12)  # rank 1
    xs = [(t + 1e4 * t.std(0)).float() for t in xs]
    m = fastcka.cka_matrix(xs, unbiased=unbiased)
    # the reference centres the same float32 values in float64 first: its explicit Gram of the uncentred data would
    # itself lose 1e-5 here, in float64
    cd = [t.double() - t.double().mean(0) for t in xs]
    for i in range(3):
        for j in range(3):
            want = R.linear_cka(cd[i], cd[j], unbiased)
            assert abs(m[i, j].item() - want.item()) < 1e-6, (i, j, m[i, j].item(), want.item())


@pytest.mark.parametrize("kernel,method", [("rbf", "auto"), ("linear", "tiled")])
def test_tiled_matrix_takes_each_gamma_once_and_each_pair_once(kernel, method, monkeypatch):
    import fastcka.functional as F

    calls = {"gamma": 0, "pass": 0}
    gamma, terms = F._gamma_of_median, F._tiled_terms  # the medians: one median_sq_dists call, one γ per layer
    monkeypatch.setattr(F, "_gamma_of_median", lambda *a: (calls.__setitem__("gamma", calls["gamma"] + 1), gamma(*a))[1])
    monkeypatch.setattr(F, "_tiled_terms", lambda *a: (calls.__setitem__("pass", calls["pass"] + 1), terms(*a))[1])
    xs = layers(30, [3, 7, 2, 5], seed=6)
    m = fastcka.cka_matrix(xs, kernel=kernel, method=method)
    assert calls == {"gamma": 4 if kernel == "rbf" else 0, "pass": 6}  # one median per layer, the upper triangle
    monkeypatch.setattr(F, "_gamma_of_median", gamma)
    monkeypatch.setattr(F, "_tiled_terms", terms)
    assert torch.equal(m, m.T) and torch.equal(m.diagonal(), torch.ones(4, dtype=m.dtype))
    for i in range(4):
        for j in range(4):
            torch.testing.assert_close(m[i, j], fastcka.cka(xs[i], xs[j], kernel=kernel, method=method),
                                       rtol=1e-12, atol=1e-14)


def test_tiled_matrix_sigma_pair_single_layer_and_nan_layer():
    xs, ys = layers(24, [3, 4], seed=7), layers(24, [5], seed=8)
    m = fastcka.cka_matrix(xs, xs, kernel="rbf", sigma=(1.5, 2.5))  # σx for rows, σy for columns: not symmetric
    for i in range(2):
        for j in range(2):
            torch.testing.assert_close(m[i, j], fastcka.cka(xs[i], xs[j], kernel="rbf", sigma=(1.5, 2.5)),
                                       rtol=1e-12, atol=1e-14)
    c = fastcka.cka_matrix(xs, ys, kernel="rbf", unbiased=True)
    torch.testing.assert_close(c[1, 0], fastcka.cka(xs[1], ys[0], kernel="rbf", unbiased=True), rtol=1e-12, atol=1e-14)
    assert fastcka.cka_matrix(xs[:1], kernel="rbf").item() == 1.0
    assert fastcka.cka_matrix([torch.ones(24, 2)], kernel="rbf").item() == 0.0  # no variation: 0, as cka gives
    bad = xs[1].clone()
    bad[3, 1] = float("nan")
    nm = fastcka.cka_matrix([xs[0], bad, ys[0]], kernel="rbf")
    assert nm[1].isnan().all() and nm[:, 1].isnan().all()
    torch.testing.assert_close(nm[0, 2], fastcka.cka(xs[0], ys[0], kernel="rbf"), rtol=1e-12, atol=1e-14)
    assert nm[0, 0].item() == nm[2, 2].item() == 1.0


def test_errors_name_the_layer():
    with pytest.raises(ValueError, match=r"xs\[2\] has shape \(6, 2\), xs\[0\] has shape \(5, 2\)"):
        fastcka.cka_matrix([torch.randn(5, 2), torch.randn(5, 3), torch.randn(6, 2)])
    with pytest.raises(ValueError, match=r"ys\[1\] has shape \(4, 2\)"):
        fastcka.cka_matrix([torch.randn(5, 2)], [torch.randn(5, 2), torch.randn(4, 2)])
    with pytest.raises(TypeError, match=r"ys\[0\] must be a real floating-point"):
        fastcka.cka_matrix([torch.randn(5, 2)], [torch.ones(5, 2, dtype=torch.int64)])
    with pytest.raises(ValueError, match="threshold"):
        fastcka.cka_matrix([torch.randn(5, 2)], kernel="rbf", threshold=0.0)

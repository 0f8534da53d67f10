"""Regression tests for the kernel-HSIC numerics that adversarial inputs broke (issue 18: W1, W2, W9).

Each case is checked against the float64 reference (`fastcka.reference`) on the same input values; the reference
builds the n×n Gram from row differences, so it has none of the fused pass's shortcuts.
"""
import pytest
import torch

import fastcka
from fastcka import reference as R

OPS = torch.ops.fastcka


def _ref_rbf_cka(x, y, sigma=None, threshold=1.0, unbiased=False):
    x, y = x.double(), y.double()
    return R.cka(R.gram_rbf(x, sigma, threshold), R.gram_rbf(y, sigma, threshold), unbiased=unbiased).item()


def _ref_rbf_cka_expm1(x, y, sigma, unbiased=False):
    """The same CKA from K − 1 = expm1(−d/2σ²): exact where σ dwarfs the distances (raw K rounds to 1)."""
    x, y = x.double(), y.double()
    kx = torch.expm1(-R.squared_distances(x) / (2 * sigma**2))
    ky = torch.expm1(-R.squared_distances(y) / (2 * sigma**2))
    return R.cka(kx, ky, unbiased=unbiased).item()


def _pair(seed=0, n=100):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, dtype=torch.float64, generator=g)
    y = torch.tanh(x[:, :5]) + 0.2 * torch.randn(n, 5, dtype=torch.float64, generator=g)
    return x, y


# --- W1: a σ far above the median ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 2e-5)])
@pytest.mark.parametrize("factor", [1e2, 1e3, 1e4, 1e6])
@pytest.mark.parametrize("unbiased", [False, True])
def test_large_sigma_keeps_the_digits(dtype, tol, factor, unbiased):
    x, y = _pair()
    sigma = factor * R.rbf_sigma(x).item()
    want = _ref_rbf_cka_expm1(x.to(dtype), y.to(dtype), sigma, unbiased)
    got = fastcka.cka(x.to(dtype), y.to(dtype), kernel="rbf", sigma=sigma, unbiased=unbiased).item()
    assert got == pytest.approx(want, abs=tol, rel=tol)


def test_issue_reproducers_w1():
    x, y = _pair()
    want = _ref_rbf_cka_expm1(x, y, 1e4)
    assert fastcka.cka(x, y, kernel="rbf", sigma=1e4).item() == pytest.approx(want, abs=1e-9)
    assert want == pytest.approx(0.61994, abs=1e-5)
    sigma = 1e6 * R.rbf_sigma(x).item()  # threshold 1e6
    got = fastcka.cka(x, y, kernel="rbf", threshold=1e6).item()
    assert got == pytest.approx(_ref_rbf_cka_expm1(x, y, sigma), abs=1e-9)
    assert 0.0 <= got <= 1.0


# --- W2: clustered data, offsets, duplicated rows ------------------------------------------------------------------
@pytest.mark.parametrize("sep", [1e2, 1e4, 1e6])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clustered_data(sep, dtype):
    torch.manual_seed(0)
    lab = (torch.arange(200) < 60).double()[:, None]
    x = (torch.randn(200, 8, dtype=torch.float64) + sep * lab).to(dtype)
    y = (torch.randn(200, 4, dtype=torch.float64) + x[:, :4].double()).to(dtype)
    want = _ref_rbf_cka(x, y)
    got = fastcka.cka(x, y, kernel="rbf").item()
    assert got == pytest.approx(want, abs=1e-9 if dtype == torch.float64 else 1e-5)
    # exactly the reference's median up to float64 summation order (a few ulps)
    assert OPS.median_sq_dist(x).item() == pytest.approx(R.median_squared_distance(x.double()).item(), rel=1e-14)


def test_issue_reproducer_w2():
    torch.manual_seed(0)
    lab = (torch.arange(200) < 60).double()[:, None]
    x = (torch.randn(200, 8, dtype=torch.float64) + 1e4 * lab).float()
    y = (torch.randn(200, 4, dtype=torch.float64) + x[:, :4].double()).float()
    assert fastcka.cka(x, y, kernel="rbf").item() == pytest.approx(0.9601, abs=1e-4)
    assert fastcka.cka(x, y, kernel="rbf").item() == pytest.approx(_ref_rbf_cka(x, y), abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(6))
def test_duplicated_rows_give_numpys_median(dtype, seed):
    g = torch.Generator().manual_seed(seed)
    n = 200
    base = (torch.randn(40, 6, generator=g, dtype=torch.float64) * 3 + 100.0).to(dtype)
    share = [0.3, 0.6, 0.72, 0.8, 0.9, 0.5][seed]  # fraction of rows that are copies of row 0 (> ~0.71: median 0)
    k = int(share * n)
    idx = torch.cat([torch.zeros(k, dtype=torch.long), torch.randint(0, 40, (n - k,), generator=g)])
    x = base[idx][torch.randperm(n, generator=g)]
    want = R.median_squared_distance(x.double()).item()
    for method in range(4):
        if method == 2:
            continue  # the window-only method may miss by design
        try:
            got = OPS.median_sq_dist(x, method).item()
        except RuntimeError:
            assert method == 3
            continue
        assert got == pytest.approx(want, rel=1e-14, abs=0.0), (method, got, want)  # ulps of summation order
    y = torch.randn(n, 3, generator=g, dtype=torch.float64).to(dtype)
    got = fastcka.cka(x, y, kernel="rbf").item()
    if want == 0:
        assert got == 0.0  # the documented median-0 rule: a constant kernel, CKA 0
    else:
        assert got == pytest.approx(_ref_rbf_cka(x, y), abs=1e-9 if dtype == torch.float64 else 1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_identical_rows_have_zero_distance_with_a_huge_offset(dtype):
    x = torch.randn(50, 5, dtype=torch.float64) * 1e-3 + 1e4
    x = torch.cat([x, x[:10]]).to(dtype)  # 10 exact duplicates
    d = R.squared_distances(x.double())
    assert OPS.median_sq_dist(x, 1).item() == pytest.approx(R.median_squared_distance(x.double()).item(), rel=1e-14)
    assert (d == 0).sum() > x.shape[0]


# --- W9: a σ far below the median (a nearly diagonal kernel), unbiased ----------------------------------------------
@pytest.mark.parametrize("sigma", [0.3, 0.1, 0.05, 0.03])
def test_small_sigma_unbiased_value_and_gradient(sigma):
    torch.manual_seed(1)
    x = torch.randn(50, 4, dtype=torch.float64)
    y = x + 0.3 * torch.randn(50, 4, dtype=torch.float64)
    want = _ref_rbf_cka(x, y, sigma=sigma, unbiased=True)
    xa, ya = x.clone().requires_grad_(), y.clone().requires_grad_()
    got = fastcka.cka(xa, ya, kernel="rbf", sigma=sigma, unbiased=True)
    assert got.item() == pytest.approx(want, rel=1e-8, abs=1e-12)
    gx, gy = torch.autograd.grad(got, (xa, ya))
    xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
    ref = R.cka(R.gram_rbf(xr, sigma), R.gram_rbf(yr, sigma), unbiased=True)
    rx, ry = torch.autograd.grad(ref, (xr, yr))
    scale = max(rx.abs().max().item(), ry.abs().max().item())
    assert (gx - rx).abs().max().item() <= 1e-7 * scale
    assert (gy - ry).abs().max().item() <= 1e-7 * scale


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("sigma_factor", [1e-2, 1.0, 1e3])
def test_gradcheck_across_sigma(unbiased, sigma_factor):
    torch.manual_seed(2)
    x = torch.randn(12, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(12, 2, dtype=torch.float64, requires_grad=True)
    sigma = sigma_factor * R.rbf_sigma(x.detach()).item()
    torch.autograd.gradcheck(
        lambda a, b: fastcka.hsic(a, b, kernel="rbf", sigma=sigma, unbiased=unbiased), (x, y), eps=1e-6, atol=1e-7
    )


# --- the same hard inputs through the raw op on every backend (CPU, and the CUDA sources under emulation) -----------
from test_cuda_emu import BACKENDS  # noqa: E402


@pytest.fixture(params=BACKENDS)
def ops(request):
    return torch.ops.fastcka if request.param == "cpu" else torch.ops.fastcka_emu


def _op_cka(ops, x, y, sigma, unbiased):
    gamma = torch.tensor([0.5 / sigma**2] * 2, dtype=torch.float64)
    h = ops.kernel_hsic(x, y, gamma, 1, 1, unbiased)
    return (h[0] / (h[1] * h[2]).sqrt()).item()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 2e-5)])
@pytest.mark.parametrize("sigma,unbiased", [(1e4, False), (1e4, True), (0.05, True), (0.05, False)])
def test_backends_on_extreme_sigma(ops, dtype, tol, sigma, unbiased):
    torch.manual_seed(1)
    x = torch.randn(70, 4, dtype=torch.float64)
    y = x + 0.3 * torch.randn(70, 4, dtype=torch.float64)
    x, y = x.to(dtype), y.to(dtype)
    want = _ref_rbf_cka_expm1(x, y, sigma, unbiased) if sigma > 1 else _ref_rbf_cka(x, y, sigma, unbiased=unbiased)
    assert _op_cka(ops, x, y, sigma, unbiased) == pytest.approx(want, rel=tol, abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backends_on_clusters_and_duplicates(ops, dtype):
    torch.manual_seed(0)
    lab = (torch.arange(90) < 30).double()[:, None]
    x = torch.randn(90, 8, dtype=torch.float64) + 1e4 * lab
    x[60:75] = x[60]  # 15 equal rows
    x = x.to(dtype)
    y = (torch.randn(90, 4, dtype=torch.float64) + x[:, :4].double()).to(dtype)
    for method in (0, 1):
        assert ops.median_sq_dist(x, method).item() == pytest.approx(
            R.median_squared_distance(x.double()).item(), rel=1e-14
        )
    sigma = R.rbf_sigma(x.double()).item()
    got = _op_cka(ops, x, y, sigma, False)
    assert got == pytest.approx(_ref_rbf_cka(x, y, sigma), abs=1e-9 if dtype == torch.float64 else 1e-5)


# --- the CKA ratio and the degenerate representations (found by tests/test_fuzz.py) ------------------------------
def test_cka_ratio_does_not_overflow():
    """h_xx·h_yy overflows float64 at HSICs of ~1e154 and more; the ratio must not (−0 came out for −0.117)."""
    torch.manual_seed(27)
    x = torch.randn(6, 5, dtype=torch.float64)
    y = torch.randn(6, 3, dtype=torch.float64)
    for unbiased in (False, True):
        want = fastcka.cka(x, y, unbiased=unbiased).item()
        assert fastcka.cka(x * 1e60, y * 1e60, unbiased=unbiased).item() == pytest.approx(want, rel=1e-12)
        h = torch.tensor([-7.7724e214, 6.6515e217, 6.6424e213], dtype=torch.float64)
        assert fastcka.cka_from_terms(h).item() == pytest.approx(-7.7724e214 / (6.6515e217**0.5 * 6.6424e213**0.5))


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_all_rows_but_one_equal_give_a_debiased_cka_of_zero(kernel, dtype):
    """The U-centred Gram of such a representation is exactly 0, so HSIC₁(K,K) = 0 and CKA takes its documented 0;
    the terms cancel to rounding noise, whose ratio was 2.3 (cka) and 8.1 (LinearCKA)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 7, generator=g, dtype=torch.float64).repeat(12, 1)
    x[5] = torch.randn(7, generator=g, dtype=torch.float64)
    x = (x * 3.7 + 1.3).to(dtype)
    y = torch.randn(12, 4, generator=g, dtype=torch.float64).to(dtype)
    assert fastcka.hsic(x, x, kernel=kernel, unbiased=True).item() == 0.0
    assert fastcka.cka(x, y, kernel=kernel, unbiased=True).item() == 0.0
    if kernel == "linear":
        from fastcka.streaming import LinearCKA

        m = LinearCKA(unbiased=True)
        m.update(x[:5], y[:5])
        m.update(x[5:], y[5:])
        assert m.compute().item() == 0.0


@pytest.mark.parametrize("kernel,method", [("linear", "feature"), ("linear", "sample"), ("linear", "tiled"),
                                           ("rbf", "auto")])
@pytest.mark.parametrize("unbiased", [False, True])
def test_cka_over_the_whole_float64_range(kernel, method, unbiased):
    """CKA is invariant to scaling a layer, over all of float64's range. A linear kernel's HSICs (the 4th power of
    the entries) overflowed beyond |x| ~ 1e76 (CKA 0 or NaN for 0.43) and went subnormal below ~1e-78, an RBF median
    (a squared distance) beyond ~1e154; CKA now brings each layer to unit scale first (functional._unit_scaled).
    The gradient scales as 1/scale."""
    torch.manual_seed(5)
    x = torch.randn(40, 6, dtype=torch.float64)
    y = x[:, :3] @ torch.randn(3, 4, dtype=torch.float64) + torch.randn(40, 4, dtype=torch.float64)
    kw = dict(kernel=kernel, method=method, unbiased=unbiased)
    x1 = x.clone().requires_grad_(True)
    want = fastcka.cka(x1, y, **kw)
    (g,) = torch.autograd.grad(want, x1)
    for scale in (1e-300, 1e-160, 1e-100, 1e-80, 1e80, 1e100, 1e160, 1e300):
        xs = (x * scale).requires_grad_(True)
        got = fastcka.cka(xs, y, **kw)
        assert got.item() == pytest.approx(want.item(), abs=1e-12), scale
        m = fastcka.cka_matrix([x * scale, y, x], kernel=kernel, method=method, unbiased=unbiased)
        assert m[0, 1].item() == pytest.approx(want.item(), abs=1e-12) and m[0, 2].item() == pytest.approx(1.0), scale
        if kernel == "linear" and scale in (1e-100, 1e100):
            (gs,) = torch.autograd.grad(got, xs)
            torch.testing.assert_close(gs * scale, g, rtol=1e-9, atol=1e-12 * g.abs().max().item())

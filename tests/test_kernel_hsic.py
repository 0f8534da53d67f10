"""The fused tiled kernel-HSIC pass (RBF and linear) and the exact median against the float64 reference."""

import numpy as np
import pytest
import torch

import fastcka
import fastcka.reference as R
from conftest import correlated_pair, float32_tolerance


def ref_terms(x, y, k, l, unbiased):
    return torch.stack([R.hsic(k, l, unbiased), R.hsic(k, k, unbiased), R.hsic(l, l, unbiased)])


# odd n, n not a multiple of any block or chunk, n up to 2048
@pytest.mark.parametrize("n,p,q", [(4, 1, 2), (7, 3, 3), (33, 5, 17), (257, 20, 9), (600, 2, 40), (2048, 16, 8)])
@pytest.mark.parametrize("unbiased", [False, True])
def test_rbf_matches_reference_float64(n, p, q, unbiased):
    x, y = correlated_pair(n, p, q, seed=n + p)
    kx, ky = R.gram_rbf(x), R.gram_rbf(y)  # median heuristic
    ref = ref_terms(x, y, kx, ky, unbiased)
    h = fastcka.hsic_terms(x, y, kernel="rbf", unbiased=unbiased)
    torch.testing.assert_close(h, ref, rtol=1e-9, atol=1e-12 * ref.abs().max().item())
    torch.testing.assert_close(fastcka.cka(x, y, kernel="rbf", unbiased=unbiased), R.cka(kx, ky, unbiased),
                               rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("n", [5, 130, 1031])
@pytest.mark.parametrize("unbiased", [False, True])
def test_tiled_linear_matches_reference_and_other_paths(n, unbiased):
    x, y = correlated_pair(n, 6, 11, seed=n)
    ref = ref_terms(x, y, R.gram_linear(x), R.gram_linear(y), unbiased)
    h = fastcka.hsic_terms(x, y, method="tiled", unbiased=unbiased)
    torch.testing.assert_close(h, ref, rtol=1e-9, atol=1e-12 * ref.abs().max().item())
    torch.testing.assert_close(h, fastcka.hsic_terms(x, y, method="feature", unbiased=unbiased), rtol=1e-9, atol=0)


def test_given_sigma_and_threshold():
    x, y = correlated_pair(50, 4, 3, seed=1)
    ref = R.cka(R.gram_rbf(x, sigma=0.8), R.gram_rbf(y, sigma=2.5))
    torch.testing.assert_close(fastcka.cka(x, y, kernel="rbf", sigma=(0.8, 2.5)), ref, rtol=1e-10, atol=0)
    ref = R.cka(R.gram_rbf(x, threshold=0.5), R.gram_rbf(y, threshold=0.5))
    torch.testing.assert_close(fastcka.cka(x, y, kernel="rbf", threshold=0.5), ref, rtol=1e-10, atol=0)
    s = torch.tensor(1.7, dtype=torch.float64)
    torch.testing.assert_close(fastcka.cka(x, y, kernel="rbf", sigma=s),
                               R.cka(R.gram_rbf(x, sigma=1.7), R.gram_rbf(y, sigma=1.7)), rtol=1e-10, atol=0)


def test_float32_within_rule():
    x, y = correlated_pair(300, 10, 10, seed=2)
    ref = R.rbf_cka(x, y).item()
    x32, y32 = x.float(), y.float()
    plain = R.cka(R.gram_rbf(x32.double()).float().double(), R.gram_rbf(y32.double()).float().double()).item()
    out = fastcka.cka(x32, y32, kernel="rbf")
    assert out.dtype == torch.float32
    assert abs(out.item() - ref) <= float32_tolerance(ref, plain, floor=2e-6)


def test_huge_mean_rbf_float32():
    x, y = correlated_pair(200, 8, 5, seed=3)
    xs, ys = (x + 1e4).float(), (y - 1e4).float()
    ref = R.rbf_cka(xs.double(), ys.double()).item()
    assert abs(fastcka.cka(xs, ys, kernel="rbf").item() - ref) < 1e-5 * abs(ref)


@pytest.mark.parametrize("n", [40, 41, 64])
def test_median_is_exact_with_ties_and_duplicates(n):
    g = torch.Generator().manual_seed(n)
    x = torch.randint(0, 3, (n, 3), generator=g).double()  # many ties and duplicate rows
    x[5] = x[3]
    assert fastcka.ops.median_sq_dist(x).item() == R.median_squared_distance(x).item()
    d = ((x[:, None] - x[None]) ** 2).sum(-1).numpy()
    assert fastcka.ops.median_sq_dist(x).item() == np.median(d)


@pytest.mark.parametrize("half", [2, 3, 50, 3000])
def test_median_when_the_two_middle_entries_differ(half):
    """Two equal groups of identical rows: exactly half of the n² entries are 0 and half are 4, so numpy's median is
    2. The middle ranks fall in different radix bins; at half = 3000 each bin holds more pairs than one collection
    pass takes, so the selection walks all 64 bits for both ranks."""
    x = torch.cat([torch.zeros(half, 1), torch.full((half, 1), 2.0)]).double()
    assert fastcka.ops.median_sq_dist(x).item() == 2.0
    if half <= 50:
        d = ((x[:, None] - x[None]) ** 2).sum(-1).numpy()
        assert np.median(d) == 2.0


def test_median_of_random_data_float64():
    x, _ = correlated_pair(500, 7, 1, seed=4)
    torch.testing.assert_close(fastcka.ops.median_sq_dist(x), R.median_squared_distance(x), rtol=1e-13, atol=0)


MEDIAN_AUTO, MEDIAN_RADIX, MEDIAN_WINDOW_ONLY, MEDIAN_WINDOW_MISS = 0, 1, 2, 3


@pytest.mark.parametrize("n", [700, 1031, 2048])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_median_window_and_radix_agree_to_the_bit(n, dtype, device):
    """The sampled window (method 2 fails if it misses), the deliberately missed window that falls back (3), auto (0)
    and the radix passes alone (1) must return the same float: every pass computes the same distances."""
    x, _ = correlated_pair(n, 19, 1, seed=n, dtype=dtype, device=device)
    radix = fastcka.ops.median_sq_dist(x, MEDIAN_RADIX).item()
    for method in (MEDIAN_AUTO, MEDIAN_WINDOW_ONLY, MEDIAN_WINDOW_MISS):
        assert fastcka.ops.median_sq_dist(x, method).item() == radix, method
    ref = R.median_squared_distance(x.cpu().double()).item()
    assert radix == pytest.approx(ref, rel=1e-13 if dtype == torch.float64 else 1e-5, abs=0)


@pytest.mark.parametrize("n", [800, 801])
def test_median_window_with_ties_matches_numpy(n, device):
    """Three levels per feature: the window's edges are tied values shared by thousands of pairs."""
    g = torch.Generator().manual_seed(n)
    x = torch.randint(0, 3, (n, 2), generator=g).double()
    d = ((x[:, None] - x[None]) ** 2).sum(-1).numpy()
    for method in (MEDIAN_AUTO, MEDIAN_RADIX, MEDIAN_WINDOW_ONLY, MEDIAN_WINDOW_MISS):
        assert fastcka.ops.median_sq_dist(x.to(device), method).item() == np.median(d), method


def test_median_window_on_a_huge_mean_float32(device):
    x, _ = correlated_pair(900, 6, 1, seed=12)
    x32 = (x + 1e4).float().to(device)
    radix = fastcka.ops.median_sq_dist(x32, MEDIAN_RADIX).item()
    assert radix == pytest.approx(R.median_squared_distance(x32.cpu().double()).item(), rel=1e-6)
    for method in (MEDIAN_AUTO, MEDIAN_WINDOW_ONLY, MEDIAN_WINDOW_MISS):
        assert fastcka.ops.median_sq_dist(x32, method).item() == radix, method


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_median_methods_agree_for_tiny_n(n, device):
    x, _ = correlated_pair(n, 3, 1, seed=n, dtype=torch.float32, device=device)
    radix = fastcka.ops.median_sq_dist(x, MEDIAN_RADIX).item()
    for method in (MEDIAN_AUTO, MEDIAN_WINDOW_MISS):
        assert fastcka.ops.median_sq_dist(x, method).item() == radix, method
    if n == 1:
        assert fastcka.ops.median_sq_dist(x, MEDIAN_WINDOW_ONLY).item() == radix == 0.0
    assert radix == pytest.approx(R.median_squared_distance(x.cpu().double()).item(), rel=1e-5)  # n = 2: d/2


def test_median_inside_a_tie_block_larger_than_the_collect_buffer():
    """Groups of identical rows at 0, 2 and 5 (3000, 3000, 500 rows): 9M of the 21M pairs are at distance 4 and the
    median falls inside them, so the window's edges are both 4 and it holds more pairs than one collection can take;
    its counts alone give the answer (method 2 fails if that path is not taken)."""
    x = torch.cat([torch.zeros(3000, 1), torch.full((3000, 1), 2.0), torch.full((500, 1), 5.0)]).double()
    for method in (MEDIAN_AUTO, MEDIAN_RADIX, MEDIAN_WINDOW_ONLY):
        assert fastcka.ops.median_sq_dist(x, method).item() == 4.0, method


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_outlier_rows_cost_no_digits(dtype):
    """Row 0 sits 750 spreads away (a transformer's attention-sink token, say), two more rows far off elsewhere. The
    kernels shift by column medians of a row subsample, not by a row: with the first-row shift, float32 RBF CKA lost
    67 % of its value with the row-0 outlier alone."""
    x, y = correlated_pair(1500, 16, 8, seed=21)
    x[0] += 3000.0
    x[18] -= 2000.0  # on the subsample's stride (every 6th row at n = 1500)
    x[901, :4] += 5000.0
    x, y = x.to(dtype), y.to(dtype)
    xd, yd = x.double(), y.double()  # the reference sees the same (rounded) values
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    ref = R.rbf_cka(xd, yd).item()
    assert abs(fastcka.cka(x, y, kernel="rbf").item() - ref) <= tol * abs(ref)
    med_ref = R.median_squared_distance(xd).item()
    assert fastcka.ops.median_sq_dist(x).item() == pytest.approx(med_ref, rel=tol)
    lin = fastcka.cka(x, y, method="tiled").item()  # the tiled linear pass shares the shift
    assert abs(lin - R.linear_cka(xd, yd).item()) <= tol


def test_attention_sink_rows_of_a_batch_major_flattening_cost_no_digits():
    """250 sequences of 16 tokens flattened batch-major, token 0 of each far off: every 16th row is an outlier. A
    strided subsample for the shift (step 16 at n = 4000) saw only those rows (rel. error 8e-2 in float32); the
    seeded random subset sees the bulk. The 31k pairs of two outliers have a distance (~32) that the GEMM gets from
    norms ~10⁸ by cancellation, which no single shift avoids: their error bound sends them to the exact float64
    recomputation from row differences, so float32 input is now within 1e-6 (it was ~2e-3); float64 keeps 1e-10."""
    x, y = correlated_pair(4000, 16, 8, seed=22)
    x[::16] += 3000.0
    x32, y32 = x.float(), y.float()
    ref = R.rbf_cka(x32.double(), y32.double()).item()
    assert abs(fastcka.cka(x32, y32, kernel="rbf").item() - ref) <= 1e-6 * abs(ref)
    assert abs(fastcka.cka(x32.double(), y32.double(), kernel="rbf").item() - ref) <= 1e-10 * abs(ref)


def test_median_method_out_of_range_is_an_error():
    for method in (-1, 6):
        with pytest.raises(RuntimeError, match="method must be 0-5"):
            fastcka.ops.median_sq_dist(torch.randn(5, 2), method)


def test_constant_and_degenerate_rbf():
    x = torch.ones(20, 3, dtype=torch.float64)
    y, _ = correlated_pair(20, 3, 1, seed=5)
    assert fastcka.cka(x, y, kernel="rbf").item() == 0.0
    z = torch.zeros(20, 2, dtype=torch.float64)
    z[:3] = 1.0  # median distance 0: γ = 0, a constant kernel
    assert fastcka.cka(z, y, kernel="rbf").item() == 0.0


def test_properties_rbf():
    x, y = correlated_pair(60, 5, 4, seed=6)
    assert abs(fastcka.cka(x, x, kernel="rbf").item() - 1) < 1e-12
    a = fastcka.cka(x, y, kernel="rbf").item()
    assert abs(a - fastcka.cka(y, x, kernel="rbf").item()) < 1e-12
    q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(7)))
    assert abs(fastcka.cka(x @ q + 3.0, y, kernel="rbf").item() - a) < 1e-11
    assert abs(fastcka.cka(x * 4.0, y, kernel="rbf").item() - a) < 1e-11  # median σ scales with the data
    assert 0.0 <= a <= 1.0


@pytest.mark.parametrize("kernel", ["rbf", "linear"])
@pytest.mark.parametrize("unbiased", [False, True])
def test_gradcheck(kernel, unbiased):
    x, y = correlated_pair(9, 3, 2, seed=8)
    x.requires_grad_(True)
    y.requires_grad_(True)
    kw = dict(kernel=kernel, method="tiled", unbiased=unbiased, sigma=(1.3, 0.7) if kernel == "rbf" else None)
    assert torch.autograd.gradcheck(lambda a, b: fastcka.hsic_terms(a, b, **kw), (x, y))
    # with the median σ (treated as a constant): gradient of the op at fixed γ
    g = torch.stack([fastcka.functional.rbf_gamma(x.detach()), fastcka.functional.rbf_gamma(y.detach())])
    assert torch.autograd.gradcheck(lambda a, b: torch.ops.fastcka.kernel_hsic(a, b, g, 1, 1, unbiased), (x, y))


@pytest.mark.parametrize("unbiased", [False, True])
def test_mixed_kernels_match_reference(unbiased):
    """RBF on one side and linear on the other (codes 1 and 0), with gradients."""
    x, y = correlated_pair(40, 5, 3, seed=15)
    g = torch.tensor([0.5 / 1.7 ** 2, 0.0], dtype=torch.float64)
    h = torch.ops.fastcka.kernel_hsic(x, y, g, 1, 0, unbiased)
    k, l = R.gram_rbf(x, 1.7), R.gram_linear(y)
    want = torch.stack([R.hsic(k, l, unbiased), R.hsic(k, k, unbiased), R.hsic(l, l, unbiased)])
    torch.testing.assert_close(h, want, rtol=1e-10, atol=1e-13 * want.abs().max().item())
    xs, ys = x[:9].clone().requires_grad_(), y[:9].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: torch.ops.fastcka.kernel_hsic(a, b, g, 1, 0, unbiased), (xs, ys))


def test_opcheck():
    x, y = correlated_pair(12, 4, 3, seed=9)
    g = torch.tensor([0.3, 0.1], dtype=torch.float64)
    for unbiased in (False, True):
        torch.library.opcheck(torch.ops.fastcka.kernel_hsic, (x.requires_grad_(), y.requires_grad_(), g, 1, 0, unbiased))
        x, y = x.detach(), y.detach()
    torch.library.opcheck(torch.ops.fastcka._kernel_hsic_backward,
                          (torch.tensor([1.0, 0.5, 0.2], dtype=torch.float64), x, y, g, 1, 1, True))
    torch.library.opcheck(torch.ops.fastcka.median_sq_dist, (x,))
    torch.library.opcheck(torch.ops.fastcka.median_sq_dist, (x, 1))
    torch.library.opcheck(torch.ops.fastcka.median_sq_dists, ([x, y[:, :2]],))
    torch.library.opcheck(torch.ops.fastcka.median_sq_dists, ([x], 1))


def test_compile_fullgraph_with_the_median():
    """σ from the exact medians (median_sq_dists: one op for both sides, its fake kernel under compile)."""
    x, y = correlated_pair(24, 4, 3, seed=10)
    f = torch.compile(lambda a, b: fastcka.cka(a, b, kernel="rbf"), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(f(x, y), fastcka.cka(x, y, kernel="rbf"))


def test_compile_fullgraph_with_given_sigma():
    x, y = correlated_pair(24, 4, 3, seed=10, dtype=torch.float32)
    f = torch.compile(lambda a, b: fastcka.cka(a, b, kernel="rbf", sigma=1.5), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(f(x, y), fastcka.cka(x, y, kernel="rbf", sigma=1.5))


def test_bad_input():
    x = torch.randn(10, 3)
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="sigma"):
            fastcka.cka(x, x, kernel="rbf", sigma=bad)
    with pytest.raises(ValueError, match="known kernels: linear, rbf"):
        fastcka.cka(x, x, kernel="laplace")
    with pytest.raises(ValueError, match="tiled"):
        fastcka.cka(x, x, kernel="rbf", method="feature")
    with pytest.raises(ValueError, match="threshold"):
        fastcka.cka(x, x, kernel="rbf", threshold=0.0)


def test_median_of_no_rows_is_an_error():
    with pytest.raises(RuntimeError, match="at least one row"):
        fastcka.ops.median_sq_dist(torch.empty(0, 3))

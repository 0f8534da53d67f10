"""Every CUDA kernel, executed on the CPU: the op tests of each op parametrised over the CPU backend
(torch.ops.fastcka) and the CUDA emulation (torch.ops.fastcka_emu: the csrc/ops/cuda/*.cu sources, kernels and
launchers, compiled against csrc/emu/cuda_emu.h; built by `make emu`), against the float64 reference.

The emulation runs a block's threads as fibers that meet at real barriers, with per-block shared memory, lock-step
warp shuffles, real atomics and blocks in a shuffled order on several OS threads, and cuBLAS's GEMMs as loops (see
cuda_emu.h). Sizes are small and chosen for the kernels' geometry: the kernel-HSIC row blocks, which the emulation
build makes small (see KERNEL_SIZES), 32×32 tiles of the median and centring passes (n = 31, 32, 33: a tile ± 1, a
single partial tile), several blocks meeting in float64 atomics (n ≥ 65, p > 256), feature counts that are not a
multiple of the warp or of 32-feature chunks, odd n. The float64 sums that the CUDA kernels reduce in their own order
(and the CPU with a different blocking) are equal to the reference only up to summation order: those comparisons use
rtol 1e-9 and an absolute floor relative to the largest term, never bit equality; the median and the counts are
compared exactly.
"""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import torch

import fastcka  # noqa: F401  (loads torch.ops.fastcka)
import fastcka.reference as R
from conftest import correlated_pair, randn
from test_center_gram import _count_asymmetric

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMU_LIB = os.path.join(ROOT, "build-emu", "fastcka_emu.so")


def _emu_skip_reason() -> str | None:
    """Why the emulated backend cannot run here (None when it can)."""
    if not os.path.exists(EMU_LIB):
        return "the CUDA-emulation extension is not built (run `make emu`; it lands in build-emu/)"
    sources = glob.glob(os.path.join(ROOT, "csrc", "**", "*.*"), recursive=True)
    newest = max(os.path.getmtime(s) for s in sources if s.endswith((".h", ".cuh", ".cu", ".cpp")))
    if newest > os.path.getmtime(EMU_LIB):
        return "build-emu/fastcka_emu.so is older than csrc/ (run `make emu` to rebuild it)"
    if not hasattr(torch.ops, "fastcka_emu") or not hasattr(torch.ops.fastcka_emu, "kernel_hsic"):
        torch.ops.load_library(EMU_LIB)
    return None


_SKIP = _emu_skip_reason()
BACKENDS = ["cpu", pytest.param("cuda-emu", marks=pytest.mark.skipif(_SKIP is not None, reason=_SKIP or ""))]


@pytest.fixture(params=BACKENDS)
def ops(request):
    """The op namespace of one backend: the CPU kernels or the emulated CUDA kernels (both on CPU tensors)."""
    return torch.ops.fastcka if request.param == "cpu" else torch.ops.fastcka_emu


@pytest.fixture
def emu():
    if _SKIP is not None:
        pytest.skip(_SKIP)
    return torch.ops.fastcka_emu


LINEAR, RBF = 0, 1
FEATURE, SAMPLE = 1, 2
MEDIAN_AUTO, MEDIAN_RADIX, MEDIAN_WINDOW_ONLY, MEDIAN_WINDOW_MISS = 0, 1, 2, 3


def close(got: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-9, scale: float = 0.0) -> None:
    """Equal up to float64 summation order: rtol, and an absolute floor at 1e-12 of the largest reference entry (or
    of `scale`, the size of the inputs, where the result may cancel to ~0)."""
    floor = 1e-12 * max(ref.abs().max().item(), scale, 1e-300)
    torch.testing.assert_close(got, ref.to(got.dtype), rtol=rtol, atol=floor)


def gram(x: torch.Tensor, kernel: int, gamma: float) -> torch.Tensor:
    """The float64 reference Gram of one side: X Xᵀ or exp(−γ‖xᵢ − xⱼ‖²)."""
    return R.gram_linear(x) if kernel == LINEAR else torch.exp(-gamma * R.squared_distances(x))


def ref_terms(k: torch.Tensor, l: torch.Tensor, unbiased: bool) -> torch.Tensor:
    return torch.stack([R.hsic(k, l, unbiased), R.hsic(k, k, unbiased), R.hsic(l, l, unbiased)])


def ref_grads(x, y, terms_fn, g):
    """d(g · terms)/dx, d(g · terms)/dy by autograd through the float64 reference."""
    xr, yr = x.detach().double().requires_grad_(), y.detach().double().requires_grad_()
    (terms_fn(xr, yr) * g).sum().backward()
    return xr.grad, yr.grad


G = torch.tensor([1.0, -0.7, 0.4], dtype=torch.float64)  # a gradient of the three HSIC terms

# --- linear HSIC: column_sums, subtract_means, normalise, dot, row_sq, linear_combine, linear_grad_assemble ----------
# (4, 1, 2): the smallest unbiased n, one thread per column; (33, 31, 33): p around the warp; (70, 40, 65): row_sq's
# warps over partial 32-feature chunks; (130, 257, 5): column_sums with two row chunks (blockIdx.y) and two column
# blocks, dot products over several blocks. The emulation's kGramPanel is 8 columns: every width above 8 here runs the
# feature path's self terms as block-triangle panels (gram_sq_add), 257 as 33 of them.
LINEAR_SIZES = [(4, 1, 2), (33, 31, 33), (70, 40, 65), (130, 257, 5)]


@pytest.mark.parametrize("n,p,q", LINEAR_SIZES)
@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("method", [FEATURE, SAMPLE])
def test_linear_hsic_forward(ops, n, p, q, unbiased, method):
    x, y = correlated_pair(n, p, q, seed=n + p)
    got = ops.linear_hsic(x, y, unbiased, method)
    close(got, ref_terms(R.gram_linear(x), R.gram_linear(y), unbiased))


@pytest.mark.parametrize("n,p,q", LINEAR_SIZES[:3])
@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("method", [FEATURE, SAMPLE])
def test_linear_hsic_backward(ops, n, p, q, unbiased, method):
    x, y = correlated_pair(n, p, q, seed=3 * n)
    dx, dy = ops._linear_hsic_backward(G, x, y, unbiased, method)
    rx, ry = ref_grads(x, y, lambda a, b: ref_terms(R.gram_linear(a), R.gram_linear(b), unbiased), G)
    close(dx, rx)
    close(dy, ry)


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("symmetric", [False, True])
def test_linear_hsic_matrix(ops, unbiased, symmetric):
    xs = [randn(37, p, seed=p) for p in (3, 33, 70)]
    ys = [] if symmetric else [randn(37, q, seed=100 + q) for q in (5, 40)]
    got = ops.linear_hsic_matrix(xs, ys, unbiased, 0)
    other = xs if symmetric else ys
    ref = torch.tensor([[R.hsic(R.gram_linear(a), R.gram_linear(b), unbiased).item() for b in other] for a in xs],
                       dtype=torch.float64)
    close(got, ref)


@pytest.mark.parametrize("n", [6, 33, 130])
@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("method", [FEATURE, SAMPLE])
def test_linear_hsic_of_equal_rows_is_exactly_zero(ops, n, unbiased, method):
    """float64 rows all equal (no variation: CKA 0). Their float64 column sums round, so sum/n misses the value by
    an ulp; centring by that left rounding residue, and CKA(x, y) came out 1.0 or −0.018. The mean is kept within
    the column's [min, max] (linear_hsic.h: column_mean), so the centred columns and every HSIC with x are 0."""
    row = randn(1, 257, seed=n) * 1e3
    x = row.expand(n, 257).contiguous()
    assert ((x.sum(0) / n) != row[0]).any(), "the premise: some column mean rounds"
    y = randn(n, 5, seed=n + 1)
    got = ops.linear_hsic(x, y, unbiased, method)
    assert got[0].item() == 0.0 and got[1].item() == 0.0
    assert got[2].item() > 0.0


@pytest.mark.parametrize("n", [6, 7, 13, 50])
@pytest.mark.parametrize("offset", [1e3, 1e6, 1e8])
@pytest.mark.parametrize("method", [FEATURE, SAMPLE])
def test_linear_hsic_far_from_zero_all_rows_but_one_equal(ops, n, offset, method):
    """float64 rows all equal but one, at an offset 10³–10⁸ × their spread: the U-centred Gram is exactly 0, so
    HSIC₁(K, L) is 0 (CKA 0). The float64 column mean is off by its sum's rounding, ~n·u·offset; the unbiased linear
    formula is first-order in that shift: before the mean's correction pass (linear_hsic.h: centred_entry) 18 of these
    24 cases gave a nonzero HSIC₁(K, L), and CKA down to −6.6e-6 (n 6, offset 10⁶)."""
    g = torch.Generator().manual_seed(n)
    x = (torch.randn(1, 11, generator=g, dtype=torch.float64) * offset).expand(n, 11).clone()
    x[n // 2] += torch.randn(11, generator=g, dtype=torch.float64)
    y = torch.randn(n, 6, generator=g, dtype=torch.float64)
    h = ops.linear_hsic(x, y, True, method)
    assert h[0].item() == 0.0
    assert fastcka.cka_from_terms(h).item() == 0.0


@pytest.mark.parametrize("unbiased", [False, True])
def test_linear_hsic_float32_agrees_with_float64(ops, unbiased):
    x, y = correlated_pair(65, 33, 7, seed=5)
    ref = ref_terms(R.gram_linear(x), R.gram_linear(y), unbiased)
    got = ops.linear_hsic(x.float(), y.float(), unbiased, SAMPLE)
    torch.testing.assert_close(got, ref, rtol=2e-5, atol=2e-6 * ref.abs().max().item())


# --- kernel HSIC: shift_normalise, normalise, row_sq, the row-block passes (cuBLAS GEMMs, hsic_block, its finish,
# grad_u, hsic_grad_block, grad_row_sums, grad_finish), dot, kernel_combine --------------------------------------------
# The emulation's row blocks hold B = min(n, max(8, 1024 // n)) rows and its epilogue tiles 4 rows × 64 columns (two
# warps; kernel_hsic_kernel.cu): n = 5 and 31 fit one block with room to spare (n < 1024 // n), n = 32 fills one
# exactly, n = 33 takes 31 + 2 rows, n = 97 ten blocks of 10 rows and a last of 7 (two column tiles), n = 290
# (below) 36 blocks of 8 rows and one of 2. p, q: one feature, p around the warp, p = 64.
KERNEL_SIZES = {5: (1, 2), 31: (33, 3), 32: (32, 64), 33: (35, 1), 97: (7, 40)}
KERNEL_PAIRS = [(RBF, RBF), (LINEAR, LINEAR), (RBF, LINEAR)]


@pytest.mark.parametrize("n", sorted(KERNEL_SIZES))
@pytest.mark.parametrize("kernels", KERNEL_PAIRS)
@pytest.mark.parametrize("unbiased", [False, True])
def test_kernel_hsic_forward(ops, n, kernels, unbiased):
    p, q = KERNEL_SIZES[n]
    x, y = correlated_pair(n, p, q, seed=n)
    gamma = torch.tensor([0.5 / p, 0.3 / q], dtype=torch.float64)
    got = ops.kernel_hsic(x, y, gamma, kernels[0], kernels[1], unbiased)
    ref = ref_terms(gram(x, kernels[0], gamma[0].item()), gram(y, kernels[1], gamma[1].item()), unbiased)
    close(got, ref)


@pytest.mark.parametrize("n", [5, 33, 97])
@pytest.mark.parametrize("kernels", KERNEL_PAIRS)
@pytest.mark.parametrize("unbiased", [False, True])
def test_kernel_hsic_backward(ops, n, kernels, unbiased):
    p, q = KERNEL_SIZES[n]
    x, y = correlated_pair(n, p, q, seed=2 * n)
    gamma = torch.tensor([0.4 / p, 0.6 / q], dtype=torch.float64)
    dx, dy = ops._kernel_hsic_backward(G, x, y, gamma, kernels[0], kernels[1], unbiased)
    rx, ry = ref_grads(x, y, lambda a, b: ref_terms(gram(a, kernels[0], gamma[0].item()),
                                                    gram(b, kernels[1], gamma[1].item()), unbiased), G)
    close(dx, rx, rtol=1e-8)
    close(dy, ry, rtol=1e-8)


@pytest.mark.parametrize("n,unbiased", [(2, False), (3, False), (4, True), (4, False), (130, True)])
@pytest.mark.parametrize("kernels", KERNEL_PAIRS)
def test_kernel_hsic_row_block_edges(ops, n, unbiased, kernels):
    """The smallest n of each estimator (one block of 2, 3 or 4 rows: a single epilogue tile, mostly idle lanes), and
    n = 130: 16 blocks of 8 rows and one of 2, three column tiles of which the last holds 2 columns, p = 70 and
    q = 65 (just over a multiple of the warp). Forward and gradient against the reference."""
    p, q = (70, 65) if n == 130 else (3, 2)
    x, y = correlated_pair(n, p, q, seed=5 * n + 1)
    gamma = torch.tensor([0.3 / p, 0.5 / q], dtype=torch.float64)
    terms = lambda a, b: ref_terms(gram(a, kernels[0], gamma[0].item()), gram(b, kernels[1], gamma[1].item()), unbiased)
    close(ops.kernel_hsic(x, y, gamma, kernels[0], kernels[1], unbiased), terms(x, y))
    dx, dy = ops._kernel_hsic_backward(G, x, y, gamma, kernels[0], kernels[1], unbiased)
    rx, ry = ref_grads(x, y, terms, G)
    close(dx, rx, rtol=1e-8, scale=rx.abs().max().item())
    close(dy, ry, rtol=1e-8, scale=ry.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_kernel_hsic_does_not_depend_on_block_order(ops, dtype):
    """Bit-for-bit the same results run after run: the emulation runs the blocks of each launch in a new shuffled
    order on several OS threads, so a sum that depended on block scheduling (float64 atomics: the former tiled pass)
    would differ in its last bits. The CUDA passes reduce through per-block slots in a fixed order instead."""
    x, y = correlated_pair(97, 7, 40, seed=4, dtype=dtype)
    gamma = torch.tensor([0.05, 0.01], dtype=torch.float64)
    for kx, ky, unbiased in ((RBF, RBF, False), (RBF, LINEAR, True)):
        first = ops.kernel_hsic(x, y, gamma, kx, ky, unbiased)
        grad = ops._kernel_hsic_backward(G, x, y, gamma, kx, ky, unbiased)
        for _ in range(2):
            assert torch.equal(ops.kernel_hsic(x, y, gamma, kx, ky, unbiased), first)
            again = ops._kernel_hsic_backward(G, x, y, gamma, kx, ky, unbiased)
            assert torch.equal(again[0], grad[0]) and torch.equal(again[1], grad[1])


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-8), (torch.float32, 1e-3)])
def test_kernel_hsic_gradient_on_clusters_and_duplicates(ops, dtype, rtol):
    """Rows far apart against their spread (two clusters 1e3 apart) and 15 equal rows: the GEMM distances lose
    their digits there and the epilogue recomputes them from the rows (kernel_sq_dist's guard), with the global row
    and column indices of the block. The gradient against the reference's, float32 within 1e-3 of the largest
    entry (float32 W blocks and products)."""
    torch.manual_seed(0)
    lab = (torch.arange(90) < 30).double()[:, None]
    x = torch.randn(90, 6, dtype=torch.float64) + 1e3 * lab
    x[60:75] = x[60]
    y = torch.randn(90, 3, dtype=torch.float64) + x[:, :3]
    x, y = x.to(dtype), y.to(dtype)
    gamma = torch.tensor([0.5 / 6, 0.5 / 3], dtype=torch.float64)
    for unbiased in (False, True):
        terms = lambda a, b: ref_terms(gram(a, RBF, gamma[0].item()), gram(b, RBF, gamma[1].item()), unbiased)
        ref = terms(x.double(), y.double())
        got = ops.kernel_hsic(x, y, gamma, RBF, RBF, unbiased)
        torch.testing.assert_close(got, ref, rtol=1e-9 if dtype == torch.float64 else 1e-5,
                                   atol=1e-6 * ref.abs().max().item())
        dx, dy = ops._kernel_hsic_backward(G, x, y, gamma, RBF, RBF, unbiased)
        rx, ry = ref_grads(x, y, terms, G)
        for d, r in ((dx, rx), (dy, ry)):
            torch.testing.assert_close(d.double(), r, rtol=rtol, atol=rtol * r.abs().max().item())


def test_kernel_hsic_beyond_the_shift_subset(ops):
    """n > 255: the shift is the column median of a seeded row subset (index_select); 37 row blocks."""
    x, y = correlated_pair(290, 9, 4, seed=7)
    x = x + 50.0  # a mean far from zero: the shift matters
    gamma = torch.tensor([0.05, 0.1], dtype=torch.float64)
    for unbiased in (False, True):
        got = ops.kernel_hsic(x, y, gamma, RBF, RBF, unbiased)
        close(got, ref_terms(gram(x, RBF, 0.05), gram(y, RBF, 0.1), unbiased))
    dx, dy = ops._kernel_hsic_backward(G, x, y, gamma, RBF, LINEAR, True)
    rx, ry = ref_grads(x, y, lambda a, b: ref_terms(gram(a, RBF, 0.05), gram(b, LINEAR, 0.1), True), G)
    close(dx, rx, rtol=1e-8)
    close(dy, ry, rtol=1e-8)


@pytest.mark.parametrize("unbiased", [False, True])
def test_kernel_hsic_float32_agrees_with_float64(ops, unbiased):
    x, y = correlated_pair(70, 33, 5, seed=11)
    gamma = torch.tensor([0.02, 0.1], dtype=torch.float64)
    ref = ref_terms(gram(x, RBF, 0.02), gram(y, RBF, 0.1), unbiased)
    got = ops.kernel_hsic(x.float(), y.float(), gamma, RBF, RBF, unbiased)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())


# --- the exact median: sample_distances + distance_window (window), distance_histogram + distance_window (radix) -----
def numpy_median(x: torch.Tensor) -> float:
    d = ((x[:, None].double() - x[None].double()) ** 2).sum(-1).numpy()
    return float(np.median(d))


@pytest.mark.parametrize("n", [2, 3, 31, 32, 33, 65, 120])
def test_median_all_methods_exact_on_integer_data(ops, n):
    """Small integers: every squared distance is exact, so each method must return numpy's median to the bit.
    Ties everywhere: the window's edges are shared by many pairs; odd n² (one middle entry) and even n²."""
    x = torch.randint(0, 4, (n, 3), generator=torch.Generator().manual_seed(n)).double()
    methods = [MEDIAN_AUTO, MEDIAN_RADIX, MEDIAN_WINDOW_MISS] + ([MEDIAN_WINDOW_ONLY] if n >= 31 else [])
    for method in methods:
        assert ops.median_sq_dist(x, method).item() == numpy_median(x), method


@pytest.mark.parametrize("n", [33, 97])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_median_methods_agree_to_the_bit_on_random_data(ops, n, dtype):
    """Every pass computes the same distances, so window and radix return the same float; the reference computes
    them from differences, so it agrees only up to rounding."""
    x, _ = correlated_pair(n, 37, 1, seed=n, dtype=dtype)
    radix = ops.median_sq_dist(x, MEDIAN_RADIX).item()
    for method in (MEDIAN_AUTO, MEDIAN_WINDOW_ONLY, MEDIAN_WINDOW_MISS):
        assert ops.median_sq_dist(x, method).item() == radix, method
    ref = R.median_squared_distance(x.double()).item()
    assert radix == pytest.approx(ref, rel=1e-12 if dtype == torch.float64 else 1e-5, abs=0)


@pytest.mark.parametrize("half", [2, 3, 40])
def test_median_when_the_two_middle_entries_differ(ops, half):
    """Half the entries 0, half 4: the two middle ranks lie in different radix bins (each walked on its own)."""
    x = torch.cat([torch.zeros(half, 1), torch.full((half, 1), 2.0)]).double()
    for method in (MEDIAN_AUTO, MEDIAN_RADIX, MEDIAN_WINDOW_MISS):
        assert ops.median_sq_dist(x, method).item() == 2.0, method


def test_median_beyond_the_shift_subset(ops):
    x = torch.randint(-3, 4, (300, 2), generator=torch.Generator().manual_seed(3)).double() + 1000.0
    for method in (MEDIAN_RADIX, MEDIAN_WINDOW_ONLY):
        assert ops.median_sq_dist(x, method).item() == numpy_median(x), method


@pytest.mark.parametrize("method", [MEDIAN_AUTO, MEDIAN_RADIX])
def test_median_sq_dists_equals_each_layers_median(ops, method):
    """The medians of several layers in one call (on the CPU two at a time, one thread each, at small n): the same
    bits as one median_sq_dist call per layer, for layers of different n, widths and dtypes, ties included."""
    xs = [correlated_pair(97, 37, 1, seed=1)[0], correlated_pair(33, 5, 1, seed=2, dtype=torch.float32)[0],
          torch.randint(0, 4, (65, 3), generator=torch.Generator().manual_seed(3)).double(), torch.zeros(2, 4)]
    got = ops.median_sq_dists(xs, method)
    assert got.dtype == torch.float64 and got.shape == (len(xs),)
    assert got.tolist() == [ops.median_sq_dist(x, method).item() for x in xs]
    assert got[2].item() == numpy_median(xs[2]) and got[3].item() == 0.0
    with pytest.raises(RuntimeError, match="empty list"):  # the dispatcher's: no tensor to pick a kernel by
        ops.median_sq_dists([], method)
    with pytest.raises(RuntimeError, match="at least one row"):
        ops.median_sq_dists([xs[0], torch.zeros(0, 3)], method)


# --- Gram centring: center_sums, center_totals, center_apply; asymmetric_pairs ---------------------------------------
@pytest.mark.parametrize("n", [1, 3, 33, 257, 300])
@pytest.mark.parametrize("unbiased", [False, True])
def test_center_gram(ops, n, unbiased):
    """n = 257, 300: a row longer than the block (256 threads) and column sums meeting from many row blocks."""
    if unbiased and n < 3:
        pytest.skip("unbiased centring needs n >= 3")
    a = randn(n, n, seed=n)
    k = a + a.T
    close(ops.center_gram(k, int(unbiased)), R.center_gram(k, unbiased), scale=k.abs().max().item())


@pytest.mark.parametrize("n", [3, 40, 270])
def test_center_gram_adjoint_mode(ops, n):
    """Mode 2 is the adjoint of mode 1: ⟨C₁(A), B⟩ = ⟨A, C₂(B)⟩ for any square A, B."""
    a, b = randn(n, n, seed=1), randn(n, n, seed=2)
    lhs = (ops.center_gram(a, 1) * b).sum()
    rhs = (a * ops.center_gram(b, 2)).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-10)
    close(ops.center_gram(a, 1), R.center_gram(a, True), scale=a.abs().max().item())


@pytest.mark.parametrize("n", [1, 31, 33, 70])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gram_asymmetric_pairs(ops, n, dtype):
    """Planted asymmetries in diagonal and off-diagonal tiles, some below the threshold; counts compared exactly."""
    g = torch.Generator().manual_seed(n)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    noise = torch.randn(n, n, generator=g, dtype=torch.float64) * (torch.rand(n, n, generator=g) < 0.1)
    k = (a + a.T + noise).to(dtype)
    for threshold in (0.0, 0.5, 3.0):
        got = ops.gram_asymmetric_pairs(k, torch.tensor(threshold, dtype=torch.float64))
        assert got.item() == _count_asymmetric(k, threshold), threshold


def test_gram_asymmetric_pairs_nan_and_inf(ops):
    a = randn(70, 70, seed=3)
    k = a + a.T
    k[5, 66] = k[66, 5] = float("nan")
    k[2, 69] = float("nan")  # NaN facing a finite entry: not counted
    k[10, 11] = k[11, 10] = float("inf")
    assert ops.gram_asymmetric_pairs(k, torch.tensor(0.0, dtype=torch.float64)).item() == 0
    k[40, 41] = -float("inf")
    assert ops.gram_asymmetric_pairs(k, torch.tensor(float("inf"), dtype=torch.float64)).item() == 1


# --- frequency spectrum: fourier_basis, spectrum_fold, spectrum_fold_backward -----------------------------------------
@pytest.mark.parametrize("p", [2, 7, 32, 33])
@pytest.mark.parametrize("grid", [False, True])
@pytest.mark.parametrize("method", [1, 2])
def test_frequency_spectrum(ops, p, grid, method):
    x = randn(p, p, 3, seed=p) if grid else randn(p, 300, seed=p)  # 300 columns: a fold longer than the block
    ref = R.frequency_spectrum(x, dim=(0, 1) if grid else 0)
    close(ops.frequency_spectrum(x, method), ref, rtol=1e-10)


@pytest.mark.parametrize("p", [2, 7, 33])
@pytest.mark.parametrize("grid", [False, True])
def test_frequency_spectrum_backward(ops, p, grid):
    x = randn(p, p, 2, seed=p) if grid else randn(p, 5, seed=p)
    dim = (0, 1) if grid else 0
    h = p // 2 + 1
    g = randn(*((h, h) if grid else (h,)), seed=p + 1)
    xr = x.clone().requires_grad_()
    (R.frequency_spectrum(xr, dim=dim) * g).sum().backward()
    close(ops._frequency_spectrum_backward(g, x, 1), xr.grad, rtol=1e-10)


# --- argument checks of the backward ops (they used to read a short or float32 grad out of bounds) -------------------
@pytest.mark.parametrize("bad", [torch.ones(2, dtype=torch.float64), torch.ones(3, dtype=torch.float32)])
def test_backward_ops_check_grad(ops, bad):
    x, y = correlated_pair(8, 3, 2, seed=1)
    gamma = torch.tensor([0.5, 0.5], dtype=torch.float64)
    with pytest.raises(RuntimeError, match="grad must be a float64 tensor of 3 entries"):
        ops._linear_hsic_backward(bad, x, y, False, 0)
    with pytest.raises(RuntimeError, match="grad must be a float64 tensor of 3 entries"):
        ops._kernel_hsic_backward(bad, x, y, gamma, 1, 1, False)
    with pytest.raises(RuntimeError, match="grad must be a float64 tensor of 4 entries"):  # p = 7: h = 4
        ops._frequency_spectrum_backward(bad, randn(7, 2, seed=1), 1)


# --- the emulation itself, and the shared block reductions at block sizes the ops never launch -----------------------
@pytest.mark.parametrize("threads", [1, 7, 31, 32, 33, 100, 256, 1024])
def test_block_sum_and_max_at_any_block_size(emu, threads):
    """cuda::block_sum/block_max (csrc/ops/cuda/primitives.cuh) for any block size: partial last warps and blocks
    under 32 threads included (they used to need a multiple of 32: a full-mask shuffle on a partial warp)."""
    short = threads // 2  # the last block is partial (its absent values read as 0)
    x = randn(3 * threads - short, seed=threads).abs() + 1.0
    got = emu._emu_block_reduce(x, threads)
    pad = torch.cat([x, torch.zeros(short, dtype=torch.float64)]).reshape(3, threads)
    close(got[:, 0], pad.sum(1), rtol=1e-13)
    assert torch.equal(got[:, 1], pad.max(1).values)


@pytest.mark.parametrize("threads", [32, 256, 1000])
def test_emulated_barrier_and_shared_memory(emu, threads):
    """With the barrier every thread sees its neighbour's write; without it some read the slot unwritten (the
    emulation runs a block's threads as fibers up to the barrier, so the race is certain); shared memory is per
    block (each block's values carry its own index)."""
    want = (torch.arange(threads) + 1) % threads + 1000 * torch.arange(4)[:, None]
    assert torch.equal(emu._emu_shared_neighbour(torch.zeros(1), 4, threads, True), want)
    assert not torch.equal(emu._emu_shared_neighbour(torch.zeros(1), 4, threads, False), want)


def test_emulated_atomics_and_block_order(emu):
    blocks, threads = 96, 64
    out = emu._emu_atomics(torch.zeros(1), blocks, threads)
    assert out[0] == out[1] == blocks * threads and out[2] == blocks * threads - 1
    order = out[3:]
    assert sorted(order.tolist()) == list(range(blocks))
    assert order.tolist() != list(range(blocks))  # not the launch order


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (5, 3, 7), (33, 70, 65), (4, 6, 0)])
def test_row_major_gemm_on_cublas(emu, dtype, m, n, k):
    """cuda::gemm_rowmajor (blas.cuh), the kernel-HSIC passes' GEMMs, through the emulated cuBLAS (column-major, as
    the real one): a·bᵀ and a·b equal torch's product of the same row-major matrices; no features (k = 0) give 0."""
    a = randn(m, k, seed=m + k).to(dtype)
    b = randn(n, k, seed=n + 2 * k).to(dtype)
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(emu._emu_gemm(a, b, True), a @ b.T, rtol=rtol, atol=rtol)
    bt = b.T.contiguous()
    torch.testing.assert_close(emu._emu_gemm(a, bt, False), a @ bt, rtol=rtol, atol=rtol)


def test_emulation_reports_undefined_warp_use_and_bad_launches(emu):
    assert emu._emu_full_mask_shuffle(torch.zeros(1), 64).item() == 1.0  # full warps: lane 0 reads lane 1
    with pytest.raises(RuntimeError, match="lanes that do not exist"):
        emu._emu_full_mask_shuffle(torch.zeros(1), 16)
    with pytest.raises(RuntimeError, match="invalid configuration"):
        emu._emu_launch_config(torch.zeros(1), 1, 65536, 32)  # gridDim.y is at most 65535, as on the GPU
    with pytest.raises(RuntimeError, match="invalid configuration"):
        emu._emu_launch_config(torch.zeros(1), 1, 1, 1025)

"""The median's reduced-precision window pass (issue 23, item 1): a bfloat16 GEMM sorts the pairs against the sampled
bracket, a rigorous per-pair error bound (csrc/include/fastcka/median.h) sends the pairs it cannot sort to a
recomputation, and the answer stays exactly numpy's median of the n² float64 squared distances.

Method 4 forces the reduced pass (auto takes it where the CPU has bf16 dot instructions and the sample predicts few
undecided pairs); method 1 (radix passes only, full precision) and an independent numpy median are the references.
The inputs put many pairs on the bracket's edges: ties from small integers, duplicated rows, clusters, huge offsets.
"""
import numpy as np
import pytest
import torch

import fastcka
from conftest import correlated_pair

OPS = torch.ops.fastcka
MEDIAN_AUTO, MEDIAN_RADIX, MEDIAN_WINDOW_ONLY, MEDIAN_WINDOW_MISS, MEDIAN_WINDOW_REDUCED, MEDIAN_TWO_WINDOWS = 0, 1, 2, 3, 4, 5


def numpy_median(x: torch.Tensor) -> float:
    """numpy's median of the n² squared distances from exact float64 row differences (the diagonal zeros included)."""
    a = x.double().numpy()
    d = ((a[:, None, :] - a[None, :, :]) ** 2).sum(-1)
    return float(np.median(d))


def _rng(seed):
    return torch.Generator().manual_seed(seed)


def _inputs():
    """(name, tensor) pairs built to crowd the bracket: each is a case users hit."""
    out = []
    x, _ = correlated_pair(700, 33, 1, seed=1)
    out.append(("spread f64", x))
    out.append(("spread f32", x.float()))
    g = _rng(2)
    out.append(("integers 0-2, p 3 (ties on the edges)", torch.randint(0, 3, (640, 3), generator=g).float()))
    out.append(("integers 0-9, p 40", torch.randint(0, 10, (600, 40), generator=g).double()))
    base = torch.randn(150, 24, generator=g)
    out.append(("every row 4 times", base.repeat(4, 1)[torch.randperm(600, generator=g)]))
    centres = torch.randn(6, 50, generator=g) * 20
    out.append(("6 tight clusters", centres[torch.randint(0, 6, (700,), generator=g)] + 1e-3 * torch.randn(700, 50, generator=g)))
    xo, _ = correlated_pair(600, 16, 1, seed=3)
    out.append(("offset 1e4, f32", (xo + 1e4).float()))
    out.append(("offset 1e4, f64", xo + 1e4))
    out.append(("half-precision values", torch.randn(520, 64, generator=g).half().float()))
    out.append(("bfloat16 values", torch.randn(520, 64, generator=g).bfloat16().float()))
    w = torch.randn(530, 300, generator=g)
    w[:, :3] *= 1e3  # three dominant features: the bf16 bound is loose along them
    out.append(("dominant features, p 300", w))
    # nearly equidistant rows: every distance within ~2 % of the median, so the bf16 error band (~0.4 %) holds a
    # large share of the pairs and a bound that is too tight would misplace some of them
    out.append(("high-dimensional gaussian, p 2048", torch.randn(560, 2048, generator=g)))
    simplex = torch.eye(600, 640) * 4 + 0.01 * torch.randn(600, 640, generator=g)
    out.append(("noisy simplex (all distances ≈ 32)", simplex))
    # collinear rows: every coordinate of a row rounds to bf16 the same way, so the input-rounding errors add up
    # coherently (|Σ δaₖbₖ| reaches the Cauchy–Schwarz bound) instead of cancelling
    out.append(("collinear rows (coherent bf16 rounding)", (torch.randn(700, 1, generator=g) * torch.ones(1, 32))))
    out.append(("one far outlier row", torch.cat([torch.randn(600, 20, generator=g), torch.full((1, 20), 1e5)])))
    return out


def _shift_subset(n: int) -> list:
    """The rows whose column medians the kernels subtract (kernel_hsic_impl.h: shift_row, splitmix64 of seed + r)."""
    mask = (1 << 64) - 1

    def splitmix64(z):
        z = (z + 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    return sorted({splitmix64((0x5A17F00D + r) & mask) % n for r in range(min(n, 255))})


def coherent_rounding_rows(n=1024, p=64, h=0.0038, seed=5):
    """Rows whose bf16 input rounding adds up coherently while the bf16 dot stays small, so that the rounding term of
    the bound, not the output term, is what covers the error: the first p/2 coordinates are ±(1 + h) (1 + h rounds
    to 1 in bf16, an error of −h on every one of them), the rest ±1 (exact); random signs, so a pair's dot is a sum
    of cancelling ±1 terms while its error 2h·(s_a·s_b) comes from the first half alone. The rows the shift is taken
    from are zero, so the shift is 0 and cannot take the structure out."""
    g = _rng(seed)
    x = torch.randint(0, 2, (n, p), generator=g).float() * 2 - 1
    x[:, : p // 2] *= 1 + h
    x[_shift_subset(n)] = 0
    return x


INPUTS = _inputs() + [("coherent bf16 rounding, small dots", coherent_rounding_rows())]


def test_coherent_rows_need_the_input_rounding_terms():
    """The last input is one the rounding terms of the bf16 bound are needed for: a third of its pairs have a bf16
    distance error larger than the bound without them (β, accumulation and output terms only), thousands of those
    within their error of the median; with them, none.

    What a too-small bound breaks, and what it cannot: a pair it misplaces lies within its error of a bracket edge,
    and the wanted ranks lie ~6 standard errors inside the bracket, so a misplaced pair only moves which side of
    the edge it is counted on, and the selected value stays the same. With the rounding terms removed from
    reduced_row_terms (tried: 2026-12-03), this input still gave numpy's median; what failed was the cross-check of
    the two-window median (test_two_windows_at_a_size_where_auto_takes_them: "the two window passes disagree"),
    whose binned and narrow passes then count the edge pairs differently."""
    x = coherent_rounding_rows()
    n, p = x.shape
    assert x[_shift_subset(n)].median(0).values.abs().max().item() == 0.0  # what the kernels subtract is 0
    xs = x / 2  # the kernels' power-of-two scaling, rows within [-1, 1]: it changes no bf16 rounding
    xd = xs.double()
    nr = (xd * xd).sum(1)
    d = nr[:, None] + nr[None, :] - 2 * xd @ xd.T
    xb = xs.bfloat16()
    s = (xb @ xb.T).double()  # the reduced pass's GEMM: bf16 in, bf16 out
    f = (nr[:, None] + nr[None, :] - 2 * s).clamp_min(0)
    t, r = xb.double().norm(dim=1), (xb.double() - xd).norm(dim=1)
    u24, u8 = 2.0**-24, 2.0**-8
    beta = 1.01 * (p * u24 / (1 - p * u24) + 4.2 * u24 + (p + 4) * 2.0**-53)
    without = beta * (nr[:, None] + nr[None, :]) + 2.02 * p * u24 / (1 - p * u24) * t[:, None] * t[None, :] \
        + 2.02 * u8 / (1 - u8) * s.abs()
    rounding = 2.02 * r[:, None] * t[None, :] + 2.02 * (t[:, None] + r[:, None]) * r[None, :]
    i, j = torch.triu_indices(n, n, 1)
    err, e0, e1, dist = (f - d).abs()[i, j], without[i, j], rounding[i, j], d[i, j]
    assert (err > e0).float().mean().item() > 0.2
    assert not bool((err > e0 + e1).any())
    med = numpy_median(x) / 4  # in the scaled units of d
    assert int(((err > e0) & ((dist - med).abs() < err)).sum()) > 1000


@pytest.mark.parametrize("name,x", INPUTS, ids=[n for n, _ in INPUTS])
def test_reduced_window_is_numpys_median(name, x):
    want = numpy_median(x)
    radix = OPS.median_sq_dist(x, MEDIAN_RADIX).item()
    reduced = OPS.median_sq_dist(x, MEDIAN_WINDOW_REDUCED).item()
    auto = OPS.median_sq_dist(x, MEDIAN_AUTO).item()
    two = OPS.median_sq_dist(x, MEDIAN_TWO_WINDOWS).item()  # the large-n path: binned pass, then a narrow window
    # every method reads the answer from the same exact distances: the same float, bit for bit
    assert reduced == radix == auto == two, name
    # and that float is numpy's median up to the summation order of a p-term float64 sum
    assert reduced == pytest.approx(want, rel=1e-13 if x.dtype == torch.float64 else 1e-13, abs=0), name


@pytest.mark.parametrize("n", [1, 2, 3, 4, 33, 257])
def test_reduced_window_tiny_and_odd_n(n):
    x, _ = correlated_pair(n, 5, 1, seed=n, dtype=torch.float32)
    assert OPS.median_sq_dist(x, MEDIAN_WINDOW_REDUCED).item() == OPS.median_sq_dist(x, MEDIAN_RADIX).item()


@pytest.mark.parametrize("n", [1, 2, 5, 40, 700, 1001])
def test_two_windows_tiny_and_odd_n(n):
    x, _ = correlated_pair(n, 7, 1, seed=n, dtype=torch.float32)
    assert OPS.median_sq_dist(x, MEDIAN_TWO_WINDOWS).item() == OPS.median_sq_dist(x, MEDIAN_RADIX).item()


def test_two_windows_at_a_size_where_auto_takes_them():
    """n = 56,000: the bracket holds more pairs than the collect buffer, so auto runs the binned pass and a second
    window (before, three or four radix passes); it must agree with the radix passes to the bit."""
    x, _ = correlated_pair(56000, 3, 1, seed=70, dtype=torch.float32)
    assert OPS.median_sq_dist(x, MEDIAN_AUTO).item() == OPS.median_sq_dist(x, MEDIAN_RADIX).item()


def test_reduced_window_all_rows_equal_is_zero():
    x = torch.ones(600, 8) * 3.25
    assert OPS.median_sq_dist(x, MEDIAN_WINDOW_REDUCED).item() == 0.0


def test_more_than_half_the_pairs_tied_at_zero():
    g = _rng(7)
    x = torch.cat([torch.zeros(500, 12), torch.randn(150, 12, generator=g)])
    assert OPS.median_sq_dist(x, MEDIAN_WINDOW_REDUCED).item() == numpy_median(x) == 0.0


@pytest.mark.parametrize("seed", range(6))
def test_fuzzed_families_against_numpy(seed):
    """Seeded mixtures: spread, integer grids, duplicates and offsets in random proportions, odd and even n."""
    g = _rng(100 + seed)
    n = int(torch.randint(520, 900, (1,), generator=g))
    p = int(torch.randint(1, 120, (1,), generator=g))
    x = torch.randn(n, p, generator=g, dtype=torch.float64) * float(10 ** torch.randint(-3, 4, (1,), generator=g))
    k = int(torch.randint(0, n // 2, (1,), generator=g))
    x[:k] = torch.round(x[:k])  # a block of rounded (often tied) rows
    x[k: 2 * k] = x[:k]  # and their duplicates
    x += float(10 ** torch.randint(0, 5, (1,), generator=g))  # an offset
    for t in (x, x.float()):
        assert OPS.median_sq_dist(t, MEDIAN_WINDOW_REDUCED).item() == OPS.median_sq_dist(t, MEDIAN_RADIX).item()
        assert OPS.median_sq_dist(t, MEDIAN_WINDOW_REDUCED).item() == pytest.approx(numpy_median(t), rel=1e-13, abs=0)


def test_rbf_cka_with_the_reduced_median_is_the_reference():
    """The user-facing path: cka(kernel="rbf") with the exact median stays within 1e-9 (float64) of the reference."""
    from fastcka import reference as R

    x, y = correlated_pair(800, 40, 30, seed=11)
    ref = R.rbf_cka(x, y).item()
    assert abs(fastcka.cka(x, y, kernel="rbf").item() - ref) <= 1e-9 * abs(ref)


# --- the error model of torch's bfloat16 GEMM, which the bound rests on -----------------------------------------------
@pytest.mark.parametrize("p", [1, 2, 7, 64, 256, 1000, 4096])
@pytest.mark.parametrize("kind", ["normal", "cancelling", "wide range"])
def test_bf16_gemm_obeys_the_error_model(p, kind):
    """median.h assumes: exact bf16 products, float32 accumulation (any order), one rounding of each output to bf16.
    So |ŝ − ã·b̃| ≤ γ_p(2⁻²⁴)·Σ|ãₖb̃ₖ| + 2⁻⁸/(1 − 2⁻⁸)·|ŝ| + 2·(p + 1)·2⁻¹²⁶. If a torch build ever computes its bf16
    matmul differently (bf16 accumulation, say), this fails and the reduced pass must be switched off."""
    g = _rng(p)
    a = torch.randn(96, p, generator=g)
    b = torch.randn(80, p, generator=g)
    if kind == "cancelling":
        b[:40] = -a[:40] + 1e-3 * torch.randn(40, p, generator=g)  # dots cancel to small values
    elif kind == "wide range":
        a = a * torch.exp2(torch.randint(-60, 1, (96, p), generator=g).float())
    scale = max(a.abs().max().item(), b.abs().max().item())
    a, b = (a / scale).bfloat16(), (b / scale).bfloat16()
    s = (a @ b.T).double()
    exact = a.double() @ b.double().T
    absdot = a.double().abs() @ b.double().abs().T
    pu = p * 2.0**-24
    bound = pu / (1 - pu) * absdot + 2.0**-8 / (1 - 2.0**-8) * s.abs() + 2 * (p + 1) * 2.0**-126
    assert ((s - exact).abs() <= bound).all()

"""The unbiased estimator at small n (csrc/include/fastcka/u_centred.h): where the one-pass moments cancel (a row
far from the others, an RBF σ far above the median), the numerators come from the U-centred Grams.

Ground truth: exact rational arithmetic (fractions.Fraction) for linear kernels — every float input is a rational,
so ⟨Ũ_K, Ũ_L⟩ is computed without any rounding — and the fuzz suite's independent float64 formulation (elementwise
U-centring of an expm1-stable Gram) for RBF kernels. Each family also shows that the one-pass formula misses there
(fastcka.reference.hsic1, Song et al.'s formula in float64), so the inputs are hard and the tests can fail.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

import _independent as I
import fastcka
from fastcka import reference as R
from fastcka.streaming import MinibatchCKA
from test_cuda_emu import BACKENDS

F64 = torch.float64


@pytest.fixture(params=BACKENDS)
def ops(request):
    return torch.ops.fastcka if request.param == "cpu" else torch.ops.fastcka_emu


def one_row_apart(seed: int, n: int, p: int, sep: float, dtype=F64):
    """n − 1 rows of unit spread and one row `sep` away from them (a far outlier, such as an attention-sink token),
    and a noisy copy of some of their columns as y. The U-centring removes the outlier's own structure exactly (with
    every row but one equal, Ũ = 0), so Ũ is sep² times smaller than the entries: the one-pass terms cancel."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=g, dtype=F64)
    far = torch.randn(p, generator=g, dtype=F64)
    x[0] += sep * far / far.norm()
    q = max(1, p - 1)
    y = x[:, torch.randperm(p, generator=g)[:q]] + 0.5 * torch.randn(n, q, generator=g, dtype=F64)
    return x.to(dtype), y.to(dtype)


def exact_linear_hsic1(x: torch.Tensor, y: torch.Tensor) -> list:
    """[HSIC₁(K,L), HSIC₁(K,K), HSIC₁(L,L)] of linear kernels, in exact rational arithmetic (U-centring, Song et al.)."""
    n = x.shape[0]

    def u_centred(t):
        rows = [[Fraction(v) for v in r] for r in t.double().tolist()]
        k = [[Fraction(0) if i == j else sum(a * b for a, b in zip(rows[i], rows[j])) for j in range(n)]
             for i in range(n)]
        r = [sum(row) for row in k]
        s = sum(r)
        return [[Fraction(0) if i == j else k[i][j] - (r[i] + r[j]) / (n - 2) + s / ((n - 1) * (n - 2))
                 for j in range(n)] for i in range(n)]

    uk, ul = u_centred(x), u_centred(y)
    ip = lambda a, b: sum(a[i][j] * b[i][j] for i in range(n) for j in range(n)) / (n * (n - 3))  # noqa: E731
    return [ip(uk, ul), ip(uk, uk), ip(ul, ul)]


def feature_one_pass_hsic1(x: torch.Tensor, y: torch.Tensor) -> list:
    """The feature-space one-pass formula (linear_hsic.h) replayed in float64 on centred features."""
    n = x.shape[0]
    xc, yc = x - x.mean(0), y - y.mean(0)

    def h(a, b):
        da, db = (a * a).sum(1), (b * b).sum(1)
        kl = ((a.T @ b) ** 2).sum() - n / (n - 2) * (da * db).sum() + da.sum() * db.sum() / ((n - 1) * (n - 2))
        return (kl / (n * (n - 3))).item()

    return [h(xc, yc), h(xc, xc), h(yc, yc)]


def one_pass_hsic1(gx: torch.Tensor, gy: torch.Tensor) -> list:
    return [R.hsic(gx, gy, True).item(), R.hsic(gx, gx, True).item(), R.hsic(gy, gy, True).item()]


LINEAR_CASES = [(seed, n, sep) for seed, n in enumerate([4, 5, 6, 8, 12, 40]) for sep in (1e4, 1e6)]


@pytest.mark.parametrize("method", ["auto", "feature", "sample"])
def test_linear_small_n_matches_exact_arithmetic(method):
    worst_fast = worst_one_pass = 0.0
    for seed, n, sep in LINEAR_CASES:
        x, y = one_row_apart(seed, n, 6, sep)
        want = exact_linear_hsic1(x, y)
        got = fastcka.hsic_terms(x, y, unbiased=True, method=method).tolist()
        one = feature_one_pass_hsic1(x, y)
        for g, o, w in zip(got, one, want):
            worst_fast = max(worst_fast, float(abs(Fraction(g) - w) / abs(w)))
            worst_one_pass = max(worst_one_pass, float(abs(Fraction(o) - w) / abs(w)))
        cka_want = float(want[0] / (want[1] * want[2]) ** 0.5)
        assert fastcka.cka(x, y, unbiased=True, method=method).item() == pytest.approx(cka_want, abs=1e-9)
    assert worst_fast < 1e-9, worst_fast  # measured: 3.4e-10 (n = 4, sep = 1e6)
    assert worst_one_pass > 1e-6  # the inputs defeat the one-pass formula (measured: 5e-3)


def test_linear_cka_matrix_and_minibatch_at_small_n():
    xs, ys = zip(*(one_row_apart(s, 6, 5, 1e5) for s in range(3)))
    got = fastcka.cka_matrix(list(xs), list(ys), unbiased=True)
    for i in range(3):
        for j in range(3):
            w = exact_linear_hsic1(xs[i], ys[j])
            wx, wy = exact_linear_hsic1(xs[i], xs[i])[1], exact_linear_hsic1(ys[j], ys[j])[1]
            assert got[i, j].item() == pytest.approx(float(w[0] / (wx * wy) ** 0.5), abs=1e-9)
    # MinibatchCKA: the mean of per-batch debiased HSICs (Nguyen et al.), batches of 5 rows
    x, y = one_row_apart(7, 20, 5, 1e5)
    x[10], y[10] = x[0], y[0]  # a far row in every batch half the time: batches 0 and 2
    acc = MinibatchCKA(kernel="linear")
    h = [[], [], []]
    for b in range(4):
        xb, yb = x[5 * b: 5 * b + 5], y[5 * b: 5 * b + 5]
        acc.update(xb, yb)
        for t, v in zip(h, exact_linear_hsic1(xb, yb)):
            t.append(v)
    want = float(sum(h[0]) / (sum(h[1]) * sum(h[2])) ** 0.5)
    assert acc.compute().item() == pytest.approx(want, abs=1e-9)


RBF_CASES = [(seed, n, sep, factor) for seed, n in enumerate([4, 5, 6, 8]) for sep in (1e2, 1e4)
             for factor in (1e2, 1e4)]


def test_rbf_small_n_large_sigma_matches_the_independent_formulation(ops):
    worst_fast = worst_one_pass = 0.0
    for seed, n, sep, factor in RBF_CASES:
        x, y = one_row_apart(100 + seed, n, 4, sep)
        sx, sy = (factor * I.median_sq_dist(t) ** 0.5 for t in (x, y))
        want = I.cka(x, y, "rbf", True, (sx, sy)).item()
        gamma = torch.tensor([0.5 / sx**2, 0.5 / sy**2], dtype=F64)
        h = ops.kernel_hsic(x, y, gamma, 1, 1, True)
        got = fastcka.cka_from_terms(h).item()
        one = one_pass_hsic1(R.gram_rbf(x, sx), R.gram_rbf(y, sy))
        one_cka = one[0] / (one[1] * one[2]) ** 0.5 if one[1] > 0 and one[2] > 0 else 0.0
        worst_fast = max(worst_fast, abs(got - want))
        worst_one_pass = max(worst_one_pass, abs(one_cka - want))
    assert worst_fast < 1e-9, worst_fast
    assert worst_one_pass > 1e-6  # the inputs defeat the one-pass formula


@pytest.mark.parametrize("n", [4, 9, 128, 129])
def test_one_row_apart_is_exactly_zero(ops, n):
    """All rows but one equal: the U-centred Gram is exactly 0, so HSIC₁ and CKA are 0 on both sides of the switch."""
    x = torch.full((n, 3), 1e4, dtype=F64)
    x[n // 2] += torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    y = torch.randn(n, 2, dtype=F64, generator=torch.Generator().manual_seed(n))
    for kernel in (0, 1):
        h = ops.kernel_hsic(x, y, torch.tensor([0.5, 0.5], dtype=F64), kernel, kernel, True)
        assert h[0].item() == 0.0 and h[1].item() == 0.0
    assert fastcka.cka(x, y, unbiased=True).item() == 0.0


@pytest.mark.parametrize("n", [200, 1000])
def test_a_far_row_above_small_n_is_repaired_on_the_cpu(n):
    """Linear, float64, kUCentredMaxN < n ≤ kUCentredHostMaxN (1024): a cancelling numerator is recomputed from the
    U-centred Grams on the CPU (linear_hsic_impl.h: linear_hsic_repaired). One-pass: 4e-6 off at n = 200."""
    x, y = one_row_apart(n, n, 4, 1e6)
    want = I.cka(x, y, "linear", True).item()
    assert abs(fastcka.cka(x, y, unbiased=True).item() - want) <= 1e-9
    assert abs(fastcka.cka_matrix([x, y], unbiased=True)[0, 1].item() - want) <= 1e-9


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="beyond the small-n and host repairs the one-pass moments stay (README, Known limits)")
@pytest.mark.parametrize("kernel,n,sep,factor", [("linear", 1500, 1e6, None), ("rbf", 200, 1e4, 1e2)])
def test_known_limit_a_far_row_above_small_n(kernel, n, sep, factor):
    """One row far from the others still costs the debiased estimator digits beyond the repairs (measured: linear 4e-6
    at n = 200 before the host repair; RBF with σ 100× the median 2e-8 at n = 200, 10⁴ spreads)."""
    x, y = one_row_apart(n, n, 4, sep)
    sigma = None if factor is None else tuple(factor * I.median_sq_dist(t) ** 0.5 for t in (x, y))
    want = I.cka(x, y, kernel, True, sigma).item()
    got = fastcka.cka(x, y, kernel=kernel, unbiased=True, **({} if sigma is None else {"sigma": sigma})).item()
    assert abs(got - want) <= 1e-9


@pytest.mark.parametrize("method", ["feature", "sample"])
@pytest.mark.parametrize("target", [5e-4, 1e-4])
def test_a_small_float32_cka_is_not_taken_for_noise(method, target):
    """n = 128, p = 1024, float32: y = [z, s·x] with s set so that the exact debiased CKA is `target`. The small-n
    noise rule once sized the error with Σ|Ũ| (n times too wide) and returned CKA 0 here (found in review)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 1024, generator=g, dtype=F64)
    z = torch.randn(128, 1024, generator=g, dtype=F64)
    if I.cka(x, z, "linear", True).item() > 0:  # so that a positive target has a root in s ∈ [0, 1]
        z = -z.flip(0)
    f = lambda s: I.cka(x, torch.cat([z, s * x], 1), "linear", True).item() - target  # noqa: E731
    lo, hi = 0.0, 1.0
    for _ in range(40):
        lo, hi = ((lo + hi) / 2, hi) if f((lo + hi) / 2) < 0 else (lo, (lo + hi) / 2)
    y = torch.cat([z, hi * x], 1)
    want = I.cka(x, y, "linear", True).item()
    for got in (fastcka.cka(x.float(), y.float(), unbiased=True, method=method).item(),
                fastcka.cka_matrix([x.float()], [y.float()], unbiased=True, method=method)[0, 0].item()):
        assert got == pytest.approx(want, rel=1e-3)

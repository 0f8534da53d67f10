"""One row far from all the others (an attention-sink token, say), float32 input, debiased linear CKA.

The unbiased estimator's one-pass numerator cancels when one row dominates the Grams, and its float32 GEMM sums
amplify their rounding: one row 10⁴ spreads from 199 others gave a debiased CKA 0.91 off. On the CPU such a pair
is recomputed from float64 copies (linear_hsic.h: one_pass_too_coarse). Truth: the fuzz suite's independent float64
formulation. The plain float32 formulation's own error is printed beside, to show the inputs are hard.
"""

from __future__ import annotations

import pytest
import torch

import _independent as I
import fastcka
from fastcka.streaming import MinibatchCKA
from test_small_n_unbiased import one_row_apart

F32 = torch.float32
CASES = [(n, sep) for n in (64, 200, 1000) for sep in (1e2, 1e3, 1e4)]


def test_debiased_linear_cka_float32_with_a_far_row():
    worst = worst_plain = 0.0
    for n, sep in CASES:
        x, y = one_row_apart(n, n, 8, sep)
        want = I.cka(x, y, "linear", True).item()
        got = fastcka.cka(x.to(F32), y.to(F32), unbiased=True).item()
        plain = I.cka(x.to(F32), y.to(F32), "linear", True, dtype=F32).item()
        worst, worst_plain = max(worst, abs(got - want)), max(worst_plain, abs(plain - want))
    assert worst < 1e-5, worst  # measured: 4.2e-6 (n 1000, 10² spreads, not recomputed: it cancels less than 1/64)
    assert worst_plain > 1e-4  # plain float32 loses digits here (measured 4.3e-4); before the recompute: 0.91


def test_cka_matrix_and_minibatch_float32_with_a_far_row():
    x, y = one_row_apart(5, 200, 8, 1e4)
    z = x[:, :3] + 0.1 * torch.randn(200, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    layers = [x, y, z]
    got = fastcka.cka_matrix([t.to(F32) for t in layers], unbiased=True)
    for i in range(3):
        for j in range(3):
            assert got[i, j].item() == pytest.approx(I.cka(layers[i], layers[j], "linear", True).item(), abs=1e-5)
    acc = MinibatchCKA(kernel="linear")
    for b in range(4):  # the far row is row 0: in the first batch only
        acc.update(x[50 * b: 50 * b + 50].to(F32), y[50 * b: 50 * b + 50].to(F32))
    want = I.minibatch_cka([x[50 * b: 50 * b + 50] for b in range(4)], [y[50 * b: 50 * b + 50] for b in range(4)])
    assert acc.compute().item() == pytest.approx(want.item(), abs=1e-5)


def test_only_far_rows_are_recomputed_in_float64():
    """A recomputed float32 pair gives exactly the float64 copy's terms; ordinary wide layers (n ≪ p inflates the
    one-pass terms ~2p/n times without inflating their float32 error) keep the float32 pass (found in review: they
    were all recomputed, at 2.3× the cost)."""
    def recomputed(x, y):
        return torch.equal(fastcka.hsic_terms(x, y, unbiased=True),
                           fastcka.hsic_terms(x.double(), y.double(), unbiased=True))

    g = torch.Generator().manual_seed(0)
    for n, p in ((256, 1024), (256, 4096), (2000, 64)):
        x, y = torch.randn(n, p, generator=g), torch.randn(n, p, generator=g)
        assert not recomputed(x, y), (n, p)
        assert not recomputed(x, x @ torch.randn(p, p, generator=g) / p**0.5 + y), (n, p)
    x, y = one_row_apart(3, 200, 8, 1e4)
    assert recomputed(x.to(F32), y.to(F32))

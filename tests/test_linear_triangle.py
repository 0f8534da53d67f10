"""The feature path's self terms ‖XcᵀXc‖², ‖YcᵀYc‖² from block-triangle row panels (linear_hsic_impl.h:
gram_sq_add; CpuBackend::kGramPanel = 64 columns): widths below, at and around the panel width and its multiples,
against the float64 reference, in float64 and float32 (offset data included), and the symmetric cka_matrix
diagonal that uses the same panels."""

import pytest
import torch

import fastcka
import fastcka.reference as R
from conftest import correlated_pair, randn

PANEL = 64  # CpuBackend::kGramPanel
# (n, p, q): p = 1; widths one under, at and one over the panel and its multiples; p ≠ q; p ≫ q and q ≫ p; widths that
# end in a narrower panel (200 → 3 × 56 + 32, 300 → 4 × 64 + 44, 513 → 8 × 64 + 1).
SHAPES = [(40, 1, 1), (40, 1, 130), (50, 63, 65), (60, PANEL, 2 * PANEL), (70, 129, 127), (80, 191, 3),
          (90, 200, 300), (33, 513, 7), (300, 5, 1000), (257, 130, 129)]


def reference_terms(x: torch.Tensor, y: torch.Tensor, unbiased: bool) -> torch.Tensor:
    """The float64 [HSIC(K,L), HSIC(K,K), HSIC(L,L)] from explicit n×n Grams (independent of any p×p product)."""
    k, l = R.gram_linear(x.double()), R.gram_linear(y.double())
    return torch.stack([R.hsic(k, l, unbiased), R.hsic(k, k, unbiased), R.hsic(l, l, unbiased)])


@pytest.mark.parametrize("n,p,q", SHAPES)
@pytest.mark.parametrize("unbiased", [False, True])
def test_float64_self_terms_match_reference(n, p, q, unbiased):
    x, y = correlated_pair(n, p, q, seed=3 * n + p + 7 * q)
    ref = reference_terms(x, y, unbiased)
    got = fastcka.hsic_terms(x, y, unbiased=unbiased, method="feature")
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-13 * ref.abs().max().item())
    c = fastcka.cka(x, y, unbiased=unbiased, method="feature")
    torch.testing.assert_close(c, R.cka_from_hsic(*ref), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("unbiased", [False, True])
def test_self_similarity_is_one_across_panels(unbiased):
    """cka(x, x): the cross term is a full product, the self terms are panels; they must still agree to rounding."""
    x = randn(100, 300, seed=21)
    for dtype, tol in ((torch.float64, 1e-13), (torch.float32, 1e-6)):
        c = fastcka.cka(x.to(dtype), x.to(dtype), unbiased=unbiased, method="feature").item()
        assert abs(c - 1.0) <= tol, (dtype, c)


@pytest.mark.parametrize("n,p,q", [(2048, 300, 130), (1000, 513, 64), (600, 1, 200)])
@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("shift", [0.0, 1e4])
def test_float32_relative_error_stays_small(n, p, q, unbiased, shift):
    """float32 within 1e-6 of the float64 reference on the same float32 values, a mean 10⁴ times the spread
    included (measured: a few 1e-8)."""
    x, y = correlated_pair(n, p, q, seed=n + p)
    if shift:
        x = x + shift * (1.0 + randn(1, p, seed=22).abs())
        y = y - shift * (1.0 + randn(1, q, seed=23).abs())
    x32, y32 = x.float(), y.float()
    xd, yd = x32.double(), y32.double()  # the reference sees exactly our float32 values, centred in float64
    xd, yd = xd - xd.mean(0), yd - yd.mean(0)
    ref = torch.stack(R.feature_space_linear_hsic(xd, yd, unbiased))
    got = fastcka.hsic_terms(x32, y32, unbiased=unbiased, method="feature")
    rel = ((got - ref).abs() / ref.abs()).max().item()
    assert rel <= 1e-6, rel
    c = fastcka.cka(x32, y32, unbiased=unbiased, method="feature").item()
    ref_c = R.cka_from_hsic(*ref).item()
    assert abs(c - ref_c) <= 1e-6 * abs(ref_c), (c, ref_c)


@pytest.mark.parametrize("unbiased", [False, True])
def test_cka_matrix_symmetric_diagonal(unbiased):
    """With ys=None the diagonal's self HSICs are panels too; every entry against the pair op's float64 value."""
    xs = [randn(70, p, seed=p) for p in (1, 65, 150)]
    got = fastcka.cka_matrix(xs, unbiased=unbiased, method="feature")
    want = torch.tensor([[fastcka.cka(a, b, unbiased=unbiased, method="feature").item() for b in xs] for a in xs],
                        dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    terms = torch.ops.fastcka.linear_hsic_matrix(xs, [], unbiased, 1).diagonal()
    ref = torch.stack([R.hsic(R.gram_linear(a), R.gram_linear(a), unbiased) for a in xs])
    torch.testing.assert_close(terms, ref, rtol=1e-12, atol=0.0)


def test_raw_op_with_no_features():
    """The public functions reject a (n, 0) input; the raw op must still not divide by zero panels (SIGFPE)."""
    x, y = torch.randn(10, 0, dtype=torch.float64), randn(10, 3, seed=24)
    h = torch.ops.fastcka.linear_hsic(x, y, False, 1)
    assert h[0].item() == 0.0 and h[1].item() == 0.0 and h[2].item() > 0
    assert torch.ops.fastcka.linear_hsic_matrix([x], [], False, 1).item() == 0.0

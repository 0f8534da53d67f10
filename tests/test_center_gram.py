"""Fused Gram centring against the reference (Kornblith's center_gram), its gradients and bad input."""

import pytest
import torch

import fastcka
import fastcka.reference as R
from conftest import correlated_pair, randn


@pytest.mark.parametrize("n", [3, 4, 17, 200])
@pytest.mark.parametrize("unbiased", [False, True])
def test_matches_reference(n, unbiased):
    x, y = correlated_pair(n, 5, 3, seed=n)
    for k in (R.gram_linear(x), R.gram_rbf(y)):
        torch.testing.assert_close(fastcka.center_gram(k, unbiased=unbiased), R.center_gram(k, unbiased), rtol=1e-10,
                                   atol=1e-12 * k.abs().max().item())


def test_unbiased_inner_product_is_hsic1():
    x, y = correlated_pair(30, 4, 6, seed=1)
    k, l = R.gram_linear(x), R.gram_rbf(y)
    kc, lc = fastcka.center_gram(k, unbiased=True), fastcka.center_gram(l, unbiased=True)
    torch.testing.assert_close((kc * lc).sum() / (30 * 27), R.hsic1(k, l), rtol=1e-10, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("unbiased", [False, True])
def test_float32_and_half(dtype, unbiased):
    x, _ = correlated_pair(50, 4, 1, seed=2)
    k = R.gram_linear(x).to(dtype)
    out = fastcka.center_gram(k, unbiased=unbiased)
    assert out.dtype == torch.float32
    scale = k.double().abs().max().item()  # float32 output: a few float32 ulps of max|K| (the sums are float64)
    torch.testing.assert_close(out.double(), R.center_gram(k.double(), unbiased), rtol=1e-6, atol=1e-6 * scale)


def test_gram_of_uncentred_data_with_a_huge_mean():
    x, _ = correlated_pair(60, 5, 1, seed=4)
    k = R.gram_linear(x + 1e4)  # entries ~1e9 around a spread of ~1e4: centring cancels 5 digits
    torch.testing.assert_close(fastcka.center_gram(k), R.center_gram(k), rtol=1e-9, atol=1e-12 * k.abs().max().item())


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_gradcheck_and_opcheck(mode):
    a = randn(6, 6, seed=3)
    k = (a + a.T).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: torch.ops.fastcka.center_gram(t, mode), (k,))
    assert torch.autograd.gradgradcheck(lambda t: torch.ops.fastcka.center_gram(t, mode), (k,))
    torch.library.opcheck(torch.ops.fastcka.center_gram, (k, mode))


def test_bad_input():
    with pytest.raises(ValueError, match="square"):
        fastcka.center_gram(torch.randn(3, 4))
    with pytest.raises(ValueError, match="symmetric"):
        fastcka.center_gram(torch.randn(4, 4) + torch.triu(torch.ones(4, 4), 1))
    # the check runs over tile pairs (64 rows on CPU, 32 on CUDA): an asymmetry in any of them, at tile edges and
    # far from the diagonal too, is found
    x = randn(600, 3, seed=5)
    k = x @ x.T
    for i, j in ((0, 599), (599, 0), (300, 301), (257, 511), (63, 64), (64, 63), (598, 599), (31, 32)):
        bad = k.clone()
        bad[i, j] += 1e-3 * k.abs().max()
        with pytest.raises(ValueError, match="symmetric"):
            fastcka.center_gram(bad)
    nearly = k.clone()
    nearly[0, 599] += 1e-13 * k.abs().max()  # float64 tolerance: 2e-12 of max|K|
    fastcka.center_gram(nearly)
    # an infinite asymmetry is one, even though max|K| is then infinite; symmetric infinities are not
    for a, b in ((float("inf"), 0.0), (float("-inf"), float("inf"))):
        bad = k.clone()
        bad[0, 1], bad[1, 0] = a, b
        with pytest.raises(ValueError, match="symmetric"):
            fastcka.center_gram(bad)
    sym_inf = k.clone()
    sym_inf[0, 1] = sym_inf[1, 0] = float("inf")
    fastcka.center_gram(sym_inf)
    # NaN is not an asymmetry: NaN in, NaN out (the library's convention)
    nan = k.clone()
    nan[3, 7] = float("nan")
    assert fastcka.center_gram(nan).isnan().any()
    with pytest.raises(TypeError):
        fastcka.center_gram(torch.ones(3, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="n >= 3"):
        fastcka.center_gram(torch.eye(2), unbiased=True)


def _count_asymmetric(k: torch.Tensor, threshold: float) -> int:
    """Plain torch: pairs i < j with |K_ij − K_ji| > threshold or infinite, differences in float64."""
    kd = k.double().cpu()
    d = (kd - kd.T).abs()
    bad = (d > threshold) | d.isinf()
    return int(torch.triu(bad, diagonal=1).sum())


@pytest.mark.parametrize("n", [1, 2, 31, 64, 65, 130, 601])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gram_asymmetric_pairs_counts_like_plain_torch(n, dtype, device):
    """A matrix symmetric except for a seeded random set of pairs, some below the threshold; every tile pair is
    visited, the diagonal tiles included."""
    g = torch.Generator().manual_seed(n)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    k = a + a.T
    noise = torch.randn(n, n, generator=g, dtype=torch.float64) * (torch.rand(n, n, generator=g) < 0.05)
    k = (k + noise).to(dtype=dtype, device=device)
    for threshold in (0.0, 0.5, 3.0):
        t = torch.tensor(threshold, dtype=torch.float64, device=device)
        got = torch.ops.fastcka.gram_asymmetric_pairs(k, t)
        assert got.dtype == torch.int64 and got.device == k.device
        assert got.item() == _count_asymmetric(k, threshold), threshold
    if n > 2:
        assert _count_asymmetric(k, 0.0) > 0  # the test matrix has asymmetries to find


def test_gram_asymmetric_pairs_nan_and_inf(device):
    a = randn(70, 70, seed=3)
    k = (a + a.T).to(device)
    k[5, 66] = k[66, 5] = float("nan")
    k[2, 69] = float("nan")  # NaN facing a finite entry: not counted
    k[10, 11] = k[11, 10] = float("inf")  # the same infinity on both sides: not counted
    zero = torch.tensor(0.0, dtype=torch.float64, device=device)
    assert torch.ops.fastcka.gram_asymmetric_pairs(k, zero).item() == 0
    k[40, 41] = -float("inf")  # an infinite entry facing a finite one counts, whatever the threshold
    inf = torch.tensor(float("inf"), dtype=torch.float64, device=device)
    assert torch.ops.fastcka.gram_asymmetric_pairs(k, inf).item() == 1
    assert torch.ops.fastcka.gram_asymmetric_pairs(k, torch.tensor(float("nan"), dtype=torch.float64,
                                                                    device=device)).item() == 1


def test_gram_asymmetric_pairs_opcheck_and_bad_input():
    k = randn(9, 9, seed=1)
    torch.library.opcheck(torch.ops.fastcka.gram_asymmetric_pairs, (k, torch.tensor(0.1, dtype=torch.float64)))
    with pytest.raises(RuntimeError, match="float64 scalar"):
        torch.ops.fastcka.gram_asymmetric_pairs(k, torch.tensor([0.1, 0.2], dtype=torch.float64))
    with pytest.raises(RuntimeError, match="square"):
        torch.ops.fastcka.gram_asymmetric_pairs(randn(3, 4, seed=1), torch.tensor(0.1, dtype=torch.float64))

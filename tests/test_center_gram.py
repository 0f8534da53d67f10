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
        torch.testing.assert_close(fastcka.center_gram(k, unbiased), R.center_gram(k, unbiased), rtol=1e-10,
                                   atol=1e-12 * k.abs().max().item())


def test_unbiased_inner_product_is_hsic1():
    x, y = correlated_pair(30, 4, 6, seed=1)
    k, l = R.gram_linear(x), R.gram_rbf(y)
    kc, lc = fastcka.center_gram(k, True), fastcka.center_gram(l, True)
    torch.testing.assert_close((kc * lc).sum() / (30 * 27), R.hsic1(k, l), rtol=1e-10, atol=0)


def test_float32_and_half():
    x, _ = correlated_pair(50, 4, 1, seed=2)
    k = R.gram_linear(x)
    out = fastcka.center_gram(k.half())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), R.center_gram(k.half().double()), rtol=1e-4, atol=1e-3)


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
    # the check is blocked (256 rows): an asymmetry in any block pair, far from the diagonal too, is found
    x = randn(600, 3, seed=5)
    k = x @ x.T
    for i, j in ((0, 599), (599, 0), (300, 301), (257, 511)):
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

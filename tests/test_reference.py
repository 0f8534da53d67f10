"""The float64 reference against independent forms: explicit H matrices, Kornblith's centring, numpy."""

import numpy as np
import pytest
import torch

import fastcka.reference as R
from conftest import correlated_pair, randn


@pytest.mark.parametrize("n,p,q", [(5, 3, 2), (12, 1, 7), (33, 40, 5)])
@pytest.mark.parametrize("unbiased", [False, True])
def test_cka_forms_agree(n, p, q, unbiased):
    x, y = correlated_pair(n, p, q, seed=n + p)
    k, l = R.gram_linear(x), R.gram_linear(y)
    a = R.cka(k, l, unbiased)
    assert torch.allclose(a, R.cka_kornblith(k, l, unbiased), rtol=1e-12, atol=1e-14)
    assert torch.allclose(a, R.feature_space_linear_cka(x, y, unbiased), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("unbiased", [False, True])
def test_hsic_feature_space_equals_gram(unbiased):
    x, y = correlated_pair(25, 6, 4, seed=1)
    terms = R.feature_space_linear_hsic(x, y, unbiased)
    k, l = R.gram_linear(x), R.gram_linear(y)
    for t, (a, b) in zip(terms, [(k, l), (k, k), (l, l)]):
        assert torch.allclose(t, R.hsic(a, b, unbiased), rtol=1e-10)


def test_hsic0_matches_numpy_trace():
    x, y = correlated_pair(9, 4, 3, seed=2)
    k, l = R.gram_linear(x).numpy(), R.gram_linear(y).numpy()
    n = 9
    h = np.eye(n) - np.ones((n, n)) / n
    expect = np.trace(k @ h @ l @ h) / (n - 1) ** 2
    assert abs(R.hsic0(torch.from_numpy(k), torch.from_numpy(l)).item() - expect) < 1e-12 * abs(expect)


def test_hsic1_matches_u_statistic_by_brute_force():
    """Song et al.'s HSIC₁ is the U-statistic of h(i,j,q,r); check against the sum over all 4-tuples."""
    import itertools

    x, y = correlated_pair(7, 2, 2, seed=3)
    k, l = R.gram_linear(x).numpy(), R.gram_linear(y).numpy()
    n = 7
    total = 0.0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2 * k[i, j] * l[i, q]
    expect = total / (n * (n - 1) * (n - 2) * (n - 3))
    assert abs(R.hsic1(torch.from_numpy(k), torch.from_numpy(l)).item() - expect) < 1e-10 * abs(expect)


def test_median_is_numpys_with_diagonal_zeros():
    x = randn(11, 3, seed=4)
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1).numpy()
    assert R.median_squared_distance(x).item() == np.median(d)
    x = randn(10, 3, seed=5)  # even n: n² even, the mean of the two middle values
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1).numpy()
    assert R.median_squared_distance(x).item() == np.median(d)


def test_rbf_gram_matches_kornblith_formula():
    x = randn(8, 4, seed=6)
    xn = x.numpy()
    dots = xn @ xn.T
    sq = np.diag(dots)
    dist = -2 * dots + sq[:, None] + sq[None, :]
    expect = np.exp(-dist / (2 * 0.8**2 * np.median(dist)))
    assert np.allclose(R.gram_rbf(x, threshold=0.8).numpy(), expect, rtol=1e-10, atol=1e-12)


def test_minibatch_cka_single_batch_is_debiased_cka():
    x, y = correlated_pair(20, 5, 4, seed=7)
    assert torch.allclose(R.minibatch_cka([x], [y]), R.linear_cka(x, y, unbiased=True), rtol=1e-12)


def test_constant_representation_gives_zero():
    x = torch.ones(6, 3, dtype=torch.float64)
    y = randn(6, 2, seed=8)
    assert R.linear_cka(x, y).item() == 0.0
    assert R.feature_space_linear_cka(x, y).item() == 0.0


def test_spectrum_against_numpy_fft():
    x = randn(13, 5, seed=9)
    f = np.fft.fft(x.numpy(), axis=0)
    e = (np.abs(f) ** 2).sum(1)
    expect = np.array([e[0]] + [e[k] + e[13 - k] for k in range(1, 7)])
    assert np.allclose(R.frequency_spectrum(x).numpy(), expect, rtol=1e-12)


def test_spectrum_grid_fold():
    x = randn(7, 7, 3, seed=10)
    f = np.fft.fft2(x.numpy(), axes=(0, 1))
    e = (np.abs(f) ** 2).sum(-1)
    s = R.frequency_spectrum(x, dim=(0, 1)).numpy()
    for ka in range(4):
        for kb in range(4):
            idx_a = {ka, (7 - ka) % 7}
            idx_b = {kb, (7 - kb) % 7}
            assert np.isclose(s[ka, kb], sum(e[a, b] for a in idx_a for b in idx_b), rtol=1e-12)
    assert np.isclose(s.sum(), e.sum(), rtol=1e-12)

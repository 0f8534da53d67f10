"""Regression tests for the Python-side defects of issue 18 (W5–W8, W10–W12 and the smaller ones), each with the
issue's reproducer or one like it, checked against the float64 reference; and for the renamed options of issue 22
(old names accepted with a DeprecationWarning)."""

import math
import warnings

import pytest
import torch

import fastcka
import fastcka.reference as R
from conftest import correlated_pair, randn
from fastcka.streaming import LinearCKA, LinearCKAMatrix, MinibatchCKA, MinibatchCKAMatrix


# --- W8: a pair of σ for one list --------------------------------------------------------------------------------
def test_w8_sigma_pair_with_one_list_is_refused():
    xs = [randn(30, 4, seed=1), randn(30, 3, seed=2)]
    with pytest.raises(ValueError, match=r"sigma=\(1, 3\) is a pair"):
        fastcka.cka_matrix(xs, kernel="rbf", sigma=(1, 3))
    m = fastcka.cka_matrix(xs, kernel="rbf", sigma=2.0)  # one σ: symmetric, unit diagonal, as documented
    torch.testing.assert_close(m, m.T, rtol=0, atol=0)
    assert m.diagonal().tolist() == [1.0, 1.0]
    torch.testing.assert_close(m[0, 1], R.rbf_cka(xs[0], xs[1], 2.0, 2.0), rtol=1e-10, atol=1e-12)


# --- W12: the median-heuristic threshold's range ------------------------------------------------------------------
@pytest.mark.parametrize("threshold", [1e200, 1e-200, 1e7, 1e-7, float("inf"), 0.0, -1.0])
def test_w12_threshold_outside_the_accepted_range_is_refused(threshold):
    x, y = correlated_pair(40, 5, 3, seed=3)
    with pytest.raises(ValueError, match=r"threshold must be in \[1e-06, 1e\+06\]"):
        fastcka.cka(x, y, kernel="rbf", threshold=threshold)
    with pytest.raises(ValueError, match="threshold"):
        fastcka.cka_matrix([x, y], kernel="rbf", threshold=threshold)
    with pytest.raises(ValueError, match="threshold"):
        fastcka.functional.rbf_gamma(x, threshold=threshold)


@pytest.mark.parametrize("threshold", [1e-2, 0.5, 3.0, 1e2])
def test_w12_thresholds_inside_the_range_match_the_reference(threshold):
    x, y = correlated_pair(40, 5, 3, seed=4)
    torch.testing.assert_close(fastcka.cka(x, y, kernel="rbf", threshold=threshold),
                               R.rbf_cka(x, y, threshold=threshold), rtol=1e-9, atol=1e-12)


def test_w12_threshold_type():
    x, y = correlated_pair(10, 2, 2, seed=5)
    with pytest.raises(TypeError, match="threshold"):
        fastcka.cka(x, y, kernel="rbf", threshold="1")


# --- smaller: σ with the linear kernel, non-bool unbiased ---------------------------------------------------------
def test_sigma_with_the_linear_kernel_is_refused():
    x, y = correlated_pair(20, 3, 3, seed=6)
    for f in (fastcka.cka, fastcka.hsic, fastcka.hsic_terms):
        with pytest.raises(ValueError, match="sigma is only used with kernel='rbf'"):
            f(x, y, kernel="linear", sigma=1.0)
    with pytest.raises(ValueError, match="sigma is only used"):
        fastcka.cka(x, y, method="tiled", sigma=1.0)
    with pytest.raises(ValueError, match="sigma is only used"):
        fastcka.cka_matrix([x, y], sigma=1.0)


@pytest.mark.parametrize("bad", ["no", "False", 0, 1, None, 1.0])
def test_unbiased_must_be_a_bool(bad):
    x, y = correlated_pair(20, 3, 3, seed=7)
    for call in (lambda: fastcka.cka(x, y, unbiased=bad), lambda: fastcka.hsic(x, y, unbiased=bad),
                 lambda: fastcka.cka_matrix([x, y], unbiased=bad),
                 lambda: fastcka.center_gram(x @ x.T, unbiased=bad)):
        with pytest.raises(TypeError, match="unbiased must be True or False"):
            call()


def test_options_are_keyword_only():
    x, y = correlated_pair(20, 3, 3, seed=8)
    with pytest.raises(TypeError):
        fastcka.cka(x, y, "linear", True)
    with pytest.raises(TypeError):
        fastcka.center_gram(x @ x.T, True)
    with pytest.raises(TypeError):
        fastcka.frequency_spectrum(x, 0)
    with pytest.raises(TypeError):
        fastcka.cka_matrix([x], [y], "linear")


# --- W10: float32 Fourier measures centre before the DFT ----------------------------------------------------------
def _planted_with_offset(p: int, offset_in_spreads: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.arange(p, dtype=torch.float64)[:, None]
    w = torch.cos(2 * math.pi * 3 * a / p) @ torch.randn(1, 8, generator=g, dtype=torch.float64)
    w = w + 0.3 * torch.randn(p, 8, generator=g, dtype=torch.float64)
    return w + offset_in_spreads * w.std()


@pytest.mark.parametrize("offset", [1e3, 1e6])
@pytest.mark.parametrize("dft", ["matmul", "fft"])
def test_w10_float32_fourier_measures_survive_a_large_offset(offset, dft):
    x = _planted_with_offset(31, offset, seed=9).float()
    xd = x.double()  # the reference on the same float32 values
    ref = R.frequency_concentration(xd, 1)
    torch.testing.assert_close(fastcka.frequency_concentration(x, 1).double(), ref, rtol=1e-5, atol=1e-6)
    s, r = fastcka.frequency_spectrum(x, dft=dft).double(), R.frequency_spectrum(xd)
    torch.testing.assert_close(s[1:], r[1:], rtol=1e-5, atol=1e-5 * r[1:].max().item())
    torch.testing.assert_close(s[0], r[0], rtol=1e-6, atol=0)  # the constant's energy, added back exactly
    assert fastcka.key_frequencies(x, 1).tolist() == R.key_frequencies(xd, 1).tolist() == [3]


def test_w10_grid_with_a_large_offset():
    g = torch.Generator().manual_seed(10)
    x = (torch.randn(13, 13, 3, generator=g, dtype=torch.float64) + 1e6).float()
    torch.testing.assert_close(fastcka.frequency_concentration(x, 2, dim=(0, 1)).double(),
                               R.frequency_concentration(x.double(), 2, dim=(0, 1)), rtol=1e-5, atol=1e-6)


def test_w10_constant_input_still_gives_zero():
    for v in (0.1, 2.5, 1e6, 3e-7):
        for dt in (torch.float32, torch.float64, torch.bfloat16):
            assert fastcka.frequency_concentration(torch.full((17, 4), v, dtype=dt), 2).item() == 0.0
            assert fastcka.frequency_concentration(torch.full((7, 7, 3), v, dtype=dt), 2, dim=(0, 1)).item() == 0.0


# --- issue 22: renamed Fourier options ----------------------------------------------------------------------------
def test_fourier_old_names_warn_and_agree():
    x = randn(11, 3, 11, seed=11)
    new = fastcka.frequency_spectrum(x, dim=(0, 2), dft="fft")
    with pytest.warns(DeprecationWarning, match=r"dims= is deprecated.*use dim="):
        old = fastcka.frequency_spectrum(x, dims=(0, 2))
    torch.testing.assert_close(old, new, rtol=1e-10, atol=1e-10 * new.max().item())
    with pytest.warns(DeprecationWarning, match=r"method= is deprecated.*use dft="):
        fastcka.frequency_spectrum(x, method="matmul")
    for f in (fastcka.frequency_concentration, fastcka.key_frequencies):
        with pytest.warns(DeprecationWarning, match="dims="):
            f(x, 1, dims=(0, 2))
    with pytest.warns(DeprecationWarning, match="dims="):
        R.frequency_spectrum(x, dims=(0, 2))
    with pytest.raises(TypeError, match="both dim= and its deprecated name dims="):
        fastcka.frequency_spectrum(x, dim=1, dims=(0, 2))
    with pytest.raises(TypeError, match="unexpected keyword argument 'dimz'"):
        fastcka.frequency_spectrum(x, dimz=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastcka.frequency_spectrum(x, dim=0, dims=None)  # the old default, passed explicitly: no warning


def test_deprecation_warning_points_at_the_callers_line():
    x = randn(7, 2, seed=12)
    with pytest.warns(DeprecationWarning) as rec:
        fastcka.key_frequencies(x, 1, dims=0)
    assert rec[0].filename == __file__

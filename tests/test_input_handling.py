"""The public API's handling of shapes, dtypes, devices, sizes, strides and non-finite values."""

import math

import pytest
import torch

import fastcka
import fastcka.reference as R
from conftest import correlated_pair, randn


def test_trailing_dims_are_flattened_per_example():
    x = randn(20, 3, 4, 5, seed=1)
    y = randn(20, 7, seed=2)
    expect = R.linear_cka(x.reshape(20, -1), y)
    torch.testing.assert_close(fastcka.cka(x, y), expect, rtol=1e-10, atol=0)
    # a 1-D input is one feature per example
    torch.testing.assert_close(fastcka.cka(x[:, 0, 0, 0], y), R.linear_cka(x[:, 0, 0, 0, None], y), rtol=1e-10, atol=0)


def test_n_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(10, 3\).*\(11, 3\)"):
        fastcka.cka(torch.randn(10, 3), torch.randn(11, 3))


@pytest.mark.parametrize("n,unbiased", [(1, False), (3, True), (2, True)])
def test_too_few_examples(n, unbiased):
    with pytest.raises(ValueError, match="at least"):
        fastcka.cka(torch.randn(n, 3), torch.randn(n, 2), unbiased=unbiased)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_bad_dtypes_raise_type_error(dtype):
    x = torch.ones(5, 2).to(dtype)
    with pytest.raises(TypeError, match="x must be a real floating-point"):
        fastcka.cka(x, torch.randn(5, 2))
    with pytest.raises(TypeError, match="y must be"):
        fastcka.cka(torch.randn(5, 2), x)


def test_not_a_tensor():
    with pytest.raises(TypeError, match="torch.Tensor"):
        fastcka.cka([[1.0, 2.0]], torch.randn(1, 2))


def test_zero_dim_and_empty_features():
    with pytest.raises(ValueError):
        fastcka.cka(torch.tensor(1.0), torch.randn(1))
    with pytest.raises(ValueError, match="no features"):
        fastcka.cka(torch.randn(5, 0), torch.randn(5, 2))


def test_different_devices():
    x = torch.randn(5, 2)
    y = torch.randn(5, 2, device="meta")
    with pytest.raises(ValueError, match="same device"):
        fastcka.cka(x, y)


def test_unknown_kernel_and_method():
    with pytest.raises(ValueError, match="known kernels: linear, rbf"):
        fastcka.cka(torch.randn(5, 2), torch.randn(5, 2), kernel="poly")
    with pytest.raises(ValueError, match="known"):
        fastcka.cka(torch.randn(5, 2), torch.randn(5, 2), method="magic")


def test_non_contiguous_and_expanded_inputs_agree():
    x, y = correlated_pair(30, 8, 6, seed=3)
    base = fastcka.cka(x, y)
    xt = x.T.contiguous().T  # column-major
    ys = torch.stack([y, y], 2)[:, :, 0]  # strided view of y
    assert not xt.is_contiguous() and not ys.is_contiguous()
    torch.testing.assert_close(fastcka.cka(xt, ys), base, rtol=1e-12, atol=0)
    # expanded (stride 0) feature axis: same value as the materialised copy
    col = randn(30, 1, seed=4)
    e = col.expand(30, 5)
    torch.testing.assert_close(fastcka.cka(e, y), fastcka.cka(e.contiguous(), y), rtol=1e-12, atol=0)


def test_mixed_dtypes_promote():
    x, y = correlated_pair(30, 4, 3, seed=5)
    out = fastcka.cka(x.float(), y)
    assert out.dtype == torch.float64
    # computed in float64 (the rounded float32 x against the float64 y), not in float32
    assert out.item() == pytest.approx(R.linear_cka(x.float().double(), y).item(), rel=1e-12)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_in_gives_nan_out(bad):
    x, y = correlated_pair(20, 4, 3, seed=6)
    x[3, 1] = bad
    for method in ("feature", "sample", "tiled"):
        assert torch.isnan(fastcka.cka(x, y, method=method))
        assert torch.isnan(fastcka.hsic(x, y, method=method))
    for sigma in (None, 1.0):  # the RBF pass clamps distances: a NaN or inf row used to give a finite wrong value
        assert torch.isnan(fastcka.cka(x, y, kernel="rbf", sigma=sigma))
        assert torch.isnan(fastcka.cka(y, x, kernel="rbf", sigma=sigma, unbiased=True))


def test_constant_representation_is_zero_on_every_path():
    x = torch.full((12, 4), 3.25, dtype=torch.float64)
    y = randn(12, 3, seed=7)
    for unbiased in (False, True):
        for method in ("feature", "sample", "auto"):
            assert fastcka.cka(x, y, unbiased=unbiased, method=method).item() == 0.0
            assert fastcka.cka(x, x, unbiased=unbiased, method=method).item() == 0.0
            assert fastcka.hsic(x, y, unbiased=unbiased, method=method).item() == 0.0
    assert R.linear_cka(x, y).item() == 0.0


def test_result_is_a_0d_tensor_on_input_device():
    x, y = correlated_pair(10, 3, 3, seed=8, dtype=torch.float32)
    out = fastcka.cka(x, y)
    assert out.dim() == 0 and out.device == x.device and out.dtype == torch.float32


def test_extreme_magnitudes_do_not_overflow():
    x, y = correlated_pair(40, 5, 4, seed=9)
    ref = R.linear_cka(x, y).item()
    for scale in (1e30, 1e-30):
        out = fastcka.cka((x * scale).float(), (y * scale).float()).item()
        assert abs(out - ref) < 1e-5, scale
    # float64: fine while HSIC itself (~ magnitude⁴) stays below float64's range
    assert abs(fastcka.cka(x * 1e70, y * 1e-70).item() - ref) < 1e-12


@pytest.mark.parametrize("shape", [(0, 5), (0,), (0, 2, 3)])
def test_no_examples_is_a_clear_error(shape):
    with pytest.raises(ValueError, match="needs at least 2 examples, got n=0"):
        fastcka.cka(torch.empty(shape), torch.empty(shape))
    with pytest.raises(ValueError, match="needs at least 2 examples, got n=0"):
        fastcka.cka_matrix([torch.empty(shape)])


def test_sigma_validation():
    x, y = randn(12, 3, seed=1), randn(12, 2, seed=2)
    with pytest.raises(ValueError, match="one value or a pair"):
        fastcka.cka(x, y, kernel="rbf", sigma=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="pass a pair as a tuple"):
        fastcka.cka(x, y, kernel="rbf", sigma=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="positive and finite"):
        fastcka.cka(x, y, kernel="rbf", sigma=0.0)
    # a tensor σ is not read back (no host sync): a bad one gives NaN instead of a silent γ = ∞ or |σ|
    for bad in (0.0, -2.0, float("inf"), float("nan")):
        assert fastcka.cka(x, y, kernel="rbf", sigma=torch.tensor(bad)).isnan()
    torch.testing.assert_close(fastcka.cka(x, y, kernel="rbf", sigma=torch.tensor(2.0)),
                               fastcka.cka(x, y, kernel="rbf", sigma=2.0), rtol=0, atol=0)


def test_center_gram_empty_messages():
    with pytest.raises(ValueError, match="biased centring needs n >= 1, got n=0"):
        fastcka.center_gram(torch.empty(0, 0))
    with pytest.raises(ValueError, match="unbiased centring needs n >= 3, got n=2"):
        fastcka.center_gram(torch.eye(2), unbiased=True)


def test_raw_ops_reject_bad_codes_and_gamma():
    x, y = randn(8, 3, seed=3), randn(8, 2, seed=4)
    g = torch.ones(2, dtype=torch.float64)
    ops = torch.ops.fastcka
    for bad_gamma in (torch.ones(1, dtype=torch.float64), torch.ones(3, dtype=torch.float64), torch.ones(2)):
        with pytest.raises(RuntimeError, match="gamma must be a float64 tensor of shape"):
            ops.kernel_hsic(x, y, bad_gamma, 1, 1, False)
    with pytest.raises(RuntimeError, match="kernel codes"):
        ops.kernel_hsic(x, y, g, 5, 1, False)
    with pytest.raises(RuntimeError, match="method must be 0"):
        ops.linear_hsic(x, y, False, 7)
    with pytest.raises(RuntimeError, match="method must be 0"):
        ops.linear_hsic_matrix([x], [], False, 3)
    with pytest.raises(RuntimeError, match="method must be 0"):
        ops.frequency_spectrum(randn(7, 3, seed=5), 9)
    with pytest.raises(RuntimeError, match="k is empty"):
        ops.center_gram(torch.empty(0, 0), 0)


def test_cka_from_terms_rules():
    h = torch.tensor([[2.0, 4.0, 1.0], [1.0, 0.0, 3.0], [1.0, -1.0, 2.0], [math.nan, 1.0, 1.0], [1.0, math.inf, 1.0]],
                     dtype=torch.float64)
    out = fastcka.cka_from_terms(h)  # batched over the leading dims
    assert out[0].item() == 1.0 and out[1].item() == 0.0 and out[2].item() == 0.0
    assert out[3].isnan() and out[4].item() == 0.0  # a NaN term is NaN; an infinite self-HSIC makes the ratio 0
    assert fastcka.cka_from_terms(h.reshape(5, 1, 3)).shape == (5, 1)
    # two negative self-HSICs (cancellation noise of the debiased estimator) give 0, not their ratio (CKA(x, x) was
    # −1); a ratio past ±1 by rounding is ±1 (Cauchy–Schwarz: both estimators are inner products)
    h = torch.tensor([[-2e-15, -2e-15, -2e-15], [1.0 + 2**-50, 1.0, 1.0], [-1.0 - 2**-50, 1.0, 1.0]], dtype=torch.float64)
    assert fastcka.cka_from_terms(h).tolist() == [0.0, 1.0, -1.0]
    assert R.cka_from_hsic(*h[0]).item() == 0.0

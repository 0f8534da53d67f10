"""Every public path inside torch.autocast (issue 18, C2): the ops' autocast rule computes in float32 (float64
stays float64), so the results match the float64 reference to float32 rounding, and gradients reach the input."""

import pytest
import torch

import fastcka
import fastcka.reference as R
from conftest import correlated_pair, randn

AUTOCAST_DTYPES = [torch.bfloat16, torch.float16]
TOL32 = dict(rtol=2e-5, atol=2e-5)  # float32 arithmetic with float64 reductions, O(1) values


@pytest.fixture(params=AUTOCAST_DTYPES, ids=["bf16", "fp16"])
def autocast(request):
    return lambda: torch.autocast("cpu", dtype=request.param)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("in_dtype", [torch.float32, torch.float64])
def test_cka_and_hsic(autocast, kernel, unbiased, in_dtype):
    x, y = correlated_pair(40, 6, 5, seed=1)
    xi, yi = x.to(in_dtype), y.to(in_dtype)
    with autocast():
        c = fastcka.cka(xi, yi, kernel=kernel, unbiased=unbiased)
        h = fastcka.hsic(xi, yi, kernel=kernel, unbiased=unbiased)
    gx, gy = R.gram_linear(xi), R.gram_linear(yi)
    if kernel == "rbf":
        gx, gy = R.gram_rbf(xi), R.gram_rbf(yi)
    assert c.dtype == in_dtype and h.dtype == in_dtype
    tol = TOL32 if in_dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(c.double(), R.cka(gx, gy, unbiased), **tol)
    torch.testing.assert_close(h.double(), R.hsic(gx, gy, unbiased), **tol)


@pytest.mark.parametrize("method", ["feature", "sample", "tiled"])
def test_every_linear_method(autocast, method):
    x, y = correlated_pair(30, 4, 7, seed=2, dtype=torch.float32)
    with autocast():
        c = fastcka.cka(x, y, method=method)
    torch.testing.assert_close(c.double(), R.linear_cka(x, y), **TOL32)


def test_half_inputs(autocast):
    x, y = correlated_pair(30, 4, 7, seed=3, dtype=torch.bfloat16)
    with autocast():
        c = fastcka.cka(x, y, kernel="rbf")
    torch.testing.assert_close(c.double(), R.rbf_cka(x, y), **TOL32)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_cka_matrix(autocast, kernel):
    xs = [randn(25, w, seed=w, dtype=torch.float32) for w in (3, 5, 8)]
    xs[1] = xs[1] + xs[0][:, :1]
    with autocast():
        m = fastcka.cka_matrix(xs, kernel=kernel)
        m2 = fastcka.cka_matrix(xs[:2], xs[1:], kernel=kernel)
    gram = R.gram_linear if kernel == "linear" else R.gram_rbf
    ref = torch.tensor([[R.cka(gram(a), gram(b)).item() for b in xs] for a in xs], dtype=torch.float64)
    torch.testing.assert_close(m.double(), ref, **TOL32)
    torch.testing.assert_close(m2.double(), ref[:2, 1:], **TOL32)


@pytest.mark.parametrize("unbiased", [False, True])
def test_center_gram(autocast, unbiased):
    x = randn(12, 4, seed=4)
    k = (x @ x.T).float()
    with autocast():
        c = fastcka.center_gram(k, unbiased=unbiased)
    torch.testing.assert_close(c.double(), R.center_gram(k, unbiased), rtol=1e-5, atol=1e-5)


def test_median_sigma_op(autocast):
    x = randn(30, 4, seed=5, dtype=torch.float32)
    with autocast():
        m = fastcka.ops.median_sq_dist(x)
    torch.testing.assert_close(m, R.median_squared_distance(x), rtol=1e-6, atol=0)


@pytest.mark.parametrize("dim", [0, (0, 2)])
def test_frequency_functions(autocast, dim):
    p = 11
    x = randn(p, 3, p, seed=6, dtype=torch.float32) if dim else randn(p, 6, seed=6, dtype=torch.float32)
    with autocast():
        s = fastcka.frequency_spectrum(x, dim=dim)
        c = fastcka.frequency_concentration(x, 2, dim=dim)
        k = fastcka.key_frequencies(x, 2, dim=dim)
    ref = R.frequency_spectrum(x, dim=dim)
    torch.testing.assert_close(s.double(), ref, rtol=1e-5, atol=1e-5 * ref.max().item())
    torch.testing.assert_close(c.double(), R.frequency_concentration(x, 2, dim=dim), **TOL32)
    torch.testing.assert_close(k, R.key_frequencies(x, 2, dim=dim))


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_gradients_flow_back_to_the_input_dtype(autocast, kernel):
    x, y = correlated_pair(20, 4, 3, seed=7, dtype=torch.float32)
    x_ref = x.clone().requires_grad_()
    fastcka.cka(x_ref, y, kernel=kernel, sigma=2.0 if kernel == "rbf" else None).backward()
    xa = x.clone().requires_grad_()
    with autocast():
        c = fastcka.cka(xa, y, kernel=kernel, sigma=2.0 if kernel == "rbf" else None)
    c.backward()
    assert xa.grad.dtype == torch.float32
    torch.testing.assert_close(xa.grad, x_ref.grad, rtol=1e-5, atol=1e-7)
    xs = x.to(torch.bfloat16).requires_grad_()  # a half input gets a half gradient through the cast
    with autocast():
        fastcka.frequency_concentration(xs, 1).backward()
    assert xs.grad.dtype == torch.bfloat16 and torch.isfinite(xs.grad).all()

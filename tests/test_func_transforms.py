"""torch.func transforms over the public functions (issue 18: grad/jacrev failed with an internal autograd.Function
message). Reverse mode (grad, vjp, jacrev) and vmap are supported and checked against autograd through the float64
reference; forward mode (jvp, jacfwd, hessian) raises a clear NotImplementedError."""

import pytest
import torch

import fastcka
import fastcka.reference as R
from conftest import correlated_pair, randn

CASES = [
    dict(kernel="linear", unbiased=False),
    dict(kernel="linear", unbiased=True),
    dict(kernel="linear", method="tiled"),
    dict(kernel="rbf", sigma=1.5),
    dict(kernel="rbf", sigma=(1.2, 2.0), unbiased=True),
]


def reference_cka(x, y, kernel="linear", unbiased=False, method="auto", sigma=None):
    if kernel == "linear":
        return R.linear_cka(x, y, unbiased)
    sx, sy = sigma if isinstance(sigma, tuple) else (sigma, sigma)
    return R.rbf_cka(x, y, sx, sy, unbiased=unbiased)


@pytest.mark.parametrize("kw", CASES, ids=str)
def test_grad_and_jacrev_match_autograd_through_the_reference(kw):
    x, y = correlated_pair(24, 4, 3, seed=1)
    xr = x.clone().requires_grad_()
    (want,) = torch.autograd.grad(reference_cka(xr, y, **kw), xr)
    torch.testing.assert_close(torch.func.grad(lambda a: fastcka.cka(a, y, **kw))(x), want, rtol=1e-8, atol=1e-11)
    torch.testing.assert_close(torch.func.jacrev(lambda a: fastcka.cka(a, y, **kw))(x), want, rtol=1e-8, atol=1e-11)
    gx, gy = torch.func.grad(lambda a, b: fastcka.hsic(a, b, **kw), argnums=(0, 1))(x, y)
    assert gx.shape == x.shape and gy.shape == y.shape


def test_vjp_and_jacrev_of_a_vector_output():
    x, y = correlated_pair(20, 4, 3, seed=2)
    jac = torch.func.jacrev(lambda a: fastcka.hsic_terms(a, y))(x)
    assert jac.shape == (3, 20, 4)
    xr = x.clone().requires_grad_()
    terms = R.feature_space_linear_hsic(xr, y)
    for i in range(2):
        (want,) = torch.autograd.grad(terms[i], xr, retain_graph=True)
        torch.testing.assert_close(jac[i], want, rtol=1e-8, atol=1e-11)
    assert not jac[2].any()  # HSIC(L, L) does not depend on x


def test_vmap_over_a_batch_of_representations():
    xs = randn(5, 16, 3, seed=3)
    y = randn(16, 2, seed=4)
    out = torch.func.vmap(lambda a: fastcka.cka(a, y))(xs)
    torch.testing.assert_close(out, torch.stack([R.linear_cka(a, y) for a in xs]), rtol=1e-10, atol=1e-12)


def test_frequency_and_center_gram_under_grad():
    x = randn(11, 3, seed=5)
    xr = x.clone().requires_grad_()
    (want,) = torch.autograd.grad(R.frequency_concentration(xr, 2), xr)
    torch.testing.assert_close(torch.func.grad(lambda a: fastcka.frequency_concentration(a, 2))(x), want,
                               rtol=1e-8, atol=1e-11)
    k = randn(6, 6, seed=6)
    k = k + k.T
    jac = torch.func.jacrev(lambda a: fastcka.center_gram(a, unbiased=True, check_symmetric=False))(k)
    kr = k.clone().requires_grad_()
    c = R.center_gram(kr, True)
    (want,) = torch.autograd.grad(c[1, 2], kr)
    torch.testing.assert_close(jac[1, 2], want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("transform", [torch.func.jacfwd, torch.func.hessian])
def test_forward_mode_is_a_clear_error(transform):
    x, y = correlated_pair(12, 3, 2, seed=7)
    with pytest.raises(NotImplementedError, match="no forward-mode derivative.*use reverse mode"):
        transform(lambda a: fastcka.cka(a, y))(x)

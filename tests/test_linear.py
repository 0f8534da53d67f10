"""Linear HSIC/CKA op against the float64 reference, on every path and estimator; properties; hard inputs;
gradcheck, opcheck and torch.compile."""

import pytest
import torch

import fastcka
import fastcka.reference as R
from conftest import correlated_pair, float32_tolerance, plain_torch_linear_cka, randn

METHODS = ["feature", "sample", "auto"]
# n from 4 to 4096, p and q from 1 to 2048, on both sides of n.
SHAPES = [(4, 1, 1), (5, 3, 2), (17, 2048, 1), (64, 200, 7), (129, 1, 300), (300, 30, 50), (1000, 64, 128),
          (4096, 16, 33), (2048, 300, 2)]


def reference_terms(x, y, unbiased):
    if x.shape[0] <= 300:  # explicit n×n Grams
        k, l = R.gram_linear(x), R.gram_linear(y)
        return torch.stack([R.hsic(k, l, unbiased), R.hsic(k, k, unbiased), R.hsic(l, l, unbiased)])
    return torch.stack(R.feature_space_linear_hsic(x, y, unbiased))


@pytest.mark.parametrize("n,p,q", SHAPES)
@pytest.mark.parametrize("unbiased", [False, True])
def test_float64_matches_reference(n, p, q, unbiased):
    x, y = correlated_pair(n, p, q, seed=n * 7 + p + q)
    ref = reference_terms(x, y, unbiased)
    ref_cka = R.cka_from_hsic(*ref)
    methods = METHODS if n * n * (p + q) < 3e9 else ["feature", "auto"]
    for method in methods:
        h = fastcka.hsic_terms(x, y, unbiased=unbiased, method=method)
        assert h.dtype == torch.float64 and h.shape == (3,)
        torch.testing.assert_close(h, ref, rtol=1e-10, atol=1e-12 * ref.abs().max().item())
        c = fastcka.cka(x, y, unbiased=unbiased, method=method)
        torch.testing.assert_close(c, ref_cka, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(fastcka.hsic(x, y, unbiased=unbiased, method=method), ref[0], rtol=1e-10,
                                   atol=1e-12 * ref.abs().max().item())


@pytest.mark.parametrize("n,p,q", [(64, 20, 30), (500, 128, 64), (40, 1000, 600), (4096, 8, 8)])
@pytest.mark.parametrize("method", METHODS)
def test_float32_within_twice_plain_torch_error(n, p, q, method):
    x, y = correlated_pair(n, p, q, seed=n + 3 * p)
    ref = R.linear_cka(x, y).item() if n <= 500 else R.feature_space_linear_cka(x, y).item()
    x32, y32 = x.float(), y.float()
    ours = fastcka.cka(x32, y32, method=method)
    assert ours.dtype == torch.float32
    tol = float32_tolerance(ref, plain_torch_linear_cka(x32, y32).item())
    assert abs(ours.item() - ref) <= tol


@pytest.mark.parametrize("unbiased", [False, True])
def test_huge_mean_keeps_float32_digits(unbiased):
    """A mean 10⁴ times the spread: float32 stays within 1e-5 of the float64 reference."""
    x, y = correlated_pair(512, 32, 16, seed=11)
    shift_x = 1e4 * randn(1, 32, seed=12)
    shift_y = -1e4 * randn(1, 16, seed=13)
    x32, y32 = (x + shift_x).float(), (y + shift_y).float()
    # The reference sees exactly the float32 values ours sees, centred in float64 first (HSIC is shift-invariant;
    # the explicit Gram of uncentred data would itself lose the digits in float64).
    xd, yd = x32.double(), y32.double()
    ref = R.linear_cka(xd - xd.mean(0), yd - yd.mean(0), unbiased).item()
    for method in METHODS:
        ours = fastcka.cka(x32, y32, unbiased=unbiased, method=method).item()
        assert abs(ours - ref) <= 1e-5 * abs(ref), (method, ours, ref)
    # Centring after the Gram (K = XXᵀ, then HKH), as several CKA packages do, loses most digits on this input:
    # the test input is hard enough to catch a regression to that order.
    k, l = x32 @ x32.T, y32 @ y32.T
    h = torch.eye(512) - 1.0 / 512
    kc, lc = h @ k @ h, h @ l @ h
    naive = ((kc * lc).sum() / (kc.norm() * lc.norm())).item()
    assert not abs(naive - ref) <= 1e-3 * abs(ref)


def test_self_similarity_is_one_and_symmetric():
    x, y = correlated_pair(50, 12, 5, seed=3)
    for method in METHODS:
        for unbiased in (False, True):
            assert abs(fastcka.cka(x, x, unbiased=unbiased, method=method).item() - 1) < 1e-12
            a = fastcka.cka(x, y, unbiased=unbiased, method=method)
            b = fastcka.cka(y, x, unbiased=unbiased, method=method)
            assert abs(a.item() - b.item()) < 1e-12


def test_invariances_orthogonal_scale_shift():
    x, y = correlated_pair(80, 10, 6, seed=4)
    q, _ = torch.linalg.qr(randn(10, 10, seed=5))
    base = fastcka.cka(x, y).item()
    assert abs(fastcka.cka(x @ q, y).item() - base) < 1e-12
    assert abs(fastcka.cka(3.7 * x, y * 1e-3).item() - base) < 1e-12
    assert abs(fastcka.cka(x + 5.0, y - 2.0).item() - base) < 1e-12
    ub = fastcka.cka(x, y, unbiased=True).item()
    assert abs(fastcka.cka(x @ q * 2.0 + 1.0, y, unbiased=True).item() - ub) < 1e-11


@pytest.mark.parametrize("seed", range(5))
def test_range_zero_one(seed):
    g = torch.Generator().manual_seed(seed)
    n, p, q = (int(v) for v in torch.randint(2, 60, (3,), generator=g))
    x = torch.randn(n, p, generator=g, dtype=torch.float64)
    y = torch.randn(n, q, generator=g, dtype=torch.float64) ** 3
    for method in METHODS:
        c = fastcka.cka(x, y, method=method).item()
        assert -1e-12 <= c <= 1 + 1e-12


def test_rank_deficient_and_duplicated_rows():
    x = randn(40, 3, seed=6) @ randn(3, 50, seed=7)  # rank 3 in 50 dims
    y = torch.cat([x[:20], x[:20]])  # repeated rows
    x = torch.cat([x[:20], x[:20]])
    for unbiased in (False, True):
        ref = R.linear_cka(x, y @ randn(50, 8, seed=8), unbiased)
        for method in METHODS:
            torch.testing.assert_close(fastcka.cka(x, y @ randn(50, 8, seed=8), unbiased=unbiased, method=method),
                                       ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_accumulates_in_float32(dtype):
    x, y = correlated_pair(256, 24, 12, seed=9)
    xh, yh = x.to(dtype), y.to(dtype)
    ref = R.linear_cka(xh.double(), yh.double()).item()
    out = fastcka.cka(xh, yh)
    assert out.dtype == torch.float32
    assert abs(out.item() - ref) < 1e-5


@pytest.mark.parametrize("method", ["feature", "sample"])
@pytest.mark.parametrize("unbiased", [False, True])
def test_gradcheck(method, unbiased):
    x, y = correlated_pair(9, 4, 3, seed=10)
    x.requires_grad_(True)
    y.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: fastcka.hsic_terms(a, b, unbiased=unbiased, method=method), (x, y))
    assert torch.autograd.gradcheck(lambda a, b: fastcka.cka(a, b, unbiased=unbiased, method=method), (x, y))


def test_gradient_matches_reference_autograd():
    x, y = correlated_pair(30, 6, 5, seed=14)
    for unbiased in (False, True):
        xa, ya = x.clone().requires_grad_(), y.clone().requires_grad_()
        fastcka.cka(xa, ya, unbiased=unbiased).backward()
        xb, yb = x.clone().requires_grad_(), y.clone().requires_grad_()
        R.linear_cka(xb, yb, unbiased).backward()
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(ya.grad, yb.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(dtype):
    x, y = correlated_pair(12, 5, 3, seed=15, dtype=dtype)
    for unbiased in (False, True):
        for method in (1, 2):
            torch.library.opcheck(torch.ops.fastcka.linear_hsic, (x.requires_grad_(), y.requires_grad_(), unbiased, method))
            x, y = x.detach(), y.detach()
    g = torch.tensor([1.0, 0.5, -0.25], dtype=torch.float64)
    torch.library.opcheck(torch.ops.fastcka._linear_hsic_backward, (g, x, y, True, 0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # float64: the unit scaling (frexp) in the graph
def test_torch_compile_fullgraph(dtype):
    x, y = correlated_pair(32, 8, 4, seed=16, dtype=dtype)
    f = torch.compile(lambda a, b: fastcka.cka(a, b, unbiased=True), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(f(x, y), fastcka.cka(x, y, unbiased=True))
    m = torch.compile(lambda a, b: fastcka.cka_matrix([a, b]), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(m(x, y), fastcka.cka_matrix([x, y]))


def test_double_backward_is_blocked():
    x, y = correlated_pair(10, 3, 3, seed=17)
    x.requires_grad_(True)
    (g,) = torch.autograd.grad(fastcka.cka(x, y), x, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()


@pytest.mark.parametrize("n, p, want", [(1280, 1024, "feature"), (1024, 1024, "sample"), (600, 512, "feature"),
                                        (512, 512, "sample"), (300, 256, "feature"), (256, 256, "sample")])
def test_auto_path_counts_the_panelled_self_terms(n, p, want):
    """Auto's choice follows the multiply counts with the self terms from 64-column panels (the switch near n = p,
    where it used to be at n = 1.5 p): it is bit-identical to the path it picked, and differs from the other."""
    g = torch.Generator().manual_seed(n + p)
    x = torch.randn(n, p, generator=g, dtype=torch.float64)
    y = x @ torch.randn(p, p, generator=g, dtype=torch.float64) / p**0.5 + torch.randn(n, p, generator=g, dtype=torch.float64)
    auto = fastcka.hsic_terms(x, y)
    picked = fastcka.hsic_terms(x, y, method=want)
    other = fastcka.hsic_terms(x, y, method="sample" if want == "feature" else "feature")
    assert torch.equal(auto, picked)
    assert not torch.equal(auto, other)  # the two paths round differently, so this tells them apart


@pytest.mark.parametrize("offset", [1e4, 1e8, 1e12])
@pytest.mark.parametrize("method", ["feature", "sample"])
def test_debiased_cka_of_data_far_from_zero(offset, method):
    """Activations whose mean is 10⁴–10¹² times their spread (float64). The plain float64 column mean is off by its
    sum's rounding, and the debiased formula (written for exactly centred features) is first-order in that shift:
    replayed in float64 with a plain mean it misses by 2e-10 at 10⁸ and 1e-6 at 10¹². With the mean's correction pass
    the result is the float64 U-centred Grams' of the same (shifted) input, which shift by one of its own rows (exact
    for equal rows) and so never centre by a mean."""
    import _independent as I

    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(64, 20, generator=g, dtype=torch.float64)
        y = x[:, :10] @ torch.randn(10, 8, generator=g, dtype=torch.float64) + torch.randn(64, 8, generator=g,
                                                                                           dtype=torch.float64)
        x = x + offset * torch.randn(1, 20, generator=g, dtype=torch.float64)
        ref = I.cka(x, y, "linear", True).item()
        assert abs(fastcka.cka(x, y, unbiased=True, method=method).item() - ref) < 1e-13

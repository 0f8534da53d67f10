"""cka_matrix equals the loop of single cka calls, entry by entry."""

import pytest
import torch

import fastcka
from conftest import correlated_pair, randn


def layers(n, widths, seed):
    base, _ = correlated_pair(n, 8, 1, seed=seed)
    return [base @ randn(8, w, seed=seed + i) + 0.5 * randn(n, w, seed=seed + 100 + i) for i, w in enumerate(widths)]


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("method", ["auto", "feature", "sample"])
def test_symmetric_matrix_equals_loop(unbiased, method):
    xs = layers(40, [3, 17, 5, 60], seed=1)
    m = fastcka.cka_matrix(xs, unbiased=unbiased, method=method)
    assert m.shape == (4, 4) and m.dtype == torch.float64
    for i in range(4):
        assert m[i, i].item() == 1.0
        for j in range(4):
            torch.testing.assert_close(m[i, j], fastcka.cka(xs[i], xs[j], unbiased=unbiased, method=method), rtol=1e-12, atol=1e-14)
    assert torch.equal(m, m.T)


@pytest.mark.parametrize("unbiased", [False, True])
def test_cross_matrix_equals_loop(unbiased):
    xs = layers(30, [4, 9], seed=2)
    ys = layers(30, [2, 11, 6], seed=3)
    m = fastcka.cka_matrix(xs, ys, unbiased=unbiased)
    assert m.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(m[i, j], fastcka.cka(xs[i], ys[j], unbiased=unbiased), rtol=1e-12, atol=1e-14)


def test_rbf_and_float32_and_constant_layer():
    xs = [t.float() for t in layers(25, [3, 4], seed=4)] + [torch.ones(25, 2)]
    m = fastcka.cka_matrix(xs, kernel="rbf")
    assert m.dtype == torch.float32
    torch.testing.assert_close(m[0, 1], fastcka.cka(xs[0], xs[1], kernel="rbf"))
    lin = fastcka.cka_matrix(xs)
    assert lin[2, 2].item() == 0.0 and lin[0, 2].item() == 0.0


def test_bad_input():
    with pytest.raises(TypeError):
        fastcka.cka_matrix(torch.randn(4, 3))
    with pytest.raises(ValueError, match="same number of examples"):
        fastcka.cka_matrix([torch.randn(5, 2), torch.randn(6, 2)])


def test_opcheck():
    xs = layers(12, [3, 4], seed=5)
    torch.library.opcheck(torch.ops.fastcka.linear_hsic_matrix, (xs, [], False, 0),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))

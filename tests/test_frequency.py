"""Fourier spectrum, key frequencies and concentration against numpy.fft in float64, plus the planted-frequency
cases, both DFT paths, gradients, opcheck and bad input."""

import math

import numpy as np
import pytest
import torch

import fastcka
import fastcka.reference as R
from conftest import randn


def numpy_spectrum(x: np.ndarray, axis: int) -> np.ndarray:
    p = x.shape[axis]
    e = np.abs(np.fft.fft(x, axis=axis)) ** 2
    e = np.moveaxis(e, axis, 0).reshape(p, -1).sum(1)
    return np.array([e[k] + (e[p - k] if 0 < k and 2 * k != p else 0.0) for k in range(p // 2 + 1)])


@pytest.mark.parametrize("shape,dim", [((13, 5), 0), ((4, 16, 3), 1), ((97, 128), 0), ((2, 3), 0), ((6, 40), -2)])
@pytest.mark.parametrize("method", ["matmul", "fft"])
def test_spectrum_matches_numpy(shape, dim, method):
    x = randn(*shape, seed=sum(shape))
    ours = fastcka.frequency_spectrum(x, dim=dim, dft=method)
    expect = numpy_spectrum(x.numpy(), dim)
    np.testing.assert_allclose(ours.numpy(), expect, rtol=1e-10, atol=1e-10 * expect.max())


@pytest.mark.parametrize("p", [5, 8, 31])
@pytest.mark.parametrize("method", ["matmul", "fft"])
def test_grid_spectrum_matches_reference(p, method):
    x = randn(p, 3, p, seed=p)  # residue axes 0 and 2
    ours = fastcka.frequency_spectrum(x, dim=(0, 2), dft=method)
    ref = R.frequency_spectrum(x, dim=(0, 2))
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10 * ref.max().item())
    f = np.fft.fft2(x.numpy(), axes=(0, 2))
    assert math.isclose(ours.sum().item(), (np.abs(f) ** 2).sum(), rel_tol=1e-10)


@pytest.mark.parametrize("p", [512, 513])
def test_matmul_and_fft_agree_at_the_switch_over(p):
    x = randn(p, 64, seed=p)
    a = fastcka.frequency_spectrum(x, dft="matmul")
    b = fastcka.frequency_spectrum(x, dft="fft")
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10 * a.max().item())
    auto = fastcka.frequency_spectrum(x)
    torch.testing.assert_close(auto, a if p <= 512 else b, rtol=0, atol=0)


def planted(p: int, freqs, d: int = 64, noise: float = 0.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.arange(p, dtype=torch.float64)[:, None]
    cols = [torch.ones(p, 1, dtype=torch.float64)]
    for k in freqs:
        cols += [torch.cos(2 * math.pi * k * a / p), torch.sin(2 * math.pi * k * a / p)]
    basis = torch.cat(cols, 1)
    w = basis @ torch.randn(basis.shape[1], d, generator=g, dtype=torch.float64)
    if noise:
        w = w + noise * w.std() * torch.randn(p, d, generator=g, dtype=torch.float64)
    return w


def test_planted_frequencies_are_found():
    w = planted(113, [4, 17, 42])
    assert abs(fastcka.frequency_concentration(w, 3).item() - 1.0) < 1e-10
    assert sorted(fastcka.key_frequencies(w, 3).tolist()) == [4, 17, 42]
    noisy = planted(113, [4, 17, 42], noise=0.01, seed=1)
    assert fastcka.frequency_concentration(noisy, 3).item() >= 0.99
    assert sorted(fastcka.key_frequencies(noisy, 3).tolist()) == [4, 17, 42]


def test_gaussian_embedding_is_not_concentrated():
    w = randn(113, 512, seed=2)
    c = fastcka.frequency_concentration(w, 3).item()
    assert abs(c - 3 / 56) < 0.02
    torch.testing.assert_close(fastcka.frequency_concentration(w, 3), R.frequency_concentration(w, 3), rtol=1e-10, atol=0)


@pytest.mark.parametrize("p", [7, 8, 59, 64])
@pytest.mark.parametrize("method", ["matmul", "fft"])
def test_1d_energy_ranking_and_concentration_match_reference(p, method):
    x = randn(p, 9, seed=p) + planted(p, [2, p // 2 - 1], d=9, seed=p)
    s = fastcka.frequency_spectrum(x, dft=method)
    torch.testing.assert_close(s, R.frequency_spectrum(x), rtol=1e-10, atol=1e-10 * s.max().item())
    torch.testing.assert_close(fastcka.frequency_energy(x), R._frequency_energy(x, 0), rtol=1e-10, atol=0)
    k = min(3, p // 2)
    assert fastcka.key_frequencies(x, k).tolist() == R.key_frequencies(x, k).tolist()  # order too: strongest first
    torch.testing.assert_close(fastcka.frequency_concentration(x, k), R.frequency_concentration(x, k), rtol=1e-10, atol=0)


@pytest.mark.parametrize("p", [513, 1000])
def test_fft_path_matches_numpy_above_the_switch_over(p):
    x = randn(p, 6, seed=p)
    expect = numpy_spectrum(x.numpy(), 0)
    np.testing.assert_allclose(fastcka.frequency_spectrum(x).numpy(), expect, rtol=1e-10, atol=1e-10 * expect.max())


def test_grid_concentration_and_key_frequencies_match_reference():
    x = randn(11, 11, 4, seed=3)
    x = x + 3 * planted(11, [2], d=4)[:, None, :]  # frequency 2 along a, broadcast over b
    torch.testing.assert_close(fastcka.frequency_concentration(x, 2, dim=(0, 1)),
                               R.frequency_concentration(x, 2, dim=(0, 1)), rtol=1e-10, atol=0)
    assert fastcka.key_frequencies(x, 1, dim=(0, 1)).tolist() == [2]
    assert fastcka.key_frequencies(x, 2, dim=(0, 1)).tolist() == R.key_frequencies(x, 2, dim=(0, 1)).tolist()


def test_float32_and_half_inputs():
    x = randn(29, 16, seed=4)
    ref = R.frequency_spectrum(x)
    for dt in (torch.float32, torch.bfloat16):
        out = fastcka.frequency_spectrum(x.to(dt))
        assert out.dtype == torch.float32
        torch.testing.assert_close(out.double(), R.frequency_spectrum(x.to(dt).double()), rtol=1e-5, atol=1e-5 * ref.max().item())


def test_constant_input_has_zero_concentration():
    x = torch.full((17, 4), 2.5, dtype=torch.float64)
    assert fastcka.frequency_concentration(x, 2).item() == 0.0


@pytest.mark.parametrize("p", [6, 7])
@pytest.mark.parametrize("method", [1, 2])
def test_gradcheck_and_opcheck(method, p):
    name = {1: "matmul", 2: "fft"}[method]
    x = randn(p, 3, seed=5).requires_grad_()  # even p has a Nyquist bin that is not folded
    assert torch.autograd.gradcheck(lambda t: torch.ops.fastcka.frequency_spectrum(t, method), (x,))
    g = randn(p, 4, p, seed=6).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: fastcka.frequency_spectrum(t, dim=(0, 2), dft=name), (g,))
    assert torch.autograd.gradcheck(lambda t: fastcka.frequency_concentration(t, 2), (x,))
    torch.library.opcheck(torch.ops.fastcka.frequency_spectrum, (x, method))
    torch.library.opcheck(torch.ops.fastcka.frequency_spectrum, (randn(p, p, 3, seed=8), method))
    torch.library.opcheck(torch.ops.fastcka._frequency_spectrum_backward, (randn(p // 2 + 1, seed=7), x.detach(), method))


def test_compile_fullgraph():
    x = randn(11, 8, seed=8).float()
    f = torch.compile(lambda t: fastcka.frequency_concentration(t, 3), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(f(x), fastcka.frequency_concentration(x, 3))


def test_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        fastcka.frequency_spectrum(torch.randn(1, 4))
    with pytest.raises(TypeError):
        fastcka.frequency_spectrum(torch.randn(5, 4, dtype=torch.complex64))
    with pytest.raises(TypeError):
        fastcka.frequency_spectrum(torch.ones(5, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="top_k"):
        fastcka.frequency_concentration(torch.randn(11, 3), 0)
    with pytest.raises(ValueError, match="top_k"):
        fastcka.frequency_concentration(torch.randn(11, 3), 6)  # 5 non-constant frequencies: top_k ≤ 5
    with pytest.raises(ValueError, match="out of range"):
        fastcka.frequency_spectrum(torch.randn(5, 4), dim=3)
    with pytest.raises(ValueError, match="equal size"):
        fastcka.frequency_spectrum(torch.randn(5, 6), dim=(0, 1))
    with pytest.raises(ValueError, match="unknown dft"):
        fastcka.frequency_spectrum(torch.randn(5, 6), dft="dct")


def test_top_k_may_rank_every_frequency():
    x = randn(11, 3, seed=9)
    assert fastcka.key_frequencies(x, 5).tolist() == R.key_frequencies(x, 5).tolist()  # the full ranking, in order
    assert fastcka.key_frequencies(randn(3, 2, seed=10), 1).tolist() == [1]  # p = 3: one non-constant frequency

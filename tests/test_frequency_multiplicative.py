"""The multiplicative Fourier basis (issue 20): residues 1 … p−1 indexed by their discrete logarithm to the smallest
primitive root, against the float64 reference (which finds the root by brute force), planted characters of the
multiplicative group, the trainer's fourier_mul column and bad input."""

import math

import pytest
import torch

import fastcka
import fastcka.reference as R
from conftest import randn
from fastcka.fourier import discrete_log_order, primitive_root


@pytest.mark.parametrize("p, g", [(3, 2), (5, 2), (7, 3), (11, 2), (23, 5), (41, 6), (59, 2), (97, 5), (113, 3)])
def test_primitive_root_known_values(p, g):
    assert primitive_root(p) == g
    order = discrete_log_order(p)
    assert sorted(order) == list(range(1, p)) and order[1] == g


@pytest.mark.parametrize("bad", [1, 2, 4, 9, 12, 91])
def test_primitive_root_needs_an_odd_prime(bad):
    with pytest.raises(ValueError, match="odd prime"):
        primitive_root(bad)
    with pytest.raises(TypeError, match="p must be an int"):
        primitive_root(7.0)


@pytest.mark.parametrize("p", [5, 13, 97])
@pytest.mark.parametrize("dft", ["matmul", "fft"])
def test_spectrum_matches_the_reference(p, dft):
    x = randn(p, 6, seed=p)
    ours = fastcka.frequency_spectrum(x, dim=0, dft=dft, basis="multiplicative")
    ref = R.frequency_spectrum(x, dim=0, basis="multiplicative")
    assert ours.shape == ((p - 1) // 2 + 1,)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10 * ref.max().item())
    for top_k in (1, 2):
        torch.testing.assert_close(fastcka.frequency_concentration(x, top_k, basis="multiplicative"),
                                   R.frequency_concentration(x, top_k, basis="multiplicative"), rtol=1e-10, atol=1e-12)
        assert torch.equal(fastcka.key_frequencies(x, top_k, basis="multiplicative"),
                           R.key_frequencies(x, top_k, basis="multiplicative"))


def test_grid_matches_the_reference():
    x = randn(11, 3, 11, seed=4)
    ours = fastcka.frequency_spectrum(x, dim=(0, 2), basis="multiplicative")
    ref = R.frequency_spectrum(x, dim=(0, 2), basis="multiplicative")
    assert ours.shape == (6, 6)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10 * ref.max().item())


def dlog_character(p: int, k: int) -> torch.Tensor:
    """Rows a = 0 … p−1: (cos, sin) of 2π k log_g(a) / (p − 1) for a ≥ 1 (row 0 arbitrary): a character of the
    multiplicative group, the shape of a multiplication circuit's embedding."""
    g = R._by_discrete_log  # noqa: F841 (the reference finds its own root; here the log comes from brute force too)
    root = next(r for r in range(2, p) if len({pow(r, j, p) for j in range(p - 1)}) == p - 1)
    log = {pow(root, j, p): j for j in range(p - 1)}
    w = torch.zeros(p, 2, dtype=torch.float64)
    w[0] = torch.tensor([5.0, -3.0])
    for a in range(1, p):
        w[a, 0] = math.cos(2 * math.pi * k * log[a] / (p - 1))
        w[a, 1] = math.sin(2 * math.pi * k * log[a] / (p - 1))
    return w


@pytest.mark.parametrize("p, k", [(97, 7), (113, 20), (59, 3)])
def test_a_character_of_the_multiplicative_group_is_one_frequency_there_and_spread_in_the_additive_basis(p, k):
    w = dlog_character(p, k)
    assert fastcka.key_frequencies(w, 1, basis="multiplicative").item() == k
    assert fastcka.frequency_concentration(w, 1, basis="multiplicative").item() == pytest.approx(1.0, abs=1e-12)
    assert fastcka.frequency_concentration(w, 1, basis="additive").item() < 0.3  # the additive basis misses it
    # row 0 (residue 0, outside the group) does not enter the multiplicative spectrum
    w2 = w.clone()
    w2[0] = 100.0
    torch.testing.assert_close(fastcka.frequency_spectrum(w2, basis="multiplicative"),
                               fastcka.frequency_spectrum(w, basis="multiplicative"))


def test_gradients_flow_through_the_reindexing():
    x = randn(13, 4, seed=1).requires_grad_()
    fastcka.frequency_concentration(x, 2, basis="multiplicative").backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert torch.all(x.grad[0] == 0)  # residue 0 is dropped


def test_bad_basis_and_non_prime_residues_name_the_option():
    x = randn(12, 3, seed=0)
    with pytest.raises(ValueError, match="basis"):
        fastcka.frequency_spectrum(x, basis="log")
    with pytest.raises(ValueError, match="multiplicative.*12"):
        fastcka.frequency_concentration(x, 2, basis="multiplicative")
    with pytest.raises(ValueError, match="basis"):
        R.frequency_spectrum(x, basis="multiplicative")


def test_trainer_logs_fourier_mul_for_mul_only(tmp_path):
    from fastcka.grok import _metrics
    from fastcka.grok.train import read_log, train
    from test_grok_train import tiny

    train(tiny(tmp_path / "mul", task="mul", max_steps=10))
    train(tiny(tmp_path / "add", task="add", max_steps=10))
    mul, add = read_log(tmp_path / "mul" / "log.csv"), read_log(tmp_path / "add" / "log.csv")
    assert all(0 < r["fourier_mul"] <= 1 for r in mul) and "fourier_mul" not in add[0]  # add logs as before
    w = torch.load(tmp_path / "mul" / "checkpoint.pt", weights_only=False)["model"]["tok_emb.weight"][:11]
    assert mul[-1]["fourier_mul"] == pytest.approx(
        R.frequency_concentration(w, 4, basis="multiplicative").item(), rel=1e-5)  # top_k 5 capped at ⌊10/2⌋ − 1
    assert math.isnan(_metrics.frequency_concentration(randn(12, 3, seed=0), 2, "multiplicative"))  # not prime

"""Fourier progress measures (Nanda et al. 2023): the energy spectrum of a tensor along residue axes, its key
frequencies and their concentration.

A tensor indexed along ``dim`` by a residue a ∈ Z_p (an embedding W_E of shape (p, d), activations over inputs
a = 0 … p−1, ...) is transformed along that axis; the energy of frequency k = 0 … ⌊p/2⌋ is Σ |x̂_k|² + |x̂_{p−k}|²
(the cos and sin parts of one frequency; k = 0 and, for even p, k = p/2 once), summed over every other dim.
For a p×p grid of inputs (a, b) (``dims=(da, db)``) the spectrum is the folded 2-D table E[k_a, k_b].

Frequency k's energy, for the concentration and the key frequencies, is e_k for one axis; over a grid it is the
sum of the table entries with k_a = k or k_b = k (each such entry once, so a cross term (k, k′) counts towards both
of its frequencies). The DFT is a GEMM with the real cos/sin basis for p ≤ 512 and an rfft above.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ._ops import ops

Tensor = torch.Tensor
METHODS = {"auto": 0, "matmul": 1, "fft": 2}

__all__ = ["frequency_spectrum", "frequency_energy", "key_frequencies", "frequency_concentration"]


def _residue_layout(x: Tensor, dim: int, dims: Optional[Sequence[int]]) -> Tensor:
    """Move the residue axes to the front and flatten the rest: (p, m) or (p, p, m), in float32/float64."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.is_complex() or not x.is_floating_point():
        raise TypeError(f"x must be a real floating-point tensor, got {x.dtype}")
    axes = [dim] if dims is None else list(dims)
    if len(axes) not in (1, 2):
        raise ValueError(f"dims must name one or two residue axes, got {dims!r}")
    if x.dim() < len(axes):
        raise ValueError(f"x has {x.dim()} dims, fewer than the residue axes {axes}")
    try:
        axes = [a % x.dim() if -x.dim() <= a < x.dim() else None for a in axes]
    except TypeError:
        raise TypeError(f"dim/dims must be integers, got {dim!r} / {dims!r}") from None
    if None in axes:
        raise ValueError(f"dim/dims {dim if dims is None else dims} out of range for a tensor with {x.dim()} dims")
    if len(set(axes)) != len(axes):
        raise ValueError(f"dims must be two different axes, got {dims!r}")
    p = x.shape[axes[0]]
    if p < 2:
        raise ValueError(f"the residue axis {axes[0]} has size {p}; a spectrum needs at least 2 residues")
    if len(axes) == 2 and x.shape[axes[1]] != p:
        raise ValueError(f"a grid needs two residue axes of equal size, got {x.shape[axes[0]]} and {x.shape[axes[1]]}")
    x = x.movedim(axes, list(range(len(axes))))
    x = x.reshape(*x.shape[: len(axes)], -1)
    return x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)


def frequency_spectrum(x: Tensor, dim: int = 0, dims: Optional[Sequence[int]] = None, method: str = "auto") -> Tensor:
    """Energy per folded frequency k = 0 … ⌊p/2⌋ along ``dim`` (shape (⌊p/2⌋+1,)), or the folded 2-D table over a
    grid ``dims=(da, db)`` (shape (⌊p/2⌋+1, ⌊p/2⌋+1)), summed over all other dims. Differentiable; float64 for float64
    input, else float32. ``method``: "auto" (basis GEMM for p ≤ 512, rfft above), "matmul" or "fft"."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    xr = _residue_layout(x, dim, dims)
    return ops.frequency_spectrum(xr, METHODS[method]).to(xr.dtype)


def _energies(s: Tensor) -> Tensor:
    """Non-constant frequency energies from a spectrum (1-D) or folded table (2-D)."""
    if s.dim() == 1:
        return s[1:]
    return s[1:, :].sum(1) + s[:, 1:].sum(0) - s.diagonal()[1:]


def frequency_energy(x: Tensor, dim: int = 0, dims: Optional[Sequence[int]] = None) -> Tensor:
    """Energy of each non-constant frequency k = 1 … ⌊p/2⌋ (index k−1), by the rule in the module docstring."""
    return _energies(frequency_spectrum(x, dim, dims))


def _check_top_k(top_k: int, available: int) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        raise TypeError(f"top_k must be an int, got {type(top_k).__name__}")
    if not 1 <= top_k <= available:
        raise ValueError(f"top_k must be in [1, {available}] (there are {available} non-constant frequencies), got {top_k}")


def key_frequencies(x: Tensor, top_k: int, dim: int = 0, dims: Optional[Sequence[int]] = None) -> Tensor:
    """The ``top_k`` non-constant frequencies (values in 1 … ⌊p/2⌋) with the most energy, strongest first (int64)."""
    e = frequency_energy(x, dim, dims)
    _check_top_k(top_k, e.numel())
    return e.topk(top_k).indices + 1


def frequency_concentration(x: Tensor, top_k: int, dim: int = 0, dims: Optional[Sequence[int]] = None) -> Tensor:
    """Share of the non-constant energy held by the ``top_k`` strongest frequencies, in [0, 1] (0-d tensor,
    differentiable). An input constant along the residue axes gives 0: non-constant energy at rounding level,
    below (64·ε)² of the total energy (ε the dtype's machine epsilon), counts as none."""
    s = frequency_spectrum(x, dim, dims)
    e = _energies(s)
    _check_top_k(top_k, e.numel())
    total = e.sum()
    top = e.topk(top_k).values.sum()
    pos = total > (64 * torch.finfo(s.dtype).eps) ** 2 * s.sum()
    return torch.where(pos, top / torch.where(pos, total, torch.ones_like(total)), 0.0 * total)

"""Fourier progress measures (Nanda et al. 2023): the energy spectrum of a tensor along residue axes, its key
frequencies and their concentration.

A tensor indexed along ``dim`` by a residue a ∈ Z_p (an embedding W_E of shape (p, d), activations over inputs
a = 0 … p−1, ...) is transformed along that axis; the energy of frequency k = 0 … ⌊p/2⌋ is Σ |x̂_k|² + |x̂_{p−k}|²
(the cos and sin parts of one frequency; k = 0 and, for even p, k = p/2 once), summed over every other dim.
For a p×p grid of inputs (a, b) (``dim=(da, db)``) the spectrum is the folded 2-D table E[k_a, k_b].

Frequency k's energy, for the concentration and the key frequencies, is e_k for one axis; over a grid it is the
sum of the table entries with k_a = k or k_b = k (each such entry once, so a cross term (k, k′) counts towards both
of its frequencies). The DFT is a GEMM with the real cos/sin basis for p ≤ 512 and an rfft above (``dft=``).

The input is centred along the residue axes (the mean over them, per remaining entry, taken in float64) before the
transform, and the constant term's energy is added back exactly, so a float32 tensor whose offset dwarfs its
variation (10⁶ times, say) keeps its non-constant spectrum. Return dtype: float64 for float64 input, else float32.

``basis="multiplicative"`` (p prime) first drops residue 0 and puts residues 1 … p−1 in the order g⁰, g¹, …, g^(p−2)
mod p of their discrete logarithm to g, the smallest primitive root of p, along every residue axis: multiplication
mod p is addition of discrete logs, so the multiplicative group's characters are the Fourier basis of that order,
and a circuit for a·b (or a/b) mod p is sparse there as one for a + b is in the additive basis. The frequencies are
then k = 0 … ⌊(p−1)/2⌋ of the cyclic group Z_(p−1).

Options are keyword-only (``top_k`` may be positional). Renamed in 0.2, the old names still accepted with a
DeprecationWarning for one release: ``dims=`` → ``dim=`` (an int, or a pair for a grid), ``method=`` → ``dft=``.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import torch

from ._ops import fops
from ._validation import renamed_options

Tensor = torch.Tensor
Dim = Union[int, Sequence[int]]
DFT_METHODS = {"auto": 0, "matmul": 1, "fft": 2}
BASES = ("additive", "multiplicative")

__all__ = ["frequency_spectrum", "frequency_energy", "key_frequencies", "frequency_concentration"]


def _options(where: str, dim: Dim, deprecated: dict, dft: Optional[str] = None) -> Any:
    """``dim`` (and ``dft`` when given) after the deprecated ``dims=`` (and ``method=``); ``dims=None``, the old
    default, is ignored."""
    if "dims" in deprecated and deprecated["dims"] is None:
        deprecated.pop("dims")
    if dft is None:
        return renamed_options(where, deprecated, dim=("dims", dim, 0))
    return renamed_options(where, deprecated, dim=("dims", dim, 0), dft=("method", dft, "auto"))


def _residue_axes(x: Tensor, dim: Dim) -> list:
    """``dim`` (an int or a pair) as a list of one or two distinct non-negative axes of ``x``."""
    axes = [dim] if isinstance(dim, int) and not isinstance(dim, bool) else dim
    try:
        axes = list(axes)
    except TypeError:
        raise TypeError(f"dim must be an int or a pair of ints, got {dim!r}") from None
    if not all(isinstance(a, int) and not isinstance(a, bool) for a in axes):
        raise TypeError(f"dim must be an int or a pair of ints, got {dim!r}")
    if len(axes) not in (1, 2):
        raise ValueError(f"dim must name one or two residue axes, got {dim!r}")
    if x.dim() < len(axes):
        raise ValueError(f"x has {x.dim()} dims, fewer than the residue axes {axes}")
    if not all(-x.dim() <= a < x.dim() for a in axes):
        raise ValueError(f"dim {dim!r} out of range for a tensor with {x.dim()} dims")
    axes = [a % x.dim() for a in axes]
    if len(set(axes)) != len(axes):
        raise ValueError(f"a grid needs two different residue axes, got dim={dim!r}")
    return axes


def _residue_layout(x: Tensor, dim: Dim) -> Tuple[Tensor, Tensor]:
    """Move the residue axes to the front and flatten the rest: (p, m) or (p, p, m) in float32/float64, centred
    along the residue axes; also the float64 mean (m,) that was removed."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.is_complex() or not x.is_floating_point():
        raise TypeError(f"x must be a real floating-point tensor, got {x.dtype}")
    axes = _residue_axes(x, dim)
    p = x.shape[axes[0]]
    if p < 2:
        raise ValueError(f"the residue axis {axes[0]} has size {p}; a spectrum needs at least 2 residues")
    if len(axes) == 2 and x.shape[axes[1]] != p:
        raise ValueError(f"a grid needs two residue axes of equal size, got {x.shape[axes[0]]} and {x.shape[axes[1]]}")
    front = list(range(len(axes)))
    x = x.movedim(axes, front)
    x = x.reshape(*x.shape[: len(axes)], -1)
    mean = x.to(torch.float64).mean(dim=front)  # float64: an offset 10⁶× the spread costs no float32 digits
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return (x.to(torch.float64) - mean).to(dtype), mean


def primitive_root(p: int) -> int:
    """The smallest primitive root of the prime ``p`` (a generator of the multiplicative group mod p)."""
    if isinstance(p, bool) or not isinstance(p, int):
        raise TypeError(f"p must be an int, got {type(p).__name__}")
    if p < 3 or any(p % q == 0 for q in range(2, int(p ** 0.5) + 1)):
        raise ValueError(f"the multiplicative basis needs an odd prime number of residues, got {p}")
    n, factors, q = p - 1, [], 2
    while q * q <= n:
        if n % q == 0:
            factors.append(q)
            while n % q == 0:
                n //= q
        q += 1
    factors += [n] if n > 1 else []
    return next(g for g in range(2, p) if all(pow(g, (p - 1) // q, p) != 1 for q in factors))


def discrete_log_order(p: int) -> list:
    """Residues 1 … p−1 in the order of their discrete logarithm to :func:`primitive_root`: [g⁰, g¹, …] mod p."""
    g = primitive_root(p)
    return [pow(g, j, p) for j in range(p - 1)]


def _in_basis(x: Tensor, dim: Dim, basis: str) -> Tensor:
    """``x`` with every residue axis re-indexed for ``basis`` (unchanged for the additive one)."""
    if basis not in BASES:
        raise ValueError(f"unknown basis {basis!r}; known: {', '.join(BASES)}")
    if basis == "additive":
        return x
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    axes = _residue_axes(x, dim)
    p = x.shape[axes[0]]
    try:
        order = torch.tensor(discrete_log_order(p), device=x.device)
    except ValueError as e:
        raise ValueError(f"basis='multiplicative': {e} (the size of residue axis {axes[0]})") from None
    if any(x.shape[a] != p for a in axes):
        return x  # _residue_layout names the mismatch
    for a in axes:
        x = x.index_select(a, order)
    return x


def frequency_spectrum(x: Tensor, *, dim: Dim = 0, dft: str = "auto", basis: str = "additive",
                       **deprecated: Any) -> Tensor:
    """Energy per folded frequency k = 0 … ⌊p/2⌋ along ``dim`` (an int: shape (⌊p/2⌋+1,)), or the folded 2-D table
    over a grid ``dim=(da, db)`` (shape (⌊p/2⌋+1, ⌊p/2⌋+1)), summed over all other dims. Differentiable; float64 for
    float64 input, else float32. ``dft``: "auto" (basis GEMM for p ≤ 512, rfft above), "matmul" or "fft".
    The input is centred along ``dim`` first (see the module docstring); the k = 0 (constant) energy is the exact
    Σ (p^r·mean)² over the other entries (r = 1, or 2 for a grid). ``basis``: "additive" (residues 0 … p−1 as
    given) or "multiplicative" (p prime: residues 1 … p−1 by discrete log, see the module docstring; then p − 1
    takes the place of p above)."""
    dim, dft = _options("frequency_spectrum", dim, deprecated, dft)
    x = _in_basis(x, dim, basis)
    if dft not in DFT_METHODS:
        raise ValueError(f"unknown dft {dft!r}; known: {', '.join(DFT_METHODS)}")
    xr, mean = _residue_layout(x, dim)
    s = fops.frequency_spectrum(xr, DFT_METHODS[dft])
    constant = (mean * xr.shape[0] ** (xr.dim() - 1)).square().sum()  # |x̂_0|² of the removed mean, summed
    at_zero = torch.zeros(s.shape, dtype=torch.bool, device=s.device)
    at_zero[(0,) * s.dim()] = True
    return torch.where(at_zero, s + constant, s).to(xr.dtype)


def _energies(s: Tensor) -> Tensor:
    """Non-constant frequency energies from a spectrum (1-D) or folded table (2-D)."""
    if s.dim() == 1:
        return s[1:]
    return s[1:, :].sum(1) + s[:, 1:].sum(0) - s.diagonal()[1:]


def frequency_energy(x: Tensor, *, dim: Dim = 0, basis: str = "additive", **deprecated: Any) -> Tensor:
    """Energy of each non-constant frequency k = 1 … ⌊p/2⌋ (index k−1), by the rule in the module docstring."""
    dim = _options("frequency_energy", dim, deprecated)
    return _energies(frequency_spectrum(x, dim=dim, basis=basis))


def _check_top_k(top_k: int, available: int) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        raise TypeError(f"top_k must be an int, got {type(top_k).__name__}")
    if not 1 <= top_k <= available:
        raise ValueError(f"top_k must be in [1, {available}] (there are {available} non-constant frequencies), got {top_k}")


def key_frequencies(x: Tensor, top_k: int, *, dim: Dim = 0, basis: str = "additive", **deprecated: Any) -> Tensor:
    """The ``top_k`` non-constant frequencies (values in 1 … ⌊p/2⌋) with the most energy, strongest first (int64).
    ``basis="multiplicative"``: frequencies of the discrete-log order, 1 … ⌊(p−1)/2⌋."""
    dim = _options("key_frequencies", dim, deprecated)
    e = frequency_energy(x, dim=dim, basis=basis)
    _check_top_k(top_k, e.numel())
    return e.topk(top_k).indices + 1


def frequency_concentration(x: Tensor, top_k: int, *, dim: Dim = 0, basis: str = "additive",
                            **deprecated: Any) -> Tensor:
    """Share of the non-constant energy held by the ``top_k`` strongest frequencies, in [0, 1] (0-d tensor,
    differentiable; float64 for float64 input, else float32). An input constant along the residue axes gives 0:
    non-constant energy at the level that centring a constant in float64 leaves, below (64·ε)² of the total
    energy (ε = float64's machine epsilon, whatever the input dtype: the centring runs in float64), counts as none.
    ``basis``: as in :func:`frequency_spectrum`."""
    dim = _options("frequency_concentration", dim, deprecated)
    s = frequency_spectrum(x, dim=dim, basis=basis)
    e = _energies(s)
    _check_top_k(top_k, e.numel())
    total = e.sum()
    top = e.topk(top_k).values.sum()
    pos = total > (64 * torch.finfo(torch.float64).eps) ** 2 * s.sum()
    return torch.where(pos, top / torch.where(pos, total, torch.ones_like(total)), 0.0 * total)

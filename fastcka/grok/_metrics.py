"""The one place where the trainer gets its CKA and Fourier measures.

They come from the fastcka ops (``fastcka.cka``, ``fastcka.frequency_concentration``) when the extension provides
them, and otherwise from the float64 definitions in ``fastcka.reference`` (feature-space linear CKA, which is
differentiable and costs O(n d²), so ``--force-cka`` works either way). ``BACKEND`` says which is in use; the run's
summary records it.
"""

from __future__ import annotations

import math

import torch

from fastcka import reference

try:  # the extension's ops, once built
    from fastcka import cka as _cka
except ImportError:  # pragma: no cover - depends on the build
    _cka = None
try:
    from fastcka import frequency_concentration as _freq
except ImportError:  # pragma: no cover
    _freq = None

BACKEND = {"cka": "fastcka.cka" if _cka else "fastcka.reference", "fourier": "fastcka" if _freq else "fastcka.reference"}


def cka(x: torch.Tensor, y: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """Linear CKA of two (n, d) representations, a differentiable 0-d tensor in x's dtype."""
    if _cka is not None:
        return _cka(x, y, kernel="linear", unbiased=unbiased)
    return reference.feature_space_linear_cka(x, y, unbiased=unbiased).to(x.dtype)


def frequency_concentration(w: torch.Tensor, top_k: int, basis: str = "additive") -> torch.Tensor:
    """Share of W's non-constant Fourier energy (along dim 0, the residues) held by the top_k frequencies.
    ``top_k`` is capped at one less than the number of non-constant frequencies (⌊p/2⌋; ⌊(p−1)/2⌋ in the
    multiplicative basis, which drops residue 0), where a share of 1 would say nothing; NaN when there are fewer
    than two of them."""
    available = (w.shape[0] - (basis == "multiplicative")) // 2
    if available < 2:
        return torch.tensor(math.nan)
    if basis == "multiplicative":
        from fastcka.fourier import primitive_root

        try:
            primitive_root(w.shape[0])
        except ValueError:  # not a prime number of residues: no multiplicative group to index by
            return torch.tensor(math.nan)
    top_k = min(top_k, available - 1)
    if _freq is not None:
        return _freq(w, top_k, dim=0, basis=basis)
    return reference.frequency_concentration(w, top_k, dim=0, basis=basis)


def spectral_entropy(x: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the normalised eigenvalues of the covariance of the (n, d) representation x."""
    x = x.detach().to(torch.float64)
    if not bool(torch.isfinite(x).all()):  # a diverged run: NaN, as CKA gives (svdvals would raise)
        return torch.tensor(math.nan, dtype=torch.float64, device=x.device)
    s = torch.linalg.svdvals(x - x.mean(0, keepdim=True)) ** 2
    p = s / s.sum().clamp_min(1e-300)
    return -(p * torch.log(p.clamp_min(1e-300))).sum()

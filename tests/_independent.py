"""An independent formulation of CKA/HSIC for the fuzz suite (tests/test_fuzz.py), written from Kornblith et al.'s
notebook (`gram_linear`, `gram_rbf`, `center_gram`, `cka`; "Similarity of Neural Network Representations
Revisited", 2019), not from fastcka/reference.py, so that a mistake shared by the library and its reference does
not go unseen.

Every function takes a ``dtype``: float64 (the default) is the ground truth; the same formulas run in float32 are
the "plain same-precision implementation" whose own error sets the float32 tolerance (DESIGN §4's rule).

Numerically exact where the notebook is not, by transforms that leave CKA and HSIC unchanged:

* squared distances from differences of rows (the notebook's ‖a‖² + ‖b‖² − 2a·b loses clustered or offset data,
  and identical rows must give exactly 0); the median is numpy's over all n² entries, the diagonal zeros included;
* the RBF Gram is taken as K − 1 = expm1(−γd) when most of K is near 1 (large σ): both centrings (H·H and Song's
  U-centring) annihilate a constant, so centred(K − 1) = centred(K) exactly, without the cancellation of K ≈ 1;
* linear Grams of x − x₀ (x₀ the most frequent row): a shift of the features does not change the centred Gram, and
  rows equal to x₀ become exactly 0 (a constant representation then has a zero Gram, hence CKA 0; all rows but one
  equal leave one nonzero entry, on the diagonal, which the unbiased estimator's U-centring removes exactly);
* for CKA only (scale-invariant in each Gram): the centred Gram is divided by its largest |entry| before the
  inner products, so they neither overflow nor underflow; with the unbiased estimator (the diagonal is zeroed) the
  RBF Gram is multiplied by exp(γ·d_min), d_min the smallest off-diagonal distance, so a nearly diagonal kernel
  (small σ) does not underflow; and for a vanishing γ·d (log(γ·max d) < −200) the Gram is −d, K − 1 divided by γ.

The CKA-0 rule (fastcka.functional docs): a representation whose centred Gram is zero (all rows equal, or an RBF
median of 0, i.e. more than half of the n² pairs identical, which makes γ = 0 and K constant) has CKA 0.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import torch

Tensor = torch.Tensor
F64 = torch.float64

# below this log(γ·max d) the RBF Gram's K − 1 = −γd to the precision of float64 (relative error γd/2 < 1e-80),
# so the scale-free Gram for CKA is −d (γ itself may underflow: threshold 1e200)
_LOG_GAMMA_LINEAR_LIMIT = -200.0


def as_matrix(x: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """(n, ...) -> (n, features) in ``dtype``; 1-D input is one feature per example."""
    x = torch.as_tensor(x)
    if x.dim() == 1:
        x = x[:, None]
    return x.reshape(x.shape[0], -1).to(dtype)


def sq_dists(x: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """All n² squared distances ‖xᵢ − xⱼ‖² from differences of rows, in ``dtype`` (exactly 0 for identical rows)."""
    x = as_matrix(x, dtype)
    return ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)


def median_sq_dist(x: Tensor, dtype: torch.dtype = F64) -> float:
    """numpy.median over all n² squared distances, the n diagonal zeros included (Kornblith et al.'s heuristic)."""
    d = sq_dists(x, dtype).detach().cpu().numpy()
    return float(np.median(d))


def log_gamma(x: Tensor, sigma: Optional[float] = None, threshold: float = 1.0, dtype: torch.dtype = F64) -> float:
    """log γ with γ = 1/(2σ²), σ² = threshold²·median (for σ None); −inf where the median is 0 (γ = 0: a constant
    kernel). In log space so that a threshold of 1e±200 neither overflows nor underflows."""
    if sigma is not None:
        return math.log(0.5) - 2.0 * math.log(sigma)
    med = median_sq_dist(x, dtype)
    if med == 0.0:
        return -math.inf
    return math.log(0.5) - math.log(med) - 2.0 * math.log(threshold)


def gram_linear(x: Tensor, dtype: torch.dtype = F64) -> Tensor:
    """K = X Xᵀ (the notebook's `gram_linear`) of the rows shifted by their most frequent row (same centred Gram)."""
    x = as_matrix(x, dtype)
    rows, inverse, counts = torch.unique(x, dim=0, return_inverse=True, return_counts=True)
    x = x - rows[counts.argmax()]
    return x @ x.T


def gram_rbf(x: Tensor, sigma: Optional[float] = None, threshold: float = 1.0, dtype: torch.dtype = F64,
             unbiased: bool = False, scale_free: bool = False, d_min: Optional[float] = None) -> Tensor:
    """A Gram with the same centring as the notebook's `gram_rbf` K = exp(−d/(2σ²)): K itself, or K − 1 (large σ),
    chosen by which has the smaller off-diagonal mean. ``scale_free`` (CKA only) allows a positive multiple of it
    (see the module docstring); without it the scale is HSIC's. ``d_min`` replaces the smallest off-diagonal
    distance of the unbiased scale-free form (minibatch CKA: one factor for all batches)."""
    d = sq_dists(x, dtype)
    lg = log_gamma(x, sigma, threshold, dtype)
    n = d.shape[0]
    off = ~torch.eye(n, dtype=torch.bool)
    if lg == -math.inf:
        return torch.zeros_like(d)
    d_max = float(d.detach().max()) if n > 1 else 0.0
    if scale_free and d_max > 0 and lg + math.log(d_max) < _LOG_GAMMA_LINEAR_LIMIT:
        return -d
    gamma = math.exp(lg) if lg < 700 else math.inf
    same = d.detach() == 0  # identical rows (the diagonal included): K = 1, K − 1 = 0 whatever γ (γ·0 is nan at γ = inf)
    if scale_free and unbiased and n > 1:
        # × exp(γ·d_min) on the off-diagonal (d_min a constant: the function, hence its gradient, is unchanged);
        # the diagonal, which the U-centring zeroes, stays at K = 1
        d = d - (d.detach()[off].min() if d_min is None else d_min)
    arg = torch.where(same, torch.zeros_like(d), -gamma * torch.where(same, torch.ones_like(d), d))
    k = torch.exp(arg)  # (not expm1 + 1: that rounds entries below 1e-16 to 0)
    use_m1 = bool(k.detach()[off].mean() >= 0.5) if n > 1 else True
    return torch.expm1(arg) if use_m1 else k


def center_gram(gram: Tensor, unbiased: bool = False) -> Tensor:
    """The notebook's `center_gram`: biased H K H via column means; unbiased: Song et al.'s U-centring."""
    gram = gram.clone()
    n = gram.shape[0]
    if unbiased:
        gram = gram * (1 - torch.eye(n, dtype=gram.dtype))
        means = gram.sum(0) / (n - 2)
        means = means - means.sum() / (2 * (n - 1))
        gram = gram - means[:, None] - means[None, :]
        gram = gram * (1 - torch.eye(n, dtype=gram.dtype))
    else:
        means = gram.mean(0)
        means = means - means.mean() / 2
        gram = gram - means[:, None] - means[None, :]
    return gram


def _grams(x: Tensor, y: Tensor, kernel: str, unbiased: bool, sigma, threshold: float, dtype: torch.dtype,
           scale_free: bool) -> Tuple[Tensor, Tensor]:
    sx, sy = sigma if isinstance(sigma, (tuple, list)) else (sigma, sigma)
    if kernel == "linear":
        return gram_linear(x, dtype), gram_linear(y, dtype)
    return (gram_rbf(x, sx, threshold, dtype, unbiased, scale_free),
            gram_rbf(y, sy, threshold, dtype, unbiased, scale_free))


def cka_of_grams(gx: Tensor, gy: Tensor, unbiased: bool = False) -> Tensor:
    """The notebook's `cka`: ⟨Kc, Lc⟩ / (‖Kc‖‖Lc‖) of the centred Grams, each scaled by its largest |entry| first
    (CKA is scale-invariant); 0 when either centred Gram is zero."""
    kc, lc = center_gram(gx, unbiased), center_gram(gy, unbiased)
    mk, ml = kc.detach().abs().max(), lc.detach().abs().max()
    if mk == 0 or ml == 0 or not (torch.isfinite(mk) and torch.isfinite(ml)):
        return torch.zeros((), dtype=gx.dtype) if (mk == 0 or ml == 0) else torch.full((), math.nan, dtype=gx.dtype)
    kc, lc = kc / mk, lc / ml
    return (kc * lc).sum() / (kc.norm() * lc.norm())


def cka(x: Tensor, y: Tensor, kernel: str = "linear", unbiased: bool = False, sigma=None, threshold: float = 1.0,
        dtype: torch.dtype = F64) -> Tensor:
    """CKA (debiased with ``unbiased``) of x, y in ``dtype``; differentiable in x and y (σ a constant)."""
    gx, gy = _grams(x, y, kernel, unbiased, sigma, threshold, dtype, scale_free=True)
    return cka_of_grams(gx, gy, unbiased)


def hsic_terms(x: Tensor, y: Tensor, kernel: str = "linear", unbiased: bool = False, sigma=None,
               threshold: float = 1.0, dtype: torch.dtype = F64) -> Tensor:
    """[HSIC(K,L), HSIC(K,K), HSIC(L,L)] at fastcka's scale: ⟨Kc, Lc⟩/(n−1)² (biased) or /(n(n−3)) (Song's HSIC₁)."""
    gx, gy = _grams(x, y, kernel, unbiased, sigma, threshold, dtype, scale_free=False)
    kc, lc = center_gram(gx, unbiased), center_gram(gy, unbiased)
    n = kc.shape[0]
    scale = n * (n - 3) if unbiased else (n - 1) ** 2
    return torch.stack([(kc * lc).sum(), (kc * kc).sum(), (lc * lc).sum()]) / scale


def minibatch_cka(xs, ys, kernel: str = "linear", sigma=None, dtype: torch.dtype = F64) -> Tensor:
    """Nguyen et al.'s minibatch CKA: Σ_b HSIC₁(K_b,L_b) / √(Σ_b HSIC₁(K_b,K_b)·Σ_b HSIC₁(L_b,L_b)); 0 when a sum is
    not positive. With σ given, each side's RBF Grams are scaled by one factor for all batches (exp(γ·d_min), d_min
    over every batch), which leaves the ratio unchanged and keeps a nearly diagonal kernel from underflowing."""
    sx, sy = sigma if isinstance(sigma, (tuple, list)) else (sigma, sigma)

    def grams(zs, s):
        if kernel == "linear":
            return [gram_linear(z, dtype) for z in zs]
        if s is None:
            return [gram_rbf(z, None, 1.0, dtype, True) for z in zs]
        off = [sq_dists(z, dtype)[~torch.eye(z.shape[0], dtype=torch.bool)] for z in zs]
        d_min = min(float(o.min()) for o in off)
        return [gram_rbf(z, s, 1.0, dtype, True, scale_free=True, d_min=d_min) for z in zs]

    tot = torch.zeros(3, dtype=dtype)
    for gx, gy in zip(grams(xs, sx), grams(ys, sy)):
        kc, lc = center_gram(gx, True), center_gram(gy, True)
        n = kc.shape[0]
        tot = tot + torch.stack([(kc * lc).sum(), (kc * kc).sum(), (lc * lc).sum()]) / (n * (n - 3))
    if tot[1] <= 0 or tot[2] <= 0:
        return torch.zeros((), dtype=dtype)
    return tot[0] / tot[1].sqrt() / tot[2].sqrt()  # not √(product): at input scales 1e±60 it under- or overflows

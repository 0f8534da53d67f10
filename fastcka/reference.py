"""Float64 plain-torch definitions: the ground truth every fastcka op is tested against.

Nothing here is fast. Every function converts its inputs to float64, forms the n×n matrices explicitly where the
definition does, and follows the paper's formula literally. Rows are examples: ``x`` has shape (n, ...) and is
flattened to (n, features).

Conventions shared with the fast ops (and stated in their docstrings):

* CKA of a representation whose self-HSIC is not positive (a constant representation, or a debiased self-HSIC
  estimate that came out ≤ 0) is defined as 0: such a representation carries no structure to align.
* The RBF bandwidth follows Kornblith et al. (2019): σ² = t² · median of the n² squared distances, the n zeros of
  the diagonal included, the median being numpy's (the mean of the two middle values for an even count).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import torch

from ._validation import renamed_options

Tensor = torch.Tensor

__all__ = [
    "as_matrix",
    "gram_linear",
    "squared_distances",
    "median_squared_distance",
    "rbf_sigma",
    "gram_rbf",
    "center_gram",
    "hsic0",
    "hsic1",
    "hsic",
    "cka_from_hsic",
    "cka",
    "cka_kornblith",
    "linear_cka",
    "rbf_cka",
    "feature_space_linear_hsic",
    "feature_space_linear_cka",
    "minibatch_cka",
    "frequency_spectrum",
    "key_frequencies",
    "frequency_concentration",
]


def as_matrix(x: Tensor) -> Tensor:
    """(n, ...) -> (n, features) in float64; a 1-D input is one feature per example."""
    x = torch.as_tensor(x)
    if x.dim() == 1:
        x = x[:, None]
    return x.reshape(x.shape[0], -1).to(torch.float64)


def gram_linear(x: Tensor) -> Tensor:
    """Linear kernel K = X Xᵀ (Kornblith et al. 2019, §3)."""
    x = as_matrix(x)
    return x @ x.T


def squared_distances(x: Tensor) -> Tensor:
    """‖xᵢ − xⱼ‖² for all pairs, from direct differences (no cancellation from ‖x‖² − 2x·y)."""
    x = as_matrix(x)
    rows = [((x[i : i + 256, None, :] - x[None, :, :]) ** 2).sum(-1) for i in range(0, x.shape[0], 256)]
    return torch.cat(rows, 0)


def median_squared_distance(x: Tensor) -> Tensor:
    """numpy's median over all n² squared distances, diagonal zeros included (Kornblith et al. 2019)."""
    d = squared_distances(x).flatten().sort().values
    m = d.numel()
    return d[m // 2] if m % 2 else 0.5 * (d[m // 2 - 1] + d[m // 2])


def rbf_sigma(x: Tensor, threshold: float = 1.0) -> Tensor:
    """σ = t · √(median squared distance): Kornblith et al.'s `gram_rbf(x, threshold)` bandwidth."""
    return threshold * median_squared_distance(x).sqrt()


def gram_rbf(x: Tensor, sigma: Optional[float] = None, threshold: float = 1.0) -> Tensor:
    """RBF kernel Kᵢⱼ = exp(−‖xᵢ − xⱼ‖² / (2σ²)); σ from the median heuristic when not given."""
    if sigma is None:
        sigma = rbf_sigma(x, threshold)
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    return torch.exp(-squared_distances(x) / (2 * sigma**2))


def center_gram(k: Tensor, unbiased: bool = False) -> Tensor:
    """Biased: H K H with H = I − 11ᵀ/n. Unbiased: the U-centring of Song et al. (2012), as written in
    Kornblith et al.'s `center_gram(unbiased=True)`: zero the diagonal, subtract row/column means over n − 2 with
    the grand-mean correction, zero the diagonal again, so that ⟨K̃, L̃⟩ / (n(n − 3)) = HSIC₁."""
    k = torch.as_tensor(k).to(torch.float64).clone()
    n = k.shape[0]
    if unbiased:
        k.fill_diagonal_(0)
        means = k.sum(0) / (n - 2)
        means = means - means.sum() / (2 * (n - 1))
        k = k - means[:, None] - means[None, :]
        k.fill_diagonal_(0)
        return k
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    return h @ k @ h


def hsic0(k: Tensor, l: Tensor) -> Tensor:
    """Biased HSIC (Gretton et al. 2005, eq. 4 with the 1/(n−1)² scale): tr(K H L H) / (n − 1)²."""
    k, l = torch.as_tensor(k).double(), torch.as_tensor(l).double()
    n = k.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    return torch.trace(k @ h @ l @ h) / (n - 1) ** 2


def hsic1(k: Tensor, l: Tensor) -> Tensor:
    """Unbiased HSIC (Song et al. 2012, eq. 5), with K̃, L̃ the Grams with zeroed diagonals:
    [tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1/((n−1)(n−2)) − 2/(n−2)·1ᵀK̃L̃1] / (n(n−3)). Needs n ≥ 4."""
    k, l = torch.as_tensor(k).double().clone(), torch.as_tensor(l).double().clone()
    n = k.shape[0]
    if n < 4:
        raise ValueError(f"unbiased HSIC needs n >= 4 examples, got n={n}")
    k.fill_diagonal_(0)
    l.fill_diagonal_(0)
    one = torch.ones(n, dtype=torch.float64)
    term1 = torch.trace(k @ l)
    term2 = (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
    term3 = 2.0 / (n - 2) * (one @ k @ l @ one)
    return (term1 + term2 - term3) / (n * (n - 3))


def hsic(k: Tensor, l: Tensor, unbiased: bool = False) -> Tensor:
    return hsic1(k, l) if unbiased else hsic0(k, l)


def cka_from_hsic(hxy: Tensor, hxx: Tensor, hyy: Tensor) -> Tensor:
    """CKA = HSIC(K,L)/√(HSIC(K,K)·HSIC(L,L)); 0 when a self-HSIC is not positive (see module docstring)."""
    if hxx <= 0 or hyy <= 0:
        return torch.zeros((), dtype=torch.float64)
    return hxy / (hxx * hyy).sqrt()


def cka(k: Tensor, l: Tensor, unbiased: bool = False) -> Tensor:
    """CKA of two Gram matrices (Kornblith et al. 2019, eq. 2); with ``unbiased`` the debiased CKA."""
    return cka_from_hsic(hsic(k, l, unbiased), hsic(k, k, unbiased), hsic(l, l, unbiased))


def cka_kornblith(k: Tensor, l: Tensor, unbiased: bool = False) -> Tensor:
    """The same CKA written as Kornblith et al.'s code does: centre both Grams, then a normalised inner product.
    An independent form used to check `cka`."""
    kc, lc = center_gram(k, unbiased), center_gram(l, unbiased)
    return (kc * lc).sum() / (kc.norm() * lc.norm())


def linear_cka(x: Tensor, y: Tensor, unbiased: bool = False) -> Tensor:
    return cka(gram_linear(x), gram_linear(y), unbiased)


def rbf_cka(
    x: Tensor,
    y: Tensor,
    sigma_x: Optional[float] = None,
    sigma_y: Optional[float] = None,
    threshold: float = 1.0,
    unbiased: bool = False,
) -> Tensor:
    return cka(gram_rbf(x, sigma_x, threshold), gram_rbf(y, sigma_y, threshold), unbiased)


def feature_space_linear_hsic(
    x: Tensor, y: Tensor, unbiased: bool = False, **deprecated: Any
) -> Tuple[Tensor, Tensor, Tensor]:
    """[HSIC(K,L), HSIC(K,K), HSIC(L,L)] for linear kernels without n×n matrices (Kornblith et al. 2019, eq. 3 and
    their `feature_space_linear_cka`): ‖YcᵀXc‖²_F/(n−1)² on column-centred features; the unbiased form (the
    debiased CKA's HSIC₁, Song et al.) adds the row-norm terms and divides by n(n−3). ``debiased=`` is the
    deprecated name of ``unbiased=``."""
    unbiased = renamed_options("feature_space_linear_hsic", deprecated, unbiased=("debiased", unbiased, False))
    x, y = as_matrix(x), as_matrix(y)
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    n = x.shape[0]
    xty = (x.T @ y).pow(2).sum()
    xtx = (x.T @ x).pow(2).sum()
    yty = (y.T @ y).pow(2).sum()
    if not unbiased:
        return xty / (n - 1) ** 2, xtx / (n - 1) ** 2, yty / (n - 1) ** 2
    rx, ry = (x * x).sum(1), (y * y).sum(1)
    sx, sy = rx.sum(), ry.sum()

    def debias(dot, ra, rb, sa, sb):
        return (dot - n / (n - 2.0) * (ra @ rb) + sa * sb / ((n - 1) * (n - 2))) / (n * (n - 3))

    return debias(xty, rx, ry, sx, sy), debias(xtx, rx, rx, sx, sx), debias(yty, ry, ry, sy, sy)


def feature_space_linear_cka(x: Tensor, y: Tensor, unbiased: bool = False, **deprecated: Any) -> Tensor:
    """Linear CKA from `feature_space_linear_hsic`: agrees with `linear_cka` without forming n×n matrices
    (``unbiased=True``: the debiased CKA). ``debiased=`` is the deprecated name of ``unbiased=``."""
    unbiased = renamed_options("feature_space_linear_cka", deprecated, unbiased=("debiased", unbiased, False))
    return cka_from_hsic(*feature_space_linear_hsic(x, y, unbiased))


def minibatch_cka(
    xs: Sequence[Tensor], ys: Sequence[Tensor], kernel: str = "linear", sigma: Optional[Tuple[float, float]] = None
) -> Tensor:
    """Minibatch CKA (Nguyen et al. 2021, eq. 4): Σ_b HSIC₁(K_b, L_b) / √(Σ_b HSIC₁(K_b,K_b) · Σ_b HSIC₁(L_b,L_b))."""

    def gram(z, s):
        return gram_linear(z) if kernel == "linear" else gram_rbf(z, s)

    sx, sy = (None, None) if sigma is None else sigma
    kl = kk = ll = torch.zeros((), dtype=torch.float64)
    for x, y in zip(xs, ys):
        k, l = gram(x, sx), gram(y, sy)
        kl, kk, ll = kl + hsic1(k, l), kk + hsic1(k, k), ll + hsic1(l, l)
    return cka_from_hsic(kl, kk, ll)


def _dft_energy(x: Tensor, dims: Tuple[int, ...]) -> Tensor:
    """|x̂|² with the FFT taken over ``dims`` (moved to the front), summed over every other dim."""
    x = torch.as_tensor(x).to(torch.float64)
    dims = tuple(d % x.dim() for d in dims)
    x = x.movedim(dims, tuple(range(len(dims))))
    xf = torch.fft.fftn(x, dim=tuple(range(len(dims))))
    e = xf.abs() ** 2
    return e.reshape(*e.shape[: len(dims)], -1).sum(-1)


Dim = Union[int, Tuple[int, int]]


def _dim(where: str, dim: Dim, deprecated: dict) -> Tuple[int, ...]:
    """The residue axes from ``dim`` (an int or a pair; ``dims=`` is its deprecated name)."""
    if "dims" in deprecated and deprecated["dims"] is None:
        deprecated.pop("dims")
    dim = renamed_options(where, deprecated, dim=("dims", dim, 0))
    return (dim,) if isinstance(dim, int) else tuple(dim)


def _by_discrete_log(x: Tensor, axes: Tuple[int, ...]) -> Tensor:
    """The multiplicative basis by brute force: the smallest g whose powers g⁰ … g^(p−2) mod p run through every
    residue 1 … p−1 (a primitive root, found by listing its powers), and each residue axis re-indexed in that order
    (residue 0 dropped). p must be an odd prime."""
    x = torch.as_tensor(x)
    p = x.shape[axes[0]]
    if p < 3 or any(p % q == 0 for q in range(2, p)):
        raise ValueError(f"basis='multiplicative' needs an odd prime number of residues, got {p}")
    for g in range(2, p):
        powers = [1]
        for _ in range(p - 2):
            powers.append(powers[-1] * g % p)
        if len(set(powers)) == p - 1:
            break
    order = torch.tensor(powers)
    for a in axes:
        x = x.index_select(a % x.dim(), order)
    return x


def frequency_spectrum(x: Tensor, dim: Dim = 0, basis: str = "additive", **deprecated: Any) -> Tensor:
    """Energy per Fourier frequency along a residue dim (Nanda et al. 2023, §4).

    1-D (``dim`` an int): e_k = Σ |x̂_k|² + |x̂_{p−k}|² for k = 1 … ⌊p/2⌋ (k and p − k are the cos and sin parts of one
    frequency; for even p the Nyquist term is counted once), e_0 = |x̂_0|², summed over all other dims. Returns
    ⌊p/2⌋ + 1 values.

    2-D (``dim=(da, db)``, a p×p grid of inputs (a, b)): the folded table E[k_a, k_b] for k_a, k_b = 0 … ⌊p/2⌋,
    each entry the energy of the four (±k_a, ±k_b) DFT coefficients (once where k = −k mod p).

    ``basis="multiplicative"``: the same on residues 1 … p−1 ordered by their discrete log to the smallest primitive
    root (p prime; p − 1 takes the place of p).
    """
    axes = _dim("frequency_spectrum", dim, deprecated)
    if basis == "multiplicative":
        x = _by_discrete_log(x, axes)
    elif basis != "additive":
        raise ValueError(f"unknown basis {basis!r}")
    e = _dft_energy(x, axes)
    p = e.shape[0]
    return _fold(_fold(e, p, 0), p, 1) if len(axes) == 2 else _fold(e, p, 0)


def _fold(e: Tensor, p: int, axis: int) -> Tensor:
    """Sum index k with p − k along ``axis`` (each k ≤ ⌊p/2⌋ once)."""
    half = p // 2
    e = e.movedim(axis, 0)
    out = e[: half + 1].clone()
    for k in range(1, half + 1):
        if p - k != k:
            out[k] = out[k] + e[p - k]
    return out.movedim(0, axis)


def _frequency_energy(x: Tensor, dim: Dim, basis: str = "additive") -> Tensor:
    """Energy of each non-constant frequency k = 1 … ⌊p/2⌋. For a grid, frequency k collects the entries of the
    folded table with k_a = k or k_b = k (each such entry once; a cross entry (k, k') with both non-zero counts
    towards both k and k')."""
    s = frequency_spectrum(x, dim=dim, basis=basis)
    if s.dim() == 1:
        return s[1:]
    return s[1:, :].sum(1) + s[:, 1:].sum(0) - s.diagonal()[1:]


def key_frequencies(x: Tensor, top_k: int, dim: Dim = 0, basis: str = "additive", **deprecated: Any) -> Tensor:
    """The ``top_k`` non-constant frequencies (1 … ⌊p/2⌋) with the most energy, most energetic first."""
    e = _frequency_energy(x, _dim("key_frequencies", dim, deprecated), basis)
    return e.topk(top_k).indices + 1


def frequency_concentration(x: Tensor, top_k: int, dim: Dim = 0, basis: str = "additive",
                            **deprecated: Any) -> Tensor:
    """Share of the non-constant energy held by the ``top_k`` strongest frequencies, in [0, 1]; 0 for an input
    with no non-constant energy. For a grid the shares of the frequencies are normalised by their own total, so a
    cross term (k_a, k_b) with both non-zero counts towards both of its frequencies."""
    e = _frequency_energy(x, _dim("frequency_concentration", dim, deprecated), basis)
    total = e.sum()
    if total <= 0:
        return torch.zeros((), dtype=torch.float64)
    return e.topk(top_k).values.sum() / total


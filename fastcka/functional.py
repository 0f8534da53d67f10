"""The public functions: validate the input, pick the path, call one op.

Shapes: ``x`` of shape (n, ...) and ``y`` of shape (n, ...) hold one example per row; everything after the first
dim is flattened, so (n, p), (n, seq, d) and (n, C, H, W) feature maps all work (a 4-D map becomes C·H·W features).

Dtypes: float32 and float64 compute in their own precision with float64 reductions; float16 and bfloat16 are
accepted and computed in float32 (the result is then float32). Mixed dtypes are promoted. Integer, bool and
complex inputs raise TypeError. Return dtype: `cka`, `hsic`, `cka_matrix` and `center_gram` return the compute
dtype (float64 if either input is float64, else float32); `hsic_terms` returns float64. Inside ``torch.autocast``
the ops compute in float32 (float64 input stays float64), so the same rules hold.

Options are keyword-only after the data arguments (``cka(x, y, kernel="rbf", unbiased=True)``); ``unbiased`` must
be a bool (TypeError otherwise).

Results are 0-d tensors on the input's device: nothing here reads a value back to the host, so the functions are
safe on a training step's hot path. NaN or Inf anywhere in the input gives NaN (checking would cost a host sync).
"""

from __future__ import annotations

import functools
from typing import List, Optional, Sequence, Tuple, Union

import torch

from ._ops import fops, ops
from ._validation import as_matrix as _as_matrix
from ._validation import check_flag

Tensor = torch.Tensor

KERNELS = ("linear", "rbf")
LINEAR_METHODS = {"auto": 0, "feature": 1, "sample": 2}
METHODS = tuple(LINEAR_METHODS) + ("tiled",)
_KERNEL_CODE = {"linear": 0, "rbf": 1}

Sigma = Union[None, float, Tensor, Tuple[Union[float, Tensor], Union[float, Tensor]]]

__all__ = ["hsic", "cka", "cka_matrix", "center_gram", "hsic_terms", "cka_from_terms", "rbf_gamma"]


def _compute_dtype(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    return torch.float64 if torch.float64 in (a, b) else torch.float32


def _prepare_pair(x: Tensor, y: Tensor, unbiased: bool) -> Tuple[Tensor, Tensor]:
    xm, ym = _as_matrix(x, "x"), _as_matrix(y, "y")
    if xm.device != ym.device:
        raise ValueError(f"x and y must be on the same device, got x on {xm.device} and y on {ym.device}")
    if xm.shape[0] != ym.shape[0]:
        raise ValueError(
            f"x and y must have the same number of examples (first dim): x has shape {tuple(x.shape)}, "
            f"y has shape {tuple(y.shape)}"
        )
    need = 4 if unbiased else 2
    if xm.shape[0] < need:
        kind = "the unbiased (debiased) estimator" if unbiased else "HSIC/CKA"
        raise ValueError(f"{kind} needs at least {need} examples, got n={xm.shape[0]}")
    dt = _compute_dtype(xm.dtype, ym.dtype)
    return xm.to(dt), ym.to(dt)


def _check_options(kernel: str, method: str, unbiased: bool, sigma: Sigma, threshold: float) -> bool:
    """The checks every public CKA/HSIC entry point shares; returns ``unbiased`` as a bool."""
    _check_kernel(kernel, method)
    _check_threshold(threshold)
    if kernel == "linear" and sigma is not None:
        raise ValueError(f"sigma is only used with kernel='rbf' (the linear kernel has no bandwidth), got sigma={sigma!r}")
    return check_flag(unbiased, "unbiased")


def _check_kernel(kernel: str, method: str) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; known kernels: {', '.join(KERNELS)}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    if kernel == "rbf" and method not in ("auto", "tiled"):
        raise ValueError(f"the rbf kernel is computed by the tiled pass: method must be 'auto' or 'tiled', got {method!r}")


def _sigma_pair(sigma: Sigma) -> Tuple:
    """(σx, σy) from None, one σ for both sides, or a pair."""
    if isinstance(sigma, (tuple, list)):
        if len(sigma) != 2:
            raise ValueError(f"sigma must be one value or a pair (sigma_x, sigma_y), got {len(sigma)} values")
        return tuple(sigma)
    return sigma, sigma


def _check_sigma(value, name: str) -> None:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar (pass a pair as a tuple), got a tensor of shape "
                             f"{tuple(value.shape)}")
        return  # a tensor σ is not read back to the host (no sync): rbf_gamma turns a bad one into NaN
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a positive float, got {type(value).__name__}")
    if not (value > 0 and value < float("inf")):
        raise ValueError(f"{name} must be positive and finite, got {value}")


# The accepted median-heuristic threshold t (σ = t·√median): at t = 10⁶ a pair at the median distance has
# K = exp(−1/(2t²)) within 5e-13 of 1, at t = 10⁻⁶ it has K = exp(−5·10¹¹) = 0; beyond these t² over- or
# underflows (1e200, 1e-200) and the kernel is a constant, so the CKA (0) would say nothing about the data.
THRESHOLD_RANGE = (1e-6, 1e6)


def _check_threshold(threshold) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold must be a float, got {type(threshold).__name__}")
    lo, hi = THRESHOLD_RANGE
    if not lo <= threshold <= hi:
        raise ValueError(f"threshold must be in [{lo:g}, {hi:g}] (σ = threshold·√median squared distance; outside "
                         f"this range the RBF kernel is numerically constant or the identity), got {threshold!r}")


def rbf_gamma(x: Tensor, *, sigma=None, threshold: float = 1.0) -> Tensor:
    """γ = 1/(2σ²) for one side as a float64 0-d tensor on x's device. With σ None, σ² = t²·median of the n²
    squared distances (Kornblith et al.'s heuristic, diagonal zeros included, computed exactly without storing
    them; t = ``threshold`` in [1e-6, 1e6], else ValueError); a median of 0 (more than half the pairs identical)
    gives γ = 0, a constant kernel. A float σ must be positive and finite (else ValueError); a tensor σ is not read
    back to the host, so a non-positive or non-finite one gives γ = NaN, hence a NaN result."""
    if sigma is not None:
        _check_sigma(sigma, "sigma")
        s = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(())
        ok = (s > 0) & torch.isfinite(s)
        return torch.where(ok, 0.5 / (s * s), torch.full_like(s, float("nan")))
    _check_threshold(threshold)
    return _gamma_of_median(ops.median_sq_dist(x), threshold)


def _gamma_of_median(med: Tensor, threshold: float) -> Tensor:
    """γ = 1/(2·threshold²·median), 0 for a median of 0 (a constant kernel); elementwise."""
    med = med * (threshold * threshold)
    return torch.where(med > 0, 0.5 / torch.where(med > 0, med, torch.ones_like(med)), torch.zeros_like(med))


def _rbf_gammas(mats: Sequence[Tensor], sigmas: Sequence, threshold: float) -> List[Tensor]:
    """rbf_gamma of each layer with its σ, detached; the layers without one take their medians in one op call
    (median_sq_dists: on the CPU two at a time, one thread each, at n ≤ 2¹⁴, where that is ~20 % faster)."""
    out: List[Optional[Tensor]] = [None if s is None else rbf_gamma(t, sigma=s) for t, s in zip(mats, sigmas)]
    todo = [i for i, s in enumerate(sigmas) if s is None]
    if todo:
        _check_threshold(threshold)
        meds = ops.median_sq_dists([mats[i] for i in todo])
        for k, i in enumerate(todo):
            out[i] = _gamma_of_median(meds[k], threshold)
    return [g.detach() for g in out]


def _unit_scaled(t: Tensor) -> Tensor:
    """A float64 layer times the exact power of two that brings its largest |entry| into [0.5, 1) (other dtypes, and
    a layer with no finite nonzero maximum, as they are), on the device: no host sync.

    For CKA only, where scaling a layer changes nothing (linear kernel; RBF with the median heuristic): HSICs come
    out in true units, a linear kernel's as the 4th power of the entries, and overflowed float64 for |x| ≳ 1e76 (CKA
    0 or NaN for 0.43) or lost digits in subnormals for |x| ≲ 1e-78; an RBF median, a squared distance, overflowed
    beyond |x| ~ 1e154. Nothing changes in between: the ops already normalise by a power of two, so the scaled layer
    gives the same bits. Gradients see the factor as a constant (it is one, almost everywhere)."""
    if t.dtype != torch.float64:  # float32's range to the 4th power fits float64 (and half is computed in float32)
        return t
    top = t.detach().abs().amax()
    _, e = torch.frexp(torch.where(torch.isfinite(top) & (top > 0), top, torch.ones_like(top)))  # top = m·2^e
    return t * torch.ldexp(torch.ones_like(top), -e.clamp(-1000, 1000))


def hsic_terms(
    x: Tensor,
    y: Tensor,
    *,
    kernel: str = "linear",
    unbiased: bool = False,
    method: str = "auto",
    sigma: Sigma = None,
    threshold: float = 1.0,
) -> Tensor:
    """float64 tensor [HSIC(K,L), HSIC(K,K), HSIC(L,L)]: the three numbers CKA is made of (options as in `cka`)."""
    return _terms(x, y, kernel, unbiased, method, sigma, threshold, scale_free=False)


def _terms(x: Tensor, y: Tensor, kernel: str, unbiased: bool, method: str, sigma: Sigma, threshold: float,
           scale_free: bool) -> Tensor:
    """hsic_terms; with ``scale_free`` (CKA, which is invariant to scaling either side) the layers of a linear kernel,
    or of an RBF kernel with the median heuristic (σ scales with the layer), are first brought to unit scale
    (_unit_scaled), so the terms are those of the scaled layers."""
    unbiased = _check_options(kernel, method, unbiased, sigma, threshold)
    xm, ym = _prepare_pair(x, y, unbiased)
    if scale_free and (kernel == "linear" or sigma is None):
        xm, ym = _unit_scaled(xm), _unit_scaled(ym)
    if kernel == "linear" and method != "tiled":
        return fops.linear_hsic(xm, ym, bool(unbiased), LINEAR_METHODS[method])
    if kernel == "rbf":
        gamma = torch.stack(_rbf_gammas([xm, ym], _sigma_pair(sigma), threshold))
    else:
        gamma = torch.zeros(2, dtype=torch.float64, device=xm.device)
    code = _KERNEL_CODE[kernel]
    return _tiled_terms(xm, ym, gamma, code, unbiased)


def _tiled_terms(xm: Tensor, ym: Tensor, gamma: Tensor, code: int, unbiased: bool) -> Tensor:
    h = fops.kernel_hsic(xm, ym, gamma, code, code, bool(unbiased))
    # The tiled pass clamps distances at 0 (a NaN one too) and exp(−γ·inf) is 0, so non-finite input would come out
    # finite and wrong; it gives NaN as on the other paths (checked on the device: no host sync). Each self-term
    # reads one side only, so it stays valid when only the other side is bad (cka_matrix's diagonal relies on it).
    fx, fy = torch.isfinite(xm).all(), torch.isfinite(ym).all()
    return torch.where(torch.stack([fx & fy, fx, fy]), h, torch.full_like(h, float("nan")))


def _gammas(kernel: str, mats: Sequence[Tensor], sigma, threshold: float) -> list:
    """One γ per layer (0 for the linear kernel, which ignores it)."""
    if kernel == "linear":
        return [torch.zeros((), dtype=torch.float64, device=t.device) for t in mats]
    return _rbf_gammas(mats, [sigma] * len(mats), threshold)


def hsic(
    x: Tensor,
    y: Tensor,
    *,
    kernel: str = "linear",
    unbiased: bool = False,
    method: str = "auto",
    sigma: Sigma = None,
    threshold: float = 1.0,
) -> Tensor:
    """Hilbert-Schmidt independence criterion between the representations ``x`` (n, ...) and ``y`` (n, ...).

    Biased (Gretton et al. 2005): tr(K H L H)/(n−1)². Unbiased (Song et al. 2012, ``unbiased=True``, n ≥ 4).
    ``method`` picks the linear-kernel path: "feature" (p×p Grams, O(n(p²+q²+pq))), "sample" (n×n Grams,
    O(n²(p+q))), "tiled" (the fused pass that never stores an n×n matrix) or "auto" (the cheaper of feature and
    sample). ``kernel="rbf"`` always runs the tiled pass; see `cka` for ``sigma`` and ``threshold``. At n ≤ 128 the
    unbiased estimator on every path also forms the float64 n×n Grams: where its one-pass moments cancel (a row far
    from the others, σ far above the median) the numerator comes from the U-centred Grams. On the CPU the linear
    paths also recompute such a pair from float64 copies of float32 input, and from the U-centred Grams up to
    n = 1024 (README, "Known limits").
    Returns a 0-d tensor on the input's device, differentiable: float64 for float64 input, else float32.
    """
    h = hsic_terms(x, y, kernel=kernel, unbiased=unbiased, method=method, sigma=sigma, threshold=threshold)
    return h[0].to(_compute_dtype(x.dtype, y.dtype))


def cka(
    x: Tensor,
    y: Tensor,
    *,
    kernel: str = "linear",
    unbiased: bool = False,
    method: str = "auto",
    sigma: Sigma = None,
    threshold: float = 1.0,
) -> Tensor:
    """Centered kernel alignment (Kornblith et al. 2019) between ``x`` (n, ...) and ``y`` (n, ...).

    CKA = HSIC(K,L)/√(HSIC(K,K)·HSIC(L,L)). The biased CKA lies in [0, 1]; with ``unbiased=True`` (the debiased CKA
    of Kornblith et al., Song et al.'s HSIC₁, n ≥ 4) it may dip slightly below 0 by estimator noise: it is reported
    as computed, never clamped at 0 (|CKA| ≤ 1 always: see :func:`cka_from_terms`). A representation with no
    variation (all rows equal), or whose debiased self-HSIC is not positive, has CKA 0 with anything, on every path.

    Invariant to orthogonal transforms and isotropic scaling of either side and to shifts (features are centred in
    float64 before any product, so a mean 10⁴ times the spread costs no digits in float32).

    ``kernel="rbf"``: Kᵢⱼ = exp(−‖xᵢ − xⱼ‖²/(2σ²)), computed by one fused tiled pass over the pairs i ≤ j that never
    stores K or L (O(n) memory: RBF CKA at n = 10⁵ fits in a few hundred MB). ``sigma``: a float for both sides, a
    pair (σx, σy), or None for Kornblith et al.'s heuristic σ² = threshold²·median of the n² squared distances
    (diagonal zeros included, computed exactly and storing none of them: one counting pass over a window bracketed
    by a seeded sample of pairs, radix selection where the window misses; it reads a few counts back to the host on
    CUDA, pass σ to avoid that). Gradients treat σ as a constant. ``threshold`` must lie in [1e-6, 1e6]
    (ValueError otherwise: beyond it the kernel is numerically constant or the identity). ``sigma`` with the linear
    kernel is a ValueError (it has no bandwidth); ``unbiased`` must be a bool (TypeError).

    Options are keyword-only. Returns a 0-d tensor on the input's device, differentiable, in the input's float
    dtype: float64 for float64 input, else float32 (float16/bfloat16 input is computed in float32).
    """
    h = _terms(x, y, kernel, unbiased, method, sigma, threshold, scale_free=True)
    return cka_from_terms(h).to(_compute_dtype(x.dtype, y.dtype))


def cka_from_terms(h: Tensor) -> Tensor:
    """h[..., 0] / √(h[..., 1]·h[..., 2]), within [−1, 1]; 0 where a self-HSIC h[..., 1] or h[..., 2] is not
    positive, NaN where any term is NaN (no host sync: the branches are `where`s).

    Both estimators are inner products (the biased one of H-centred Grams, the unbiased one of U-centred Grams,
    Székely & Rizzo 2014), so by Cauchy–Schwarz |CKA| ≤ 1 and a self-HSIC is ≥ 0: a value past ±1 is rounding (CKA
    of duplicated rows came out 1 + 6 ulp), and a negative self-HSIC is cancellation noise, which gives 0 like a
    zero one (two negative ones used to give a ratio: CKA(x, x) = −1)."""
    a, b = h[..., 1], h[..., 2]
    pos = (a > 0) & (b > 0)
    one = torch.ones_like(a)
    # √a·√b, not √(a·b): the product of two float64 HSICs of 1e200 overflows (CKA came out −0 for −0.117)
    denom = torch.sqrt(torch.where(pos, a, one)) * torch.sqrt(torch.where(pos, b, one))
    # 0·(sum) is 0 for finite terms and NaN as soon as one is NaN or infinite.
    fallback = 0.0 * (a + b + h[..., 0])
    return torch.where(pos, (h[..., 0] / denom).clamp(-1.0, 1.0), fallback)


def cka_matrix(
    xs: Sequence[Tensor],
    ys: Optional[Sequence[Tensor]] = None,
    *,
    kernel: str = "linear",
    unbiased: bool = False,
    method: str = "auto",
    sigma: Sigma = None,
    threshold: float = 1.0,
) -> Tensor:
    """CKA between every layer in ``xs`` and every layer in ``ys``: an (L, M) tensor; with ``ys`` None, xs against
    itself (symmetric, unit diagonal, one triangle computed). Layers may have different widths but must share n.

    Linear kernel: one op call on the device; every layer is centred once, its self-HSIC computed once, then one
    Gram product per pair. The RBF kernel (and ``method="tiled"``) runs the tiled pass once per pair, with each
    layer's σ (its exact median, for ``sigma=None``) computed once: L(L−1)/2 passes for ``ys=None``, L·M otherwise.
    Entry (i, j) equals ``cka(xs[i], ys[j], ...)``, with ``sigma=(σx, σy)`` σx for the ``xs`` and σy for the
    columns; with ``ys`` None a pair of σ is a ValueError (one list takes one σ, else the matrix would be neither
    symmetric nor have a unit diagonal). Returns an (L, M) tensor in the layers' promoted float dtype (float64 if any
    layer is float64, else float32). No autograd (differentiate `cka` on the pairs you need).
    """
    if isinstance(xs, torch.Tensor) or not isinstance(xs, (list, tuple)) or not xs:
        raise TypeError("xs must be a non-empty list or tuple of tensors (one per layer)")
    if ys is not None and (isinstance(ys, torch.Tensor) or not isinstance(ys, (list, tuple)) or not ys):
        raise TypeError("ys must be None or a non-empty list or tuple of tensors")
    unbiased = _check_options(kernel, method, unbiased, sigma, threshold)
    if ys is None and isinstance(sigma, (tuple, list)):
        raise ValueError(f"sigma={tuple(sigma)!r} is a pair (σx, σy), but with ys=None every layer is compared with "
                         "the same list: pass one sigma (or ys)")
    layers = list(xs) + ([] if ys is None else list(ys))
    names = [f"xs[{i}]" for i in range(len(xs))] + [f"ys[{j}]" for j in range(len(ys or []))]
    mats = [_as_matrix(t, name) for t, name in zip(layers, names)]
    for t, name, given in zip(mats, names, layers):  # same n and device as xs[0], enough examples
        if t.device != mats[0].device:
            raise ValueError(f"every layer must be on one device: {name} is on {t.device}, xs[0] on {mats[0].device}")
        if t.shape[0] != mats[0].shape[0]:
            raise ValueError(f"every layer needs the same number of examples (first dim): {name} has shape "
                             f"{tuple(given.shape)}, xs[0] has shape {tuple(layers[0].shape)}")
    _prepare_pair(mats[0], mats[0], unbiased)
    dt = functools.reduce(_compute_dtype, [t.dtype for t in mats])
    mats = [t.to(dt) for t in mats]
    if kernel == "linear" or sigma is None:  # CKA is invariant to scaling a layer: nothing over- or underflows
        mats = [_unit_scaled(t) for t in mats]
    mx, my = mats[: len(xs)], mats[len(xs):]
    if kernel == "linear" and method != "tiled":
        code = LINEAR_METHODS[method]
        cross = ops.linear_hsic_matrix(mx, my, bool(unbiased), code)
        if ys is None:
            self_x = self_y = cross.diagonal()
        else:  # one layer per call: the diagonal of a symmetric call would also cost every pair among the layers
            self_x = torch.stack([ops.linear_hsic_matrix([t], [], bool(unbiased), code)[0, 0] for t in mx])
            self_y = torch.stack([ops.linear_hsic_matrix([t], [], bool(unbiased), code)[0, 0] for t in my])
        h = torch.stack(torch.broadcast_tensors(cross, self_x[:, None], self_y[None, :]), -1)
        out = cka_from_terms(h)
        if ys is None:  # exactly 1 on the diagonal (0 for a constant layer), not 1 ± rounding
            eye = torch.eye(len(mx), dtype=torch.bool, device=out.device)
            out = torch.where(eye & (self_x > 0)[:, None], torch.ones_like(out), out)
        return out.to(dt)
    return _tiled_cka_matrix(mx, my, kernel, unbiased, sigma, threshold).to(dt)


def _tiled_cka_matrix(mx: list, my: list, kernel: str, unbiased: bool, sigma: Sigma, threshold: float) -> Tensor:
    """cka_matrix on the tiled pass: γ once per layer, one pass per pair (the upper triangle when ``my`` is empty
    and both sides take the same σ, mirrored; its diagonal is 1, or 0 for a layer with no positive self-HSIC)."""
    sx, sy = _sigma_pair(sigma)
    code = _KERNEL_CODE[kernel]
    gx = _gammas(kernel, mx, sx, threshold)
    symmetric = not my and (sx is sy or (isinstance(sx, (int, float)) and sx == sy))
    cols = my or mx
    gy = gx if symmetric else _gammas(kernel, cols, sy, threshold)
    terms = {}
    for i in range(len(mx)):
        for j in range(i + 1 if symmetric else 0, len(cols)):
            terms[i, j] = _tiled_terms(mx[i], cols[j], torch.stack([gx[i], gy[j]]), code, unbiased)
    if not symmetric:
        return torch.stack([torch.stack([cka_from_terms(terms[i, j]) for j in range(len(cols))])
                            for i in range(len(mx))])
    if len(mx) == 1:  # no pair to read the self-HSIC from
        terms[0, 0] = _tiled_terms(mx[0], mx[0], torch.stack([gx[0], gx[0]]), code, unbiased)
    self_h = [terms[i, i + 1][1] if i + 1 < len(mx) else terms[i - 1, i][2] if i else terms[0, 0][1]
              for i in range(len(mx))]
    one = lambda h: torch.where(h > 0, torch.ones_like(h), 0.0 * h)  # 0·h: NaN stays NaN
    entry = lambda i, j: one(self_h[i]) if i == j else cka_from_terms(terms[min(i, j), max(i, j)])
    return torch.stack([torch.stack([entry(i, j) for j in range(len(mx))]) for i in range(len(mx))])


def center_gram(k: Tensor, *, unbiased: bool = False, check_symmetric: bool = True) -> Tensor:
    """Centre a given Gram matrix in one fused pass (Kornblith et al.'s ``center_gram``).

    Biased: H K H (row, column and grand means). Unbiased: the U-centring of Song et al. (2012), so that
    ⟨center_gram(K, True), center_gram(L, True)⟩ / (n(n−3)) is the unbiased HSIC₁. Sums run in float64; the result
    has K's dtype (float32 for half input) and is differentiable (to any order: the op is linear and its adjoint is
    the same kernel). ``k`` must be square and symmetric: |K_ij − K_ji| ≤ 2·tol·max|K| (tol 1e-6 in float32, 1e-12 in
    float64), and no pair may differ by an infinite amount; NaN entries pass (NaN in, NaN out), and a matrix with a
    NaN entry has no finite max|K|, so then only infinite asymmetries are caught. The check reads one boolean back
    to the host; pass ``check_symmetric=False`` on a hot path.
    """
    if not isinstance(k, torch.Tensor):
        raise TypeError(f"k must be a torch.Tensor, got {type(k).__name__}")
    if k.is_complex() or not k.is_floating_point():
        raise TypeError(f"k must be a real floating-point tensor, got {k.dtype}")
    if k.dim() != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"k must be a square (n, n) Gram matrix, got shape {tuple(k.shape)}")
    unbiased = check_flag(unbiased, "unbiased")
    check_symmetric = check_flag(check_symmetric, "check_symmetric")
    n = k.shape[0]
    if n < (3 if unbiased else 1):
        raise ValueError(f"{'unbiased' if unbiased else 'biased'} centring needs n >= {3 if unbiased else 1}, "
                         f"got n={n}")
    # one contiguous copy (of K.T, say) shared by the check and the centring, which would each make their own
    # (.to ignores memory_format when the dtype already matches, hence the .contiguous() as well)
    kk = k.to(torch.float64 if k.dtype == torch.float64 else torch.float32,
              memory_format=torch.contiguous_format).contiguous()
    if check_symmetric:
        tol = 1e-6 if kk.dtype == torch.float32 else 1e-12
        lo, hi = torch.aminmax(kk.detach())
        threshold = (2 * tol) * torch.maximum(hi.abs(), lo.abs()).double()  # NaN if K has a NaN: only infs count
        bad = ops.gram_asymmetric_pairs(kk.detach(), threshold)  # one read of each mirrored pair
        if bool(bad):  # the one host read
            raise ValueError(f"k must be symmetric (a Gram matrix); {int(bad)} of its {n * (n - 1) // 2} pairs "
                             "(K_ij, K_ji) differ by more than 2·tol·max|K|")
    return fops.center_gram(kk, 1 if unbiased else 0)

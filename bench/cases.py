"""Inputs, implementations and float64 references of every benchmark row, by family and case name.

The benchmark files time these callables; ``_memcase.py`` rebuilds one case in a fresh process to measure its peak
RSS. A case is a dict of tensors built from a seeded generator directly in the target dtype (no float64
temporaries that would raise the subprocess's memory baseline).
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Tuple

import torch

import fastcka
from fastcka import reference as ref

import peers

F32 = torch.float32
F64 = torch.float64

# ---------------------------------------------------------------------------------------------------------------
# linear CKA (issue 3)
# ---------------------------------------------------------------------------------------------------------------
LINEAR_SHAPES = {"n8192_p256": (8192, 256, 256), "n2048_p512": (2048, 512, 512), "n512_p4096": (512, 4096, 4096)}
SHIFT = 1.0e4  # the "mean 10⁴ times the spread" input: x = 10⁴ + N(0, 1)


def parse_shape(case: str) -> Tuple[int, int, int]:
    if case in LINEAR_SHAPES:
        return LINEAR_SHAPES[case]
    n, p = case.split("_")[:2]
    n, p = int(n[1:]), int(p[1:])
    return n, p, p


def correlated_pair(n: int, p: int, q: int, dtype=F32, device="cpu", seed: int = 0, shift: float = 0.0):
    """x ~ N(0, 1); y = x·W/√p + 0.5·noise (CKA ≈ 0.5–0.8, far from 0 and 1); ``shift`` added to every entry."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=g, dtype=dtype)
    w = torch.randn(p, q, generator=g, dtype=dtype) / math.sqrt(p)
    y = torch.addmm(torch.randn(n, q, generator=g, dtype=dtype), x, w, beta=0.5)
    del w
    if shift:
        x.add_(shift)
        y.add_(shift)
    return x.to(device), y.to(device)


def linear_path(n: int, p: int, q: int, device: str = "cpu") -> str:
    """The path fastcka's auto picks (csrc/include/fastcka/linear_hsic.h: use_sample_space, multiply counts with the
    self terms from column panels: 64 columns on the CPU, 1024 on CUDA)."""
    panel = 1024 if str(device).startswith("cuda") else 64
    self_terms = sum(d * d / 2 + d * min(panel, d) / 2 for d in (p, q))
    return "sample" if n * n * (p + q) < n * (p * q + self_terms) else "feature"


def linear_inputs(case: str, device="cpu", shift: float = 0.0) -> Dict[str, torch.Tensor]:
    n, p, q = parse_shape(case)
    x, y = correlated_pair(n, p, q, device=device, shift=shift)
    return {"x": x, "y": y}


def floor_inputs(d: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Centred copies for the floor: the GEMMs run on the same sizes as fastcka's, centring not charged."""
    return {"xc": d["x"] - d["x"].mean(0), "yc": d["y"] - d["y"].mean(0)}


def linear_floor(xc: torch.Tensor, yc: torch.Tensor, path: str):
    """The unavoidable GEMMs of a path: feature XcᵀYc, XcᵀXc, YcᵀYc; sample XcXcᵀ, YcYcᵀ (input precision)."""
    if path == "feature":
        return torch.mm(xc.T, yc), torch.mm(xc.T, xc), torch.mm(yc.T, yc)
    return torch.mm(xc, xc.T), torch.mm(yc, yc.T)


def torch_feature_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The plain-torch feature-space formula a user writes (Kornblith et al. eq. 3), in the input dtype."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    return (yc.T @ xc).square().sum() / (torch.linalg.norm(xc.T @ xc) * torch.linalg.norm(yc.T @ yc))


def kornblith_center(k: torch.Tensor) -> torch.Tensor:
    means = k.mean(0)
    means = means - means.mean() / 2
    return k - means[:, None] - means[None, :]


def torch_gram_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The plain-torch sample-space formula (Kornblith et al.'s gram_linear + center_gram + cka), input dtype."""
    kc, lc = kornblith_center(x @ x.T), kornblith_center(y @ y.T)
    return (kc * lc).sum() / (torch.linalg.norm(kc) * torch.linalg.norm(lc))


LINEAR_IMPLS: Dict[str, Callable] = {
    "fastcka": lambda x, y: fastcka.cka(x, y),
    "fastcka_unbiased": lambda x, y: fastcka.cka(x, y, unbiased=True),
    "torch_feature": torch_feature_cka,
    "torch_gram": torch_gram_cka,
    **{p: peers.linear_adapter(p) for p in peers.PEERS},
}
UNBIASED_IMPLS = {"fastcka_unbiased", "cka_pytorch", "torch_cka"}


def linear_reference(x: torch.Tensor, y: torch.Tensor, unbiased: bool) -> float:
    """float64 reference on the exact input values (upcast), in the cheaper of the two reference forms. The float64
    copies are centred first (linear CKA, biased and debiased, is shift invariant): the explicit-Gram reference on
    uncentred x + 10⁴ loses ~1e-5 to cancellation even in float64."""
    n, p = x.shape
    q = y.shape[1]
    xd, yd = x.double(), y.double()
    xd, yd = xd - xd.mean(0), yd - yd.mean(0)
    if linear_path(n, p, q) == "feature" or n > 2048:
        return float(ref.feature_space_linear_cka(xd, yd, unbiased=unbiased))
    return float(ref.linear_cka(xd, yd, unbiased))


# ---------------------------------------------------------------------------------------------------------------
# RBF CKA (issue 4)
# ---------------------------------------------------------------------------------------------------------------
RBF_SHAPES = {"n8192_p256": (8192, 256, 256), "n2048_p256": (2048, 256, 256), "n100000_p64": (100000, 64, 64)}


def rbf_inputs(case: str, device="cpu", shift: float = 0.0) -> Dict[str, torch.Tensor]:
    n, p, q = RBF_SHAPES.get(case) or parse_shape(case)
    x, y = correlated_pair(n, p, q, device=device, shift=shift)
    return {"x": x, "y": y}


def _sq_dist(x: torch.Tensor) -> torch.Tensor:
    sq = x.square().sum(1)
    return (sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)).clamp_min_(0)


def _kth(d: torch.Tensor) -> torch.Tensor:
    """numpy's median of all entries (mean of the two middle values for an even count)."""
    flat = d.flatten()
    m = flat.numel()
    if m % 2:
        return flat.kthvalue(m // 2 + 1).values
    lo = flat.kthvalue(m // 2).values
    hi = flat.kthvalue(m // 2 + 1).values
    return (lo + hi) / 2


def torch_rbf_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Plain torch, explicit n×n Grams in the input dtype: squared distances from the Gram (‖x‖² + ‖y‖² − 2x·y),
    σ² = median over all n² entries (Kornblith et al.), exp, Kornblith's centring, normalised inner product."""
    def gram(z):
        d = _sq_dist(z)
        return torch.exp(d / (-2.0 * _kth(d)))

    kc, lc = kornblith_center(gram(x)), kornblith_center(gram(y))
    return (kc * lc).sum() / (torch.linalg.norm(kc) * torch.linalg.norm(lc))


def rbf_floor(x: torch.Tensor, y: torch.Tensor):
    """The GEMMs the tiles need: X·Xᵀ and Y·Yᵀ (input precision)."""
    return torch.mm(x, x.T), torch.mm(y, y.T)


def rbf_reference(x: torch.Tensor, y: torch.Tensor) -> float:
    """float64 biased RBF CKA from O(n) sums (no n×n H products): HSIC₀ = [ΣKL − 2/n r_K·r_L + S_K S_L/n²]/(n−1)²,
    σ² = median of all n² squared distances (diagonal zeros included). Squared distances in float64 from the Gram
    form, clamped at 0; matches reference.rbf_cka to ~1e-12 on unshifted data (checked at n=512)."""
    def gram(z):
        z = z.double()
        d = _sq_dist(z)
        return torch.exp(d / (-2.0 * _kth(d)))

    k = gram(x)
    l = gram(y)
    n = k.shape[0]
    rk, rl = k.sum(1), l.sum(1)
    sk, sl = rk.sum(), rl.sum()

    def h(a, b, ra, rb, sa, sb):
        return (a * b).sum() - 2.0 / n * (ra @ rb) + sa * sb / n**2

    kl = h(k, l, rk, rl, sk, sl)
    kk = h(k, k, rk, rk, sk, sk)
    ll = h(l, l, rl, rl, sl, sl)
    return float(kl / (kk * ll).sqrt())


def fastcka_rbf_available() -> Tuple[bool, str]:
    try:
        x = torch.randn(8, 3)
        fastcka.cka(x, x, kernel="rbf")
        return True, ""
    except NotImplementedError as e:
        return False, f"fastcka RBF not landed yet ({e})"
    except Exception as e:  # noqa: BLE001
        return False, f"fastcka RBF failed: {type(e).__name__}: {e}"


RBF_IMPLS: Dict[str, Callable] = {
    "fastcka": lambda x, y: fastcka.cka(x, y, kernel="rbf"),
    "torch_gram": torch_rbf_cka,
    "ckatorch": peers.rbf_adapter("ckatorch"),
    "repsim": peers.rbf_adapter("repsim"),
}


# ---------------------------------------------------------------------------------------------------------------
# one entry point for the benchmark files and _memcase.py
# ---------------------------------------------------------------------------------------------------------------
_PREPARERS: Dict[str, Callable] = {}


def preparer(family: str):
    def deco(f):
        _PREPARERS[family] = f
        return f

    return deco


def prepare(family: str, case: str, impl: str, device: str = "cpu") -> Callable[[], object]:
    """Build the inputs of (family, case) on ``device`` and return a no-argument callable running ``impl`` once."""
    return _PREPARERS[family](case, impl, device)


@preparer("linear")
def _prepare_linear(case: str, impl: str, device: str):
    d = linear_inputs(case, device)
    if impl == "floor":
        f = floor_inputs(d)
        del d
        path = linear_path(*parse_shape(case), device=device)
        return lambda: linear_floor(f["xc"], f["yc"], path)
    fn = LINEAR_IMPLS[impl]
    return lambda: fn(d["x"], d["y"])


@preparer("rbf")
def _prepare_rbf(case: str, impl: str, device: str):
    d = rbf_inputs(case, device)
    if impl == "floor":
        return lambda: rbf_floor(d["x"], d["y"])
    fn = RBF_IMPLS[impl]
    return lambda: fn(d["x"], d["y"])

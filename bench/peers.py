"""Thin adapters: each peer package's CKA called on the same (x, y) tensors as fastcka.

The peers are benchmark-only (bench/requirements.txt, installed with ``pip install --no-deps`` so they cannot
change torch). Each adapter calls the computation the package's users get, nothing rewritten:

* ckatorch 1.0.3   ``ckatorch.cka_base(x, y, kernel, unbiased)``: casts to float64, builds both n×n Grams, centres
                   them (Kornblith et al.'s ``center_gram``), Frobenius inner products. Linear and RBF.
* cka-pytorch 1.1.3 the HSIC math of ``CKACalculator``: ``gram(x) = x xᵀ`` in the input dtype, the batched
                   unbiased ``hsic1`` for the cross and the two self terms, and ``_compute_final_cka``'s
                   ``hsic_xy / sqrt(hsic_xx·hsic_yy + 1e-4)`` (its default epsilon). Linear kernel, debiased only.
* torch-cka 0.21   the loop body of ``CKA.compare`` on one batch: ``K = X Xᵀ`` with a zeroed diagonal, three calls
                   of ``CKA._HSIC`` (Song et al.'s unbiased estimator with ``.item()`` host reads), then
                   ``hsic_xy / (√hsic_xx·√hsic_yy)``. Linear kernel, debiased only.
* repsim 0.1.5     ``repsim.cka([x, y], kernel_type, estimator)``: NumPy → float64 Eigen (C++, one thread),
                   n×n Grams; the ``gretton`` (biased) and ``song`` (unbiased) estimators.

cka-pytorch's and torch-cka's classes hook modules and read DataLoaders; the adapters call the same functions on
the tensors directly (one batch = the full data set), so no hook or loader overhead is charged to them.
"""

from __future__ import annotations

import importlib
from typing import Callable, Dict, Optional, Tuple

import torch

PEERS = ("ckatorch", "cka_pytorch", "torch_cka", "repsim")
# which estimator each peer computes for linear CKA (peers with one estimator only)
PEER_ESTIMATOR = {"ckatorch": "biased", "cka_pytorch": "unbiased", "torch_cka": "unbiased", "repsim": "biased"}
PEER_KERNELS = {"ckatorch": ("linear", "rbf"), "cka_pytorch": ("linear",), "torch_cka": ("linear",),
                "repsim": ("linear", "rbf")}
PYPI_NAME = {"ckatorch": "ckatorch", "cka_pytorch": "cka-pytorch", "torch_cka": "torch-cka", "repsim": "repsim"}


def available(peer: str) -> Tuple[bool, str]:
    """(importable, reason)."""
    try:
        importlib.import_module(peer)
        return True, ""
    except Exception as e:  # ImportError or an import-time failure of the package itself
        return False, f"{PYPI_NAME[peer]} not importable ({type(e).__name__}: {e}); pip install --no-deps -r bench/requirements.txt"


def ckatorch_cka(x: torch.Tensor, y: torch.Tensor, kernel: str = "linear", unbiased: bool = False) -> torch.Tensor:
    import ckatorch

    return ckatorch.cka_base(x, y, kernel=kernel, unbiased=unbiased)


def cka_pytorch_cka(x: torch.Tensor, y: torch.Tensor, epsilon: float = 1e-4) -> torch.Tensor:
    from cka_pytorch.hsic import hsic1
    from cka_pytorch.utils import gram

    gx, gy = gram(x.flatten(1))[None], gram(y.flatten(1))[None]
    hxy, hxx, hyy = hsic1(gx, gy), hsic1(gx, gx), hsic1(gy, gy)
    return (hxy / torch.sqrt(hxx * hyy + epsilon))[0]


class _TorchCkaStub:
    def __init__(self, device):
        self.device = device


def torch_cka_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    from torch_cka import CKA

    stub = _TorchCkaStub(x.device)
    X, Y = x.flatten(1), y.flatten(1)
    K = X @ X.t()
    K.fill_diagonal_(0.0)
    L = Y @ Y.t()
    L.fill_diagonal_(0)
    hkk = CKA._HSIC(stub, K, K)
    hkl = CKA._HSIC(stub, K, L)
    hll = CKA._HSIC(stub, L, L)
    # compare() stores the three numbers in a float32 tensor, then hsic_kl / (√hsic_kk · √hsic_ll)
    h = torch.tensor([hkk, hkl, hll], dtype=torch.float32)
    return h[1] / (h[0].sqrt() * h[2].sqrt())


def repsim_cka(x: torch.Tensor, y: torch.Tensor, kernel: str = "linear", unbiased: bool = False) -> torch.Tensor:
    import repsim

    m = repsim.cka([x.detach().cpu().numpy(), y.detach().cpu().numpy()], kernel_type=kernel,
                   estimator="song" if unbiased else "gretton")
    return torch.tensor(m[0, 1], dtype=torch.float64)


def linear_adapter(peer: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return {
        "ckatorch": lambda x, y: ckatorch_cka(x, y, "linear", False),
        "cka_pytorch": cka_pytorch_cka,
        "torch_cka": torch_cka_cka,
        "repsim": lambda x, y: repsim_cka(x, y, "linear", False),
    }[peer]


def rbf_adapter(peer: str) -> Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    return {
        "ckatorch": lambda x, y: ckatorch_cka(x, y, "rbf", False),
        "repsim": lambda x, y: repsim_cka(x, y, "rbf", False),
    }.get(peer)

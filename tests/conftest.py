"""Shared test helpers: seeded generators, the float32 tolerance rule, and device parametrisation."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("FASTCKA_TEST_THREADS", "2")))

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", default=False,
                     help="run the fuzz suite (tests/test_fuzz.py) with many more examples than the CI default")


def rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed: int, dtype=torch.float64, device="cpu") -> torch.Tensor:
    return torch.randn(*shape, generator=rng(seed), dtype=torch.float64).to(dtype=dtype, device=device)


def correlated_pair(n: int, p: int, q: int, seed: int, dtype=torch.float64, device="cpu"):
    """x, y with a shared low-rank component, so CKA is well inside (0, 1)."""
    g = rng(seed)
    z = torch.randn(n, 3, generator=g, dtype=torch.float64)
    x = z @ torch.randn(3, p, generator=g, dtype=torch.float64) + 0.7 * torch.randn(n, p, generator=g, dtype=torch.float64)
    y = z @ torch.randn(3, q, generator=g, dtype=torch.float64) + 0.7 * torch.randn(n, q, generator=g, dtype=torch.float64)
    return x.to(dtype=dtype, device=device), y.to(dtype=dtype, device=device)


def plain_torch_linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The formula a user would write, in the input's own precision: the yardstick of DESIGN §4's float32 rule."""
    x = x.reshape(x.shape[0], -1)
    y = y.reshape(y.shape[0], -1)
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    return torch.linalg.norm(y.T @ x) ** 2 / (torch.linalg.norm(x.T @ x) * torch.linalg.norm(y.T @ y))


def float32_tolerance(ref: float, plain_value: float, floor: float = 1e-6) -> float:
    """Ours must be within 2× the plain float32 implementation's own error, or an absolute floor."""
    return max(2.0 * abs(plain_value - ref), floor)


@pytest.fixture
def one_thread():
    """Tiny tensors: one intra-op thread is faster, and immune to the other processes sharing the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param

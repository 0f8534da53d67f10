"""Checks that only a real GPU can make (run by `make gpu-check`; skipped without CUDA): no host synchronisation on
the ops' hot path, and float32 products: IEEE by default, following a global TF32 setting as documented, except in
the kernel-HSIC passes, which ignore it."""

from __future__ import annotations

import contextlib

import pytest
import torch

import fastcka
import fastcka.reference as R
from conftest import correlated_pair

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run by `make gpu-check`)")


@contextlib.contextmanager
def sync_is_an_error():
    """torch raises on any synchronising CUDA call (a blocking copy, .item(), a stream synchronize) inside."""
    torch.cuda.synchronize()
    old = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(old)


@pytest.mark.parametrize("n", [100, 300])  # 300 > 255: the shift's row subset (column_medians) is indexed
@pytest.mark.parametrize("unbiased", [False, True])
def test_raw_ops_do_not_sync(n, unbiased):
    """kernel_hsic with γ given, its backward and linear_hsic: every result stays on the device (DESIGN §3)."""
    x, y = correlated_pair(n, 16, 8, seed=n, dtype=torch.float32, device="cuda")
    gamma = torch.tensor([0.05, 0.1], dtype=torch.float64, device="cuda")
    grad = torch.tensor([1.0, -0.5, 0.25], dtype=torch.float64, device="cuda")
    ops = torch.ops.fastcka
    with sync_is_an_error():
        h = ops.kernel_hsic(x, y, gamma, 1, 1, unbiased)
        dx, dy = ops._kernel_hsic_backward(grad, x, y, gamma, 1, 1, unbiased)
        lin = ops.linear_hsic(x, y, unbiased, 0)
        dlx, dly = ops._linear_hsic_backward(grad, x, y, unbiased, 0)
    torch.cuda.synchronize()
    assert torch.isfinite(torch.cat([h, lin, dx.flatten(), dy.flatten(), dlx.flatten(), dly.flatten()])).all()


def test_cka_with_sigma_given_does_not_sync():
    x, y = correlated_pair(300, 16, 8, seed=1, dtype=torch.float32, device="cuda")
    sigma = torch.tensor(2.0, device="cuda")
    with sync_is_an_error():
        out = fastcka.cka(x, y, kernel="rbf", sigma=sigma)
        lin = fastcka.cka(x, y)
    assert out.device.type == "cuda" and lin.device.type == "cuda"


@pytest.fixture
def tf32_on():
    """TF32 enabled globally, as a user after `torch.set_float32_matmul_precision("high")`."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    yield
    torch.backends.cuda.matmul.allow_tf32 = old[0]
    torch.set_float32_matmul_precision(old[1])


@pytest.mark.parametrize("method", ["feature", "sample"])
def test_float32_products_are_ieee_by_default(method):
    """PyTorch's default float32 matmul precision is IEEE ("highest"): the linear Grams then give float32 accuracy."""
    assert torch.get_float32_matmul_precision() == "highest" and not torch.backends.cuda.matmul.allow_tf32
    x, y = correlated_pair(512, 300, 200, seed=3)
    ref = R.linear_cka(x, y).item()
    got = fastcka.cka(x.float().cuda(), y.float().cuda(), method=method).item()
    assert abs(got - ref) <= 2e-5 * abs(ref)
    grams = fastcka.cka_matrix([x.float().cuda()] * 2, [y.float().cuda()])
    assert abs(grams[0, 0].item() - ref) <= 2e-5 * abs(ref)


@pytest.mark.parametrize("method", ["feature", "sample"])
def test_float32_products_follow_a_global_tf32_setting(tf32_on, method):
    """Documented choice (README, `cka`): the GEMMs go through ATen matmul, so a user who turns TF32 on globally gets
    TF32 products in fastcka's float32 ops too (10-bit mantissas: errors ~1e-3), and float64 input stays exact. The
    stable ABI has no per-call precision switch; upcasting every float32 product to float64 would cost 32× on GPUs
    without fast FP64. This pins the documented behaviour: close to float32 accuracy, never garbage."""
    x, y = correlated_pair(512, 300, 200, seed=3)
    ref = R.linear_cka(x, y).item()
    got = fastcka.cka(x.float().cuda(), y.float().cuda(), method=method).item()
    assert abs(got - ref) <= 1e-2 * abs(ref)
    exact = fastcka.cka(x.cuda(), y.cuda(), method=method).item()
    assert abs(exact - ref) <= 1e-9


def test_kernel_hsic_products_ignore_tf32(tf32_on):
    """The kernel-HSIC passes run their GEMMs on cuBLAS in the input precision (csrc/ops/cuda/blas.cuh), not through
    ATen's matmul: their squared distances are trusted from a float32 error bound (and the linear kernel's entries are
    the products), which a TF32 product would break. So the forward values and the gradients are bit-for-bit those
    with TF32 off (the passes are deterministic), for RBF and linear kernels, across several row blocks (n = 3000)."""
    x, y = correlated_pair(3000, 300, 40, seed=6, dtype=torch.float32, device="cuda")
    x[100:130] = x[100] + 1e3  # equal rows far out: distances recomputed by the guard
    gamma = torch.tensor([0.5 / 300, 0.5 / 40], dtype=torch.float64, device="cuda")
    grad = torch.tensor([1.0, -0.5, 0.25], dtype=torch.float64, device="cuda")
    ops = torch.ops.fastcka
    runs = []
    for allow in (True, False):
        torch.backends.cuda.matmul.allow_tf32 = allow
        torch.set_float32_matmul_precision("high" if allow else "highest")
        runs.append([ops.kernel_hsic(x, y, gamma, 1, 0, True), *ops._kernel_hsic_backward(grad, x, y, gamma, 1, 0, True),
                     ops.kernel_hsic(x, y, gamma, 0, 0, False)])
    for with_tf32, without in zip(*runs):
        assert torch.equal(with_tf32, without)
    ref = R.hsic(torch.exp(-0.5 / 300 * R.squared_distances(x.double().cpu())), R.gram_linear(y.double().cpu()), True)
    assert abs(runs[1][0][0].item() - ref.item()) <= 1e-5 * abs(ref.item())


def test_raw_ops_refuse_arguments_on_another_device():
    """The dispatcher picks the CUDA kernel when any argument is on CUDA: y or grad on the CPU must be refused, not
    read through a host pointer on the device."""
    x, y = correlated_pair(40, 4, 3, seed=2, device="cuda")
    gamma = torch.tensor([0.5, 0.5], dtype=torch.float64, device="cuda")
    grad = torch.ones(3, dtype=torch.float64)
    ops = torch.ops.fastcka
    with pytest.raises(RuntimeError, match="y must be on the same device as x"):
        ops.linear_hsic(x, y.cpu(), False, 0)
    with pytest.raises(RuntimeError, match="y must be on the same device as x"):
        ops.kernel_hsic(x, y.cpu(), gamma, 1, 1, False)
    with pytest.raises(RuntimeError, match="grad must be on the same device as x"):
        ops._linear_hsic_backward(grad, x, y, False, 0)
    with pytest.raises(RuntimeError, match="grad must be on the same device as x"):
        ops._kernel_hsic_backward(grad, x, y, gamma, 1, 1, False)

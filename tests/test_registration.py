"""Every fastcka op is registered with the dispatcher with a CPU kernel and, in a CUDA build, a CUDA kernel.

The list of ops lives in one place (fastcka._ops.OP_NAMES): a new op without a CUDA kernel fails the CUDA build
check of CI (`make cuda-check`, which sets FASTCKA_EXPECT_CUDA=1)."""

import os

import pytest
import torch

import fastcka
from fastcka._ops import OP_NAMES


@pytest.mark.skipif(os.environ.get("FASTCKA_EXPECT_CUDA") != "1", reason="not a CUDA build check")
def test_checks_the_installed_build():
    assert "site-packages" in fastcka.__file__, fastcka.__file__


@pytest.mark.parametrize("name", OP_NAMES)
def test_op_has_cpu_kernel_and_schema(name):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastcka::{name}", "CPU")
    assert getattr(torch.ops.fastcka, name).default._schema.name == f"fastcka::{name}"


@pytest.mark.skipif(os.environ.get("FASTCKA_EXPECT_CUDA") != "1", reason="not a CUDA build check")
@pytest.mark.parametrize("name", OP_NAMES)
def test_op_has_cuda_kernel(name):
    assert torch.version.cuda, "the CUDA build check must run against a CUDA build of torch"
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastcka::{name}", "CUDA")


def test_every_registered_op_is_listed():
    """No op escapes the list (and so the CUDA check): compare with what the library registered."""
    registered = {s.name.split("::", 1)[1] for s in torch._C._jit_get_all_schemas() if s.name.startswith("fastcka::")}
    assert registered == set(OP_NAMES)

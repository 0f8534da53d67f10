"""Loads the compiled extension and registers, for every fastcka op, its fake kernel (shapes for torch.compile and
meta tensors), its autograd formula (a call to the op's own `_<op>_backward` schema), its autocast rule and a vmap
rule; and builds `fops`, the differentiable ops in a form torch.func transforms (grad, jacrev, vjp, vmap) accept
as well. The public functions call `fops`."""

from __future__ import annotations

import types
from typing import Callable

import torch

try:
    from . import _C  # noqa: F401  (importing the library registers the ops with the dispatcher)
except ImportError as e:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "fastcka's compiled extension (fastcka._C) is missing: install with "
        "`pip install --no-build-isolation -e .` in an environment that has torch (see README)."
    ) from e

ops = torch.ops.fastcka

# Every public op; CI checks that each has a CPU and a CUDA kernel registered (tests/test_registration.py).
OP_NAMES = (
    "linear_hsic",
    "_linear_hsic_backward",
    "linear_hsic_matrix",
    "kernel_hsic",
    "_kernel_hsic_backward",
    "median_sq_dist",
    "median_sq_dists",
    "center_gram",
    "gram_asymmetric_pairs",
    "frequency_spectrum",
    "_frequency_spectrum_backward",
)


def _no_setup(ctx, inputs, output) -> None:
    pass


def _double_backward_raiser(name: str) -> Callable:
    def _raise(ctx, *grads):
        raise RuntimeError(f"double backward through fastcka::{name} is not implemented")

    return _raise


def _block_double_backward(name: str) -> None:
    """The backward ops have no derivative of their own: differentiating them raises instead of silently
    returning zeros."""
    torch.library.register_autograd(f"fastcka::{name}", _double_backward_raiser(name), setup_context=_no_setup)


def _function(name: str, setup_context: Callable, backward: Callable) -> Callable:
    """fastcka::<name>, callable as the op, that torch.func transforms accept: the autograd the op registers is a
    `torch.autograd.Function` in the form torch.func refuses, so under an active transform the call goes through
    an equivalent Function in the form it needs (forward without ctx, a separate setup_context, a vmap rule
    generated from the op's own) with the same ``setup_context`` and ``backward`` the op registers. Otherwise
    (plain autograd, torch.compile) it is the op itself."""
    op = getattr(ops, name)

    def jvp(ctx, *tangents):
        raise NotImplementedError(f"fastcka::{name} has no forward-mode derivative (torch.func.jvp, jacfwd, hessian): "
                                  "use reverse mode (torch.func.grad, vjp, jacrev)")

    function = type(f"{name}_function", (torch.autograd.Function,), {
        "generate_vmap_rule": True,
        "forward": staticmethod(lambda *args: op(*args)),
        "setup_context": staticmethod(setup_context),
        "backward": staticmethod(backward),
        "jvp": staticmethod(jvp),
    })

    def call(*args):
        if not torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active():
            return function.apply(*args)
        return op(*args)

    return call


def _first_order(name: str) -> Callable:
    """A backward op whose own derivative raises (as `_block_double_backward` does for the op), under torch.func
    transforms too."""
    return _function(name, _no_setup, _double_backward_raiser(name))


# --- linear_hsic ----------------------------------------------------------------------------------------------------
@torch.library.register_fake("fastcka::linear_hsic")
def _linear_hsic_fake(x, y, unbiased, method):
    torch._check(x.dim() == 2 and y.dim() == 2)
    torch._check(x.shape[0] == y.shape[0])
    return x.new_empty((3,), dtype=torch.float64)


@torch.library.register_fake("fastcka::_linear_hsic_backward")
def _linear_hsic_backward_fake(grad, x, y, unbiased, method):
    return torch.empty_like(x), torch.empty_like(y)


def _linear_hsic_setup(ctx, inputs, output):
    x, y, unbiased, method = inputs
    ctx.save_for_backward(x, y)
    ctx.unbiased, ctx.method = unbiased, method


def _linear_hsic_bwd(ctx, grad):
    x, y = ctx.saved_tensors
    dx, dy = _LinearHSICBackward(grad.to(torch.float64).contiguous(), x, y, ctx.unbiased, ctx.method)
    return dx, dy, None, None


_LinearHSICBackward = _first_order("_linear_hsic_backward")


torch.library.register_autograd("fastcka::linear_hsic", _linear_hsic_bwd, setup_context=_linear_hsic_setup)
_block_double_backward("_linear_hsic_backward")


# --- frequency_spectrum ---------------------------------------------------------------------------------------------
@torch.library.register_fake("fastcka::frequency_spectrum")
def _frequency_spectrum_fake(x, method):
    torch._check(x.dim() in (2, 3))
    h = x.shape[0] // 2 + 1
    return x.new_empty((h,) if x.dim() == 2 else (h, h), dtype=torch.float64)


@torch.library.register_fake("fastcka::_frequency_spectrum_backward")
def _frequency_spectrum_backward_fake(grad, x, method):
    return torch.empty_like(x)


def _frequency_spectrum_setup(ctx, inputs, output):
    x, method = inputs
    ctx.save_for_backward(x)
    ctx.method = method


def _frequency_spectrum_bwd(ctx, grad):
    (x,) = ctx.saved_tensors
    return _FrequencySpectrumBackward(grad.to(torch.float64).contiguous(), x, ctx.method), None


_FrequencySpectrumBackward = _first_order("_frequency_spectrum_backward")


torch.library.register_autograd(
    "fastcka::frequency_spectrum", _frequency_spectrum_bwd, setup_context=_frequency_spectrum_setup
)
_block_double_backward("_frequency_spectrum_backward")


# --- kernel_hsic (the fused tiled pass) and median_sq_dist ----------------------------------------------------------
@torch.library.register_fake("fastcka::kernel_hsic")
def _kernel_hsic_fake(x, y, gamma, kernel_x, kernel_y, unbiased):
    torch._check(x.dim() == 2 and y.dim() == 2)
    torch._check(x.shape[0] == y.shape[0])
    return x.new_empty((3,), dtype=torch.float64)


@torch.library.register_fake("fastcka::_kernel_hsic_backward")
def _kernel_hsic_backward_fake(grad, x, y, gamma, kernel_x, kernel_y, unbiased):
    return torch.empty_like(x), torch.empty_like(y)


@torch.library.register_fake("fastcka::median_sq_dist")
def _median_sq_dist_fake(x, method=0):
    torch._check(x.dim() == 2)
    return x.new_empty((), dtype=torch.float64)


@torch.library.register_fake("fastcka::median_sq_dists")
def _median_sq_dists_fake(xs, method=0):
    torch._check(len(xs) > 0)
    for x in xs:
        torch._check(x.dim() == 2)
    return xs[0].new_empty((len(xs),), dtype=torch.float64)


def _kernel_hsic_setup(ctx, inputs, output):
    x, y, gamma, kx, ky, unbiased = inputs
    ctx.save_for_backward(x, y, gamma)
    ctx.args = (kx, ky, unbiased)


def _kernel_hsic_bwd(ctx, grad):
    x, y, gamma = ctx.saved_tensors
    dx, dy = _KernelHSICBackward(grad.to(torch.float64).contiguous(), x, y, gamma, *ctx.args)
    return dx, dy, None, None, None, None  # σ (gamma) is a constant: no gradient through the median


_KernelHSICBackward = _first_order("_kernel_hsic_backward")


torch.library.register_autograd("fastcka::kernel_hsic", _kernel_hsic_bwd, setup_context=_kernel_hsic_setup)
_block_double_backward("_kernel_hsic_backward")


# --- linear_hsic_matrix ---------------------------------------------------------------------------------------------
@torch.library.register_fake("fastcka::linear_hsic_matrix")
def _linear_hsic_matrix_fake(xs, ys, unbiased, method):
    m = len(ys) if len(ys) else len(xs)
    return xs[0].new_empty((len(xs), m), dtype=torch.float64)


def _matrix_no_grad(ctx, grad):
    raise RuntimeError("fastcka.cka_matrix has no backward; use fastcka.cka on the pairs you differentiate")


torch.library.register_autograd(
    "fastcka::linear_hsic_matrix", _matrix_no_grad, setup_context=lambda ctx, inputs, output: None
)


# --- center_gram: linear, so its backward is the same op in the adjoint mode (0 ↔ 0, 1 ↔ 2) -------------------------
_CENTER_ADJOINT = {0: 0, 1: 2, 2: 1}


@torch.library.register_fake("fastcka::center_gram")
def _center_gram_fake(k, mode):
    torch._check(k.dim() == 2 and k.shape[0] == k.shape[1])
    return torch.empty_like(k, memory_format=torch.contiguous_format)


@torch.library.register_fake("fastcka::gram_asymmetric_pairs")
def _gram_asymmetric_pairs_fake(k, threshold):
    torch._check(k.dim() == 2 and k.shape[0] == k.shape[1])
    return k.new_empty((), dtype=torch.int64)


def _center_gram_setup(ctx, inputs, output):
    ctx.mode = inputs[1]


def _center_gram_bwd(ctx, grad):
    return fops.center_gram(grad.contiguous(), _CENTER_ADJOINT[ctx.mode]), None


torch.library.register_autograd("fastcka::center_gram", _center_gram_bwd, setup_context=_center_gram_setup)


# --- autocast: every op computes in float32/float64 ---------------------------------------------------------------
# Inside torch.autocast an op would otherwise run with autocast still active, so the ATen GEMMs it calls internally
# would return bfloat16/float16 tensors its kernels reject. The rule below casts the op's float16/bfloat16/float32
# inputs to float32 (float64 stays float64, integers untouched) and runs the op with autocast disabled, on every
# device type autocast knows; gradients flow back through the cast to the caller's dtype.
def _register_autocast() -> None:
    for name in OP_NAMES:
        for device_type in ("cpu", "cuda"):
            if torch.amp.is_autocast_available(device_type):
                torch.library.register_autocast(f"fastcka::{name}", device_type, torch.float32)


_register_autocast()


# --- vmap: one op call per batch element (what torch's fallback does, without its performance warning) -------------
def _loop_vmap_rule(op: Callable) -> Callable:
    def rule(info, in_dims, *args):
        outs = [op(*(a.select(d, i) if d is not None else a for a, d in zip(args, in_dims)))
                for i in range(info.batch_size)]
        if isinstance(outs[0], (tuple, list)):
            return tuple(torch.stack(parts) for parts in zip(*outs)), (0,) * len(outs[0])
        return torch.stack(outs), 0

    return rule


for _name in ("linear_hsic", "_linear_hsic_backward", "kernel_hsic", "_kernel_hsic_backward", "median_sq_dist",
              "center_gram", "frequency_spectrum", "_frequency_spectrum_backward"):
    torch.library.register_vmap(f"fastcka::{_name}", _loop_vmap_rule(getattr(ops, _name)))


# --- fops: the differentiable ops as torch.func-ready Functions (what the public functions call) --------------------
fops = types.SimpleNamespace(
    linear_hsic=_function("linear_hsic", _linear_hsic_setup, _linear_hsic_bwd),
    kernel_hsic=_function("kernel_hsic", _kernel_hsic_setup, _kernel_hsic_bwd),
    frequency_spectrum=_function("frequency_spectrum", _frequency_spectrum_setup, _frequency_spectrum_bwd),
    center_gram=_function("center_gram", _center_gram_setup, _center_gram_bwd),
)

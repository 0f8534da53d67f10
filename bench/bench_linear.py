"""Linear CKA (issue 3): fastcka against the GEMM floor, plain torch and the PyPI peers, float32, same inputs, one run.

Rows per shape (n, p = q) ∈ {(8192, 256), (2048, 512), (512, 4096)}:
  fastcka           fastcka.cka(x, y) (auto path: feature space for the first two, sample space for the third)
  floor             only the GEMMs of the path fastcka picks, on pre-centred inputs: XcᵀYc, XcᵀXc, YcᵀYc (feature)
                    or XcXcᵀ, YcYcᵀ (sample), float32. fastcka's feature path forms only the block upper triangle of the
                    symmetric XcᵀXc and YcᵀYc (64-column panels on the CPU): about 2/3 of these multiply-adds at p = q,
                    so its row can lie below this one
  torch_feature     plain torch, feature-space formula (centre, three GEMMs, norms), float32
  torch_gram        plain torch, Kornblith et al.'s Gram + center_gram formula, float32
  fastcka_unbiased  fastcka.cka(x, y, unbiased=True): the estimator cka-pytorch and torch-cka compute
  ckatorch, cka_pytorch, torch_cka, repsim   the peers (bench/peers.py)
extra_info of every row: the path, the error against the float64 reference on the same input and on the shifted
input (x + 10⁴, spread 1: mean 10⁴ times the spread), and the peak extra RSS of the call in a subprocess.
"""

from __future__ import annotations

import functools

import pytest
import torch

import _common
import cases
import peers

CASES = list(cases.LINEAR_SHAPES)
IMPLS = ["fastcka", "floor", "torch_feature", "torch_gram", "fastcka_unbiased", *peers.PEERS]

# Peers whose one call takes minutes here (measured on the 2-core reference machine, see RESULTS.md): timed once,
# in full mode only. repsim (single-threaded Eigen in float64, O(n³) H products) is not run at n = 8192.
SLOW = {("n8192_p256", "ckatorch"), ("n8192_p256", "cka_pytorch"), ("n8192_p256", "torch_cka"),
        ("n2048_p512", "repsim"), ("n8192_p256", "torch_gram")}
SKIP = {("n8192_p256", "repsim"): "repsim: 18 s at n=2048 (one thread, float64, O(n³)); ≈ 20 min extrapolated "
                                 "to n=8192 per call, not run"}


@functools.lru_cache(maxsize=None)
def inputs(case: str, device: str, shift: float):
    d = cases.linear_inputs(case, device, shift)
    return d["x"], d["y"]


@functools.lru_cache(maxsize=None)
def reference(case: str, shift: float, unbiased: bool) -> float:
    x, y = inputs(case, "cpu", shift)
    return cases.linear_reference(x, y, unbiased)


# case-major order: every row of a case runs back to back, so that load from other processes hits a case's rows alike
@pytest.mark.parametrize("device", _common.devices())
@pytest.mark.parametrize("case,impl", [(c, i) for c in CASES for i in IMPLS])
def test_linear_cka(benchmark, impl, case, device):
    _common.skip_unless_device(device)
    benchmark.group = f"linear {case} {device}"
    if impl in peers.PEERS:
        ok, why = peers.available(impl)
        if not ok:
            pytest.skip(why)
        if impl == "repsim" and device != "cpu":
            pytest.skip("repsim runs on NumPy (CPU only)")
    if (case, impl) in SKIP:
        pytest.skip(SKIP[(case, impl)])
    slow = (case, impl) in SLOW
    if slow and not _common.FULL:
        pytest.skip("minutes per call on 2 cores: full mode only (FASTCKA_BENCH_FULL=1)")
    n, p, q = cases.parse_shape(case)
    path = cases.linear_path(n, p, q, device)
    x, y = inputs(case, device, 0.0)
    info = {"family": "linear", "case": case, "impl": impl, "device": device, "n": n, "p": p, "q": q, "path": path,
            "dtype": "float32", "threads": torch.get_num_threads()}
    if impl == "floor":
        f = cases.floor_inputs({"x": x, "y": y})
        fn = lambda: cases.linear_floor(f["xc"], f["yc"], path)  # noqa: E731
    else:
        impl_fn = cases.LINEAR_IMPLS[impl]
        fn = lambda: impl_fn(x, y)  # noqa: E731
    slow_or_heavy = slow or impl in peers.PEERS or impl == "torch_gram" or (impl == "torch_feature" and path == "sample")
    value = _common.run(benchmark, fn, device, rounds_=1 if slow else (_common.rounds(2, 3) if slow_or_heavy else _common.rounds(5, 15)),
                        warmup=0 if slow else 1)
    if impl != "floor":
        unbiased = impl in cases.UNBIASED_IMPLS
        info["estimator"] = "unbiased" if unbiased else "biased"
        info["value"] = float(value)
        info["err"] = _common.rel_err(value, reference(case, 0.0, unbiased))
        xs, ys = inputs(case, device, cases.SHIFT)
        vs = impl_fn(xs, ys)
        info["value_shift"] = float(vs)
        info["err_shift"] = _common.rel_err(vs, reference(case, cases.SHIFT, unbiased))
    mem = _common.peak_rss_mb("linear", case, impl, device) if device == "cpu" else None
    if mem is not None:
        info["mem"] = mem
    _common.record(benchmark, **info)

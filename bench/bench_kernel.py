"""RBF CKA (issue 4): fastcka's fused tiled pass against the GEMM floor, plain torch with explicit n×n Grams and the
peers, float32, same inputs, one run; and the n = 100,000 row that only a pass which never stores n×n can run.

Rows:
  fastcka     fastcka.cka(x, y, kernel="rbf"): exact median bandwidth (Kornblith et al., all n² entries) + tiled pass
  floor       the GEMMs the tiles need: X·Xᵀ and Y·Yᵀ, float32
  torch_gram  plain torch: distances from the Gram, kthvalue median, exp, Kornblith centring (n×n, float32)
  ckatorch    ckatorch.cka_base(kernel="rbf") (float64 n×n, torch.median over n²)
  repsim      repsim.cka(kernel_type="rbf") (float64 Eigen, one thread; its own bandwidth rule, see RESULTS.md)
The n = 100,000, p = q = 64 row runs fastcka once in a subprocess and records its time and peak extra RSS (the
target: under 256 MB); the explicit-Gram rows cannot run there (one 10⁵×10⁵ float32 matrix is 40 GB).
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time

import pytest
import torch

import _common
import cases
import peers

FAST_OK, FAST_WHY = cases.fastcka_rbf_available()
CASES = ["n2048_p256", "n8192_p256"] if _common.FULL else ["n2048_p256"]  # quick mode: < 5 min in all
IMPLS = ["fastcka", "floor", "torch_gram", "ckatorch", "repsim"]
SLOW = {("n8192_p256", "ckatorch"): "≈20 s per call", ("n2048_p256", "repsim"): "≈20 s per call"}
SKIP = {("n8192_p256", "repsim"): "repsim: single-threaded float64 with O(n³) centring products; ≈20 s at n=2048, "
                                  "≈20 min extrapolated to n=8192 per call, not run"}


@functools.lru_cache(maxsize=None)
def inputs(case: str, device: str):
    d = cases.rbf_inputs(case, device)
    return d["x"], d["y"]


@functools.lru_cache(maxsize=None)
def reference(case: str) -> float:
    x, y = inputs(case, "cpu")
    return cases.rbf_reference(x, y)


@pytest.mark.parametrize("device", _common.devices())
@pytest.mark.parametrize("case,impl", [(c, i) for c in CASES for i in IMPLS])
def test_rbf_cka(benchmark, impl, case, device):
    _common.skip_unless_device(device)
    benchmark.group = f"rbf {case} {device}"
    if impl == "fastcka" and not FAST_OK:
        pytest.skip(FAST_WHY)
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
        pytest.skip(f"{SLOW[(case, impl)]} on 2 cores: full mode only (FASTCKA_BENCH_FULL=1)")
    n, p, q = cases.RBF_SHAPES[case]
    x, y = inputs(case, device)
    fn = (lambda: cases.rbf_floor(x, y)) if impl == "floor" else (lambda: cases.RBF_IMPLS[impl](x, y))
    heavy = slow or impl in ("ckatorch", "repsim") or (impl == "torch_gram" and n > 4096)
    value = _common.run(benchmark, fn, device, rounds_=1 if slow else (_common.rounds(2, 3) if heavy else _common.rounds(3, 7)),
                        warmup=0 if slow else 1)
    info = {"family": "rbf", "case": case, "impl": impl, "device": device, "n": n, "p": p, "q": q, "dtype": "float32",
            "threads": torch.get_num_threads(), "estimator": "biased"}
    if impl != "floor":
        info["value"] = float(value)
        info["err"] = _common.rel_err(value, reference(case))
    mem = _common.peak_rss_mb("rbf", case, impl, device) if device == "cpu" else None
    if mem is not None:
        info["mem"] = mem
    _common.record(benchmark, **info)


@pytest.mark.parametrize("device", _common.devices())
def test_rbf_n100000_memory(benchmark, device):
    """fastcka RBF CKA at n = 100,000, p = q = 64 in a fresh subprocess: time of the one call and its peak extra RSS.
    Runs in full mode or with FASTCKA_BENCH_BIG=1. By default σ is given (σx, σy = 11.3, 12.6, about the median
    heuristic's values for these inputs): the one tiled HSIC pass, ≈3–4 min on 2 cores. FASTCKA_BENCH_BIG_MEDIAN=1
    computes the exact median as well (radix-select passes over all pairs: ≈4× longer, ≈13 min extrapolated)."""
    import os

    _common.skip_unless_device(device)
    if not FAST_OK:
        pytest.skip(FAST_WHY)
    if not (_common.FULL or os.environ.get("FASTCKA_BENCH_BIG") == "1"):
        pytest.skip("n = 100,000 row: full mode only (FASTCKA_BENCH_FULL=1 or FASTCKA_BENCH_BIG=1)")
    benchmark.group = f"rbf n100000_p64 {device}"
    env = dict(os.environ, FASTCKA_BENCH_MEM="1")
    script = (
        "import sys, json, time; sys.path.insert(0, %r)\n"
        "import torch, _common, cases\n"
        "_common.setup_threads()\n"
        "import fastcka, os\n"
        "d = cases.rbf_inputs('n100000_p64', %r)\n"
        "sig = None if os.environ.get('FASTCKA_BENCH_BIG_MEDIAN') == '1' else (11.3, 12.6)\n"
        "fn = lambda: fastcka.cka(d['x'], d['y'], kernel='rbf', sigma=sig)\n"
        "_common.reset_peak_rss(); b = _common.maxrss_mb(); t = time.perf_counter()\n"
        "v = fn(); _common.sync(%r); t = time.perf_counter() - t\n"
        "print(json.dumps({'seconds': t, 'value': float(v), 'baseline_mb': b, 'extra_mb': _common.maxrss_mb() - b}))\n"
    ) % (str(_common.BENCH_DIR), device, device)
    result = {}

    def once():
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=1800)
        assert out.returncode == 0, out.stderr[-2000:]
        result.update(json.loads(out.stdout.strip().splitlines()[-1]))

    benchmark.pedantic(once, rounds=1, iterations=1)
    _common.record(benchmark, family="rbf", case="n100000_p64", impl="fastcka", device=device, n=100000, p=64, q=64,
                   dtype="float32", threads=torch.get_num_threads(), value=result["value"],
                   sigma="exact median" if os.environ.get("FASTCKA_BENCH_BIG_MEDIAN") == "1" else "given (11.3, 12.6)",
                   call_seconds=result["seconds"],
                   mem={"baseline_mb": round(result["baseline_mb"], 1), "extra_mb": round(result["extra_mb"], 1)},
                   note="time includes the subprocess's start and input construction; call_seconds is the call alone")

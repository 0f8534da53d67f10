"""Shared helpers of the fastcka benchmark suites (bench/*.py): the mode, the threads, the machine, timing on GPU,
errors against the float64 reference and peak memory of one case in a fresh subprocess.

Environment knobs:
  FASTCKA_BENCH_FULL=1        full mode (every size of the issues; the default quick mode keeps each file small)
  FASTCKA_BENCH_THREADS=N     torch intra-op threads (default: all cores, 2 on the reference machine)
  FASTCKA_BENCH_MEM=0|1       measure peak RSS of each row in a subprocess (default: on in full mode, off in quick)
  FASTCKA_BENCH_DEVICE=cuda   run the suites on CUDA too (default: CUDA rows run when a GPU is present)
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch

BENCH_DIR = Path(__file__).resolve().parent
FULL = os.environ.get("FASTCKA_BENCH_FULL", "0") == "1"
MEASURE_MEM = os.environ.get("FASTCKA_BENCH_MEM", "1" if FULL else "0") == "1"
THREADS = int(os.environ.get("FASTCKA_BENCH_THREADS", str(os.cpu_count() or 1)))


def setup_threads() -> int:
    torch.set_num_threads(THREADS)
    return torch.get_num_threads()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def machine() -> Dict[str, Any]:
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "blas": "MKL" if torch.backends.mkl.is_available() else "other",
        "python": platform.python_version(),
        "mode": "full" if FULL else "quick",
        "loadavg_at_start": load_average(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def devices():
    """CPU always; CUDA when a GPU is present (the CUDA rows skip cleanly otherwise)."""
    return ["cpu", "cuda"]


def skip_unless_device(device: str) -> None:
    import pytest

    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device: GPU rows run only where torch.cuda.is_available()")


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def rounds(quick: int, full: int) -> int:
    return full if FULL else quick


def run(benchmark, fn: Callable[[], Any], device: str = "cpu", rounds_: int = 5, warmup: int = 1) -> Any:
    """Time ``fn`` with pytest-benchmark (one call per round, synchronised on CUDA). On CUDA the median of
    torch.cuda.Event timings of the same number of calls is recorded in extra_info['cuda_event_median_s']."""
    if device == "cuda":
        def call():
            out = fn()
            torch.cuda.synchronize()
            return out

        result = benchmark.pedantic(call, rounds=rounds_, warmup_rounds=warmup, iterations=1)
        times = []
        for _ in range(rounds_):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        times.sort()
        benchmark.extra_info["cuda_event_median_s"] = times[len(times) // 2]
        return result
    return benchmark.pedantic(fn, rounds=rounds_, warmup_rounds=warmup, iterations=1)


def rel_err(value, ref) -> float:
    v = float(value)
    r = float(ref)
    if not math.isfinite(v):
        return float("inf")
    return abs(v - r) / max(abs(r), 1e-300)


def peak_rss_mb(family: str, case: str, impl: str, device: str = "cpu", timeout: float = 1800.0) -> Optional[Dict[str, Any]]:
    """Peak RSS of one case run once in a fresh Python process, minus that process's peak after its inputs were
    built (resource.getrusage(RUSAGE_SELF).ru_maxrss before and after). None when memory is not measured."""
    if not MEASURE_MEM:
        return None
    cmd = [sys.executable, str(BENCH_DIR / "_memcase.py"), family, case, impl, device]
    env = dict(os.environ, FASTCKA_BENCH_THREADS=str(THREADS))
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["?"]
        return {"error": f"rc {out.returncode}: {tail[0][:200]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def maxrss_mb() -> float:
    """Peak RSS of this process so far (MB): VmHWM from /proc/self/status, else getrusage's ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def reset_peak_rss() -> bool:
    """Reset this process's peak-RSS mark to its current RSS (Linux: write 5 to /proc/self/clear_refs), so that the
    import of torch and the building of the inputs (transient high-water marks) do not hide the call's own peak.
    getrusage's ru_maxrss cannot be reset; where clear_refs is unavailable the baseline stays the earlier peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def record(benchmark, **info: Any) -> None:
    for k, v in info.items():
        benchmark.extra_info[k] = v

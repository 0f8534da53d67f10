"""Run one benchmark case once in this (fresh) process and print its peak memory as JSON:

    python bench/_memcase.py FAMILY CASE IMPL [DEVICE]

extra_mb = peak RSS during the call − RSS once the inputs exist: the peak mark (VmHWM, the value getrusage's
ru_maxrss reports) is reset through /proc/self/clear_refs just before the call, so transient peaks of the imports
and of the input construction do not hide the call's own; i.e. the memory the call itself needs beyond its inputs; on CUDA also torch.cuda.max_memory_allocated beyond the
inputs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import _common  # noqa: E402
import cases  # noqa: E402


def main() -> None:
    family, case, impl = sys.argv[1:4]
    device = sys.argv[4] if len(sys.argv) > 4 else "cpu"
    _common.setup_threads()
    fn = cases.prepare(family, case, impl, device)  # builds the inputs, returns a no-argument callable
    fn0 = None
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        fn0 = torch.cuda.memory_allocated()
    reset = _common.reset_peak_rss()
    base = _common.maxrss_mb()
    fn()
    _common.sync(device)
    peak = _common.maxrss_mb()
    out = {"baseline_mb": round(base, 1), "peak_mb": round(peak, 1), "extra_mb": round(peak - base, 1),
           "hwm_reset": reset}
    if device == "cuda":
        out["cuda_extra_mb"] = round((torch.cuda.max_memory_allocated() - fn0) / 2**20, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

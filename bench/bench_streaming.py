"""Streaming linear CKA (fastcka.streaming.LinearCKA): update throughput against the GEMM floor, same batches, one run.

Rows (batch b × (p + q) float32, one update each call):
  fastcka        LinearCKA.update(x, y) (float64 moment matrix about a shift, one float64 GEMM per batch)
  floor          the unavoidable products of a batch, XᵀX, YᵀY and XᵀY, as one float32 GEMM Zᵀ Z of Z = [X, Y]
  floor_f64      the same GEMM in float64 (the precision the exact streaming states are kept in, DESIGN §1)
  torch_f64      what a user writes for exact streaming: x, y to float64, three addmm_ into running sums
extra_info: examples per second.
"""

from __future__ import annotations

import pytest
import torch

import _common
import cases
from fastcka.streaming import LinearCKA

CASES = {"b1024_p256": (1024, 256, 256), "b4096_p768": (4096, 768, 768)}
if not _common.FULL:  # quick mode keeps the small batch only
    CASES = {"b1024_p256": CASES["b1024_p256"]}
IMPLS = ["fastcka", "floor", "floor_f64", "torch_f64"]


@pytest.mark.parametrize("device", _common.devices())
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("impl", IMPLS)
def test_streaming_update(benchmark, impl, case, device):
    _common.skip_unless_device(device)
    benchmark.group = f"streaming {case} {device}"
    b, p, q = CASES[case]
    x, y = cases.correlated_pair(b, p, q, device=device)
    if impl == "fastcka":
        acc = LinearCKA()
        acc.update(x, y)
        fn = lambda: acc.update(x, y)  # noqa: E731
    elif impl in ("floor", "floor_f64"):
        z = torch.cat([x, y], 1)
        if impl == "floor_f64":
            z = z.double()
        fn = lambda: torch.mm(z.T, z)  # noqa: E731
    else:
        sxx = torch.zeros(p, p, dtype=torch.float64, device=device)
        syy = torch.zeros(q, q, dtype=torch.float64, device=device)
        sxy = torch.zeros(p, q, dtype=torch.float64, device=device)
        sx = torch.zeros(p, dtype=torch.float64, device=device)
        sy = torch.zeros(q, dtype=torch.float64, device=device)

        def fn():
            xd, yd = x.double(), y.double()
            sxx.addmm_(xd.T, xd)
            syy.addmm_(yd.T, yd)
            sxy.addmm_(xd.T, yd)
            sx.add_(xd.sum(0))
            sy.add_(yd.sum(0))

    _common.run(benchmark, fn, device, rounds_=_common.rounds(10, 30), warmup=2)
    med = benchmark.stats.stats.median if benchmark.stats else None
    _common.record(benchmark, family="streaming", case=case, impl=impl, device=device, n=b, p=p, q=q, dtype="float32",
                   threads=torch.get_num_threads(), examples_per_s=(b / med) if med else None)

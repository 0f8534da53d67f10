"""cka_matrix (issue 3): the 12 × 12 layer matrix at n = 4096, d = 768 in one call, against the 144 separate
fastcka.cka calls of a naive loop and against the floor (the one GEMM of the concatenated centred layers,
[X₁ … X₁₂]ᵀ[X₁ … X₁₂], which holds every cross- and self-term), float32, one run.
Quick mode: 4 × 4 layers at n = 2048 (the full size is FASTCKA_BENCH_FULL=1). Skips until fastcka.cka_matrix lands.
"""

from __future__ import annotations

import pytest
import torch

import _common
import fastcka

L, N, D = (12, 4096, 768) if _common.FULL else (4, 2048, 768)


def layers(device):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(N, D, generator=g)
    out = []
    for _ in range(L):  # a residual-stream-like chain: each layer a noisy linear map of the previous one
        base = base @ (torch.randn(D, D, generator=g) / D**0.5) + 0.5 * torch.randn(N, D, generator=g)
        out.append(base.clone())
    return [x.to(device) for x in out]


@pytest.mark.parametrize("device", _common.devices())
@pytest.mark.parametrize("impl", ["fastcka", "loop", "floor"])
def test_cka_matrix(benchmark, impl, device):
    _common.skip_unless_device(device)
    if not hasattr(fastcka, "cka_matrix"):
        pytest.skip("fastcka.cka_matrix not landed yet")
    benchmark.group = f"matrix L{L}_n{N}_d{D} {device}"
    xs = layers(device)
    if impl == "fastcka":
        fn = lambda: fastcka.cka_matrix(xs)  # noqa: E731
    elif impl == "loop":
        fn = lambda: torch.stack([torch.stack([fastcka.cka(a, b) for b in xs]) for a in xs])  # noqa: E731
    else:
        z = torch.cat([x - x.mean(0) for x in xs], 1)
        fn = lambda: torch.mm(z.T, z)  # noqa: E731
    out = _common.run(benchmark, fn, device, rounds_=_common.rounds(2, 3), warmup=1)
    info = {"family": "matrix", "case": f"L{L}_n{N}_d{D}", "impl": impl, "device": device, "dtype": "float32",
            "threads": torch.get_num_threads()}
    if impl != "floor":
        loop = torch.stack([torch.stack([fastcka.cka(a, b) for b in xs]) for a in xs])
        info["max_abs_diff_vs_loop"] = float((out - loop).abs().max())
    _common.record(benchmark, **info)

"""Fourier frequency spectrum (fastcka.frequency_spectrum): against the FFT floor and the plain-torch formula.

Cases: an embedding W_E (p × d) along dim 0, and activations over the p × p grid of inputs (p, p, d), p = 113,
d = 128 (Nanda et al.'s setting), float32; and a large embedding, p = 4093 (prime), d = 512, where the op takes the
rfft path (p > 512).
Rows: fastcka (auto: basis GEMM for p ≤ 512), floor (torch.fft.rfft / rfft2 over the residue dims alone, no energy or
fold), torch_fft (plain torch: fft, |·|², sum over the other dims, fold k with p − k in a Python loop — the
reference's formula, in float32). extra_info: error against the float64 reference.
"""

from __future__ import annotations

import pytest
import torch

import _common
import fastcka
from fastcka import reference as ref

P, D = 113, 128
CASES = {"embed_p113_d128": (P, D), "grid_p113_d128": (P, P, D), "embed_p4093_d512": (4093, 512)}


def torch_fft_spectrum(x, dims):
    xf = torch.fft.fftn(x, dim=dims)
    e = xf.abs().square()
    e = e.reshape(*e.shape[: len(dims)], -1).sum(-1)
    for ax in range(len(dims)):
        p = e.shape[ax]
        e = e.movedim(ax, 0)
        out = e[: p // 2 + 1].clone()
        for k in range(1, p // 2 + 1):
            if p - k != k:
                out[k] += e[p - k]
        e = out.movedim(0, ax)
    return e


@pytest.mark.parametrize("device", _common.devices())
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("impl", ["fastcka", "floor", "torch_fft"])
def test_frequency_spectrum(benchmark, impl, case, device):
    _common.skip_unless_device(device)
    benchmark.group = f"frequency {case} {device}"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*CASES[case], generator=g).to(device)
    grid = len(CASES[case]) == 3
    dims = (0, 1) if grid else (0,)
    if impl == "fastcka":
        fn = (lambda: fastcka.frequency_spectrum(x, dim=(0, 1))) if grid else (lambda: fastcka.frequency_spectrum(x, dim=0))
    elif impl == "floor":
        fn = (lambda: torch.fft.rfft2(x, dim=(0, 1))) if grid else (lambda: torch.fft.rfft(x, dim=0))
    else:
        fn = lambda: torch_fft_spectrum(x, dims)  # noqa: E731
    out = _common.run(benchmark, fn, device, rounds_=_common.rounds(10, 30), warmup=2)
    info = {"family": "frequency", "case": case, "impl": impl, "device": device, "dtype": "float32",
            "threads": torch.get_num_threads()}
    if impl != "floor":
        r = ref.frequency_spectrum(x.cpu().double(), dim=(0, 1)) if grid else ref.frequency_spectrum(x.cpu().double(), dim=0)
        info["err"] = float((out.cpu().double() - r).abs().max() / r.abs().max())
    _common.record(benchmark, **info)

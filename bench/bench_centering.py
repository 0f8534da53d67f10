"""Gram centring (issue 3): fastcka.center_gram (fused one pass) against plain torch (H K H with explicit H, and
Kornblith et al.'s means formula) and the memory floor (one read and one write of n × n: k.clone()), float32.
Skips until fastcka.center_gram lands.
"""

from __future__ import annotations

import pytest
import torch

import _common
import cases
import fastcka
from fastcka import reference as ref

NS = [2048, 8192] if _common.FULL else [2048]


@pytest.mark.parametrize("device", _common.devices())
@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("impl", ["fastcka", "floor", "torch_means", "torch_hkh"])
def test_center_gram(benchmark, impl, n, unbiased, device):
    _common.skip_unless_device(device)
    if not hasattr(fastcka, "center_gram"):
        pytest.skip("fastcka.center_gram not landed yet")
    if impl == "torch_hkh" and (unbiased or n > 4096):
        pytest.skip("H K H: biased only, and two n³ GEMMs (minutes at n = 8192 on 2 cores)")
    benchmark.group = f"centering n{n} {'unbiased' if unbiased else 'biased'} {device}"
    x, _ = cases.correlated_pair(n, 64, 64)
    k = (x @ x.T).to(device)
    if impl == "fastcka":
        fn = lambda: fastcka.center_gram(k, unbiased=unbiased)  # noqa: E731
    elif impl == "floor":
        fn = lambda: k.clone()  # noqa: E731
    elif impl == "torch_means":
        def fn():
            kk = k.clone()
            if unbiased:
                kk.fill_diagonal_(0)
                means = kk.sum(0) / (n - 2)
                means = means - means.sum() / (2 * (n - 1))
                kk = kk - means[:, None] - means[None, :]
                kk.fill_diagonal_(0)
                return kk
            return cases.kornblith_center(kk)
    else:
        h = torch.eye(n, device=device) - 1.0 / n
        fn = lambda: h @ k @ h  # noqa: E731
    out = _common.run(benchmark, fn, device, rounds_=_common.rounds(3, 7), warmup=1)
    info = {"family": "centering", "case": f"n{n}_{'unbiased' if unbiased else 'biased'}", "impl": impl,
            "device": device, "dtype": "float32", "threads": torch.get_num_threads()}
    if impl != "floor" and n <= 2048:
        r = ref.center_gram(k.cpu().double(), unbiased)
        info["err"] = float((out.cpu().double() - r).abs().max() / r.abs().max())
    _common.record(benchmark, **info)

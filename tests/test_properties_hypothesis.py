"""Property-based test of the public API: any input either gives a CKA in range or a clear error."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastcka
import fastcka.reference as R

WELL_POSED = ("normal", "integers", "constant_col")
VALUES = st.sampled_from(["normal", "huge", "tiny", "denormal", "repeated", "rank1", "integers", "constant_col"])


def make(kind: str, n: int, p: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=g, dtype=torch.float64)
    if kind == "huge":
        x = x * 1e30 if dtype != torch.float16 else x * 1e3
    elif kind == "tiny":
        x = x * 1e-30
    elif kind == "denormal":
        x = x * (1e-40 if dtype == torch.float32 else 1e-310)
    elif kind == "repeated":
        x = x[torch.randint(0, max(1, n // 2), (n,), generator=g)]
    elif kind == "rank1":
        x = x[:, :1] * torch.randn(1, p, generator=g, dtype=torch.float64)
    elif kind == "integers":
        x = torch.randint(-3, 4, (n, p), generator=g).double()
    elif kind == "constant_col":
        x[:, 0] = 7.0
    return x.to(dtype)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 40),
    p=st.integers(1, 30),
    q=st.integers(1, 30),
    kx=VALUES,
    ky=VALUES,
    dtype=st.sampled_from([torch.float64, torch.float32, torch.float16, torch.bfloat16]),
    unbiased=st.booleans(),
    method=st.sampled_from(["auto", "feature", "sample"]),
    seed=st.integers(0, 2**16),
)
def test_cka_in_range_or_clear_error(n, p, q, kx, ky, dtype, unbiased, method, seed):
    x = make(kx, n, p, seed, dtype)
    y = make(ky, n, q, seed + 1, dtype)
    try:
        c = fastcka.cka(x, y, unbiased=unbiased, method=method)
    except (ValueError, TypeError):
        assert n < (4 if unbiased else 2)
        return
    v = c.item()
    assert math.isfinite(v), (v, kx, ky)
    if unbiased:
        # the debiased estimate is a cosine of the U-centred Grams: it may dip below 0 (never clamped), not leave [-1, 1]
        assert -1 - 1e-5 <= v <= 1 + 1e-5
    else:
        assert -1e-5 <= v <= 1 + 1e-5
    # well-posed float64 inputs (no constant side, enough examples that the self-HSICs are far from rounding) must
    # equal the float64 reference, not just land in range
    if dtype == torch.float64 and kx in WELL_POSED and ky in WELL_POSED and n >= 8:
        xd, yd = x.double(), y.double()
        if xd.std(0).max() > 0 and yd.std(0).max() > 0:
            assert v == pytest.approx(R.linear_cka(xd, yd, unbiased).item(), abs=1e-9), (kx, ky, n, p, q)

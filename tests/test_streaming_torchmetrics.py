"""The torchmetrics adapter (fastcka.integrations.torchmetrics.CKA) in one process; the 2-rank run is in
test_streaming_dist.py."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torchmetrics")

from fastcka import reference as ref  # noqa: E402
from fastcka.integrations.torchmetrics import CKA  # noqa: E402
from fastcka.streaming import LinearCKA  # noqa: E402

F64 = torch.float64


def data(n=500, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g, dtype=F64) + 1e3
    y = x[:, :4] @ torch.randn(4, 3, generator=g, dtype=F64) + torch.randn(n, 3, generator=g, dtype=F64) - 1e3
    return x, y


@pytest.mark.parametrize("debiased", [False, True])
def test_update_compute_equals_plain_accumulator(debiased):
    x, y = data()
    m, acc = CKA(unbiased=debiased), LinearCKA(unbiased=debiased)
    for a, b in [(0, 1), (1, 40), (40, 41), (41, 300), (300, 500)]:
        m.update(x[a:b], y[a:b])
        acc.update(x[a:b], y[a:b])
    assert len(m.packs) == 1
    assert torch.equal(m.compute(), acc.compute())
    want = ref.feature_space_linear_cka(x, y, unbiased=debiased)
    assert abs(float(m.compute()) - float(want)) < 1e-9 * abs(float(want))


@pytest.mark.parametrize("debiased", [False, True])
def test_forward_returns_batch_value_and_keeps_one_pack(debiased):
    x, y = data(seed=1)
    m = CKA(unbiased=debiased)
    for a in range(0, 500, 50):
        v = m(x[a : a + 50], y[a : a + 50])
        assert abs(float(v) - float(ref.feature_space_linear_cka(x[a : a + 50], y[a : a + 50], debiased))) < 1e-9
        assert len(m.packs) == 1
    want = ref.feature_space_linear_cka(x, y, unbiased=debiased)
    assert abs(float(m.compute()) - float(want)) < 1e-9 * abs(float(want))
    m.reset()
    assert m.packs == []
    m.update(x[:10], y[:10])
    assert abs(float(m.compute()) - float(ref.feature_space_linear_cka(x[:10], y[:10], debiased))) < 1e-9


def test_bad_input():
    x, y = data()
    m = CKA()
    m.update(x, y)
    with pytest.raises(ValueError, match=r"y has 2 features.*first batch had 3"):
        m.update(x, y[:, :2])
    m2 = CKA(unbiased=True)
    m2.update(x[:3], y[:3])
    with pytest.raises(ValueError, match=r"n >= 4"):
        m2.compute()

"""fastcka.compare across torch.distributed ranks: a real 2-process gloo run on loopback.

Each rank feeds its own shard (unequal sizes; in one scenario rank 1 has none); the result must be the same on both
ranks and equal the single-process result on the whole data to 1e-9, for the exact (biased and unbiased) and the
minibatch estimators. One spawn runs every scenario.
"""

from __future__ import annotations

import warnings
from typing import Dict, List

import pytest
import torch
import torch.distributed as dist
from torch import nn

import fastcka
from _dist import run_on_ranks

F64 = torch.float64
WORLD = 2
SIZES = [9, 33, 4, 17, 64, 5, 11]
OWNER = [0, 1, 0, 0, 1, 0, 1]  # rank 0: 4 batches (35 rows), rank 1: 3 batches (108 rows)
SETTINGS = {"exact": dict(estimator="exact"), "exact_unbiased": dict(estimator="exact", unbiased=True),
            "minibatch": dict(estimator="minibatch")}


def models():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    b = nn.Sequential(nn.Linear(5, 9), nn.ReLU(), nn.Linear(9, 6)).double()
    with torch.no_grad():
        a[0].bias.add_(1e3)  # an offset the ranks' shifts must agree on
    return a, b


def batches() -> List[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(sum(SIZES), 5, generator=g, dtype=F64)
    return list(torch.split(x, SIZES))


def run(owner: List[int], rank: int) -> Dict[str, torch.Tensor]:
    a, b = models()
    mine = [x for k, x in enumerate(batches()) if owner[k] == rank]
    out = {}
    for key, kw in SETTINGS.items():
        res = fastcka.compare(a, b, mine, layers_a=["0", "2", "4"], layers_b=["0", "2"], progress=False, **kw)
        out[key] = res.matrix
        out[key + "_n"] = torch.tensor([res.n, res.batches])
    return out


def _rank_results(rank: int) -> dict:
    return {"unequal": run(OWNER, rank), "rank1_empty": run([0] * len(SIZES), rank)}


@pytest.fixture(scope="module")
def dist_results(tmp_path_factory):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    return run_on_ranks(_rank_results, WORLD, str(tmp_path_factory.mktemp("compare_dist")))


@pytest.mark.parametrize("scenario", ["unequal", "rank1_empty"])
def test_two_ranks_with_unequal_shards_equal_one_process(dist_results, scenario):
    a, b = models()
    want = {}
    for key, kw in SETTINGS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = fastcka.compare(a, b, batches(), layers_a=["0", "2", "4"], layers_b=["0", "2"], progress=False, **kw)
        want[key], want[key + "_n"] = res.matrix, torch.tensor([res.n, res.batches])
    for rank in range(WORLD):
        got = dist_results[rank][scenario]
        for key in SETTINGS:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-9, msg=f"{scenario} rank {rank} {key}")
            assert torch.equal(got[key + "_n"], want[key + "_n"])
    assert torch.equal(dist_results[0][scenario]["exact"], dist_results[1][scenario]["exact"])

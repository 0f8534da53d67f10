"""fastcka.streaming across torch.distributed ranks: a real 2-process gloo run on loopback.

One spawn (module-scoped fixture) runs every scenario; each test checks one part of its results against the
single-process value. Scenarios: interleaved and unequal batches over the two ranks; rank 1 with no data at all;
compute() after sync() with local accumulation continuing; the torchmetrics adapter (when installed).
"""

from __future__ import annotations

import importlib.util
from typing import Dict, List

import pytest
import torch
import torch.distributed as dist

from fastcka.streaming import LinearCKA, LinearCKAMatrix, MinibatchCKA
from _dist import run_on_ranks

F64 = torch.float64
WORLD = 2
SIZES = [1, 700, 3, 17, 256, 5, 64, 2, 400, 9, 129]
# which rank sees batch k: interleaved, unequal (rank 0: 7 batches, rank 1: 4)
OWNER = [0, 1, 0, 0, 1, 0, 1, 0, 0, 1, 0]

HAVE_TM = importlib.util.find_spec("torchmetrics") is not None


def make_batches(seed: int = 0) -> List[tuple]:
    g = torch.Generator().manual_seed(seed)
    n = sum(SIZES)
    z = torch.randn(n, 2, generator=g, dtype=F64)
    x = z @ torch.randn(2, 6, generator=g, dtype=F64) + torch.randn(n, 6, generator=g, dtype=F64) + 1e3
    y = z @ torch.randn(2, 4, generator=g, dtype=F64) + torch.randn(n, 4, generator=g, dtype=F64) - 2e3
    w = torch.randn(n, 3, generator=g, dtype=F64) + x[:, :3]
    out, i = [], 0
    for s in SIZES:
        out.append((x[i : i + s], y[i : i + s], w[i : i + s]))
        i += s
    return out


def run_scenarios(rank: int, owner: List[int]) -> Dict[str, torch.Tensor]:
    """Feed this rank's batches to every accumulator kind; return synced and local values."""
    data = make_batches()
    lin = {d: LinearCKA(unbiased=d) for d in (False, True)}
    mat = LinearCKAMatrix(3, unbiased=True)
    mb = MinibatchCKA()
    res: Dict[str, torch.Tensor] = {}
    for k, (x, y, w) in enumerate(data):
        if owner[k] != rank:
            continue
        for acc in lin.values():
            acc.update(x, y)
        mat.update(x, y, w)
        if x.shape[0] >= 4:
            mb.update(x, y)
    for d, acc in lin.items():
        res[f"lin{int(d)}"] = acc.sync().compute()
    res["mat"] = mat.sync().compute()
    res["mb"] = mb.sync().compute()
    # after sync: local accumulation intact, unsync returns to the local value, update invalidates the global view
    acc = lin[True]
    res["local_n"] = torch.tensor(acc.n)
    res["synced_flag"] = torch.tensor(acc.synced)
    acc.unsync()
    if acc.n >= 4:
        res["local_after_unsync"] = acc.compute()
    extra = data[1]  # every rank adds the same extra batch locally, then syncs again
    acc.update(extra[0], extra[1])
    res["synced_after_update"] = torch.tensor(acc.synced)
    res["local_after_extra"] = acc.compute()
    res["global_after_extra"] = acc.sync().compute()
    if HAVE_TM:
        from fastcka.integrations.torchmetrics import CKA

        for d in (False, True):
            m = CKA(unbiased=d)
            for k, (x, y, _) in enumerate(data):
                if owner[k] != rank:
                    continue
                if k % 2 and x.shape[0] >= 4:
                    m(x, y)  # forward: batch value + accumulation
                else:
                    m.update(x, y)
            res[f"tm{int(d)}"] = m.compute()
    return res


def sigma_mismatch(rank: int) -> str:
    """Issue 18 W5: ranks whose minibatch accumulators use different σ must refuse to sync (the error message)."""
    x, y, _ = make_batches()[1]
    acc = MinibatchCKA(kernel="rbf", sigma=1.0 if rank == 0 else 3.0)
    acc.update(x[:40], y[:40])
    try:
        acc.sync()
    except ValueError as e:
        return str(e)
    return "synced"


def _rank_results(rank: int) -> dict:
    return {
        "interleaved": run_scenarios(rank, OWNER),
        "rank1_empty": run_scenarios(rank, [0] * len(SIZES)),
        "sigma_mismatch": sigma_mismatch(rank),
    }


@pytest.fixture(scope="module")
def dist_results(tmp_path_factory):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    return run_on_ranks(_rank_results, WORLD, str(tmp_path_factory.mktemp("dist")), weights_only=False)


def single_process(owner_filter=None, extra_per_rank: int = 0) -> Dict[str, torch.Tensor]:
    """Every batch (and ``extra_per_rank`` copies of the extra batch) through one accumulator of each kind."""
    data = make_batches()
    lin = {d: LinearCKA(unbiased=d) for d in (False, True)}
    mat = LinearCKAMatrix(3, unbiased=True)
    mb = MinibatchCKA()
    for k, (x, y, w) in enumerate(data):
        if owner_filter is not None and not owner_filter(k):
            continue
        for acc in lin.values():
            acc.update(x, y)
        mat.update(x, y, w)
        if x.shape[0] >= 4:
            mb.update(x, y)
    for _ in range(extra_per_rank):
        lin[True].update(data[1][0], data[1][1])
    accs = {"lin0": lin[False], "lin1": lin[True], "mat": mat, "mb": mb}
    return {k: a.compute() for k, a in accs.items() if a.n > 0}


def close(a, b, tol=1e-12):
    return torch.allclose(torch.as_tensor(a, dtype=F64), torch.as_tensor(b, dtype=F64), rtol=tol, atol=tol)


@pytest.mark.parametrize("scenario", ["interleaved", "rank1_empty"])
def test_two_rank_gloo_equals_single_process(dist_results, scenario):
    want = single_process()
    for rank in range(WORLD):
        got = dist_results[rank][scenario]
        for key in ("lin0", "lin1", "mat", "mb"):
            assert close(got[key], want[key]), (scenario, rank, key, got[key], want[key])


def test_compute_after_sync_leaves_local_accumulation_intact(dist_results):
    got = dist_results
    for rank in range(WORLD):
        r = got[rank]["interleaved"]
        assert bool(r["synced_flag"]) and not bool(r["synced_after_update"])
        local = single_process(lambda k, rank=rank: OWNER[k] == rank)
        assert int(r["local_n"]) == sum(s for s, o in zip(SIZES, OWNER) if o == rank)
        assert close(r["local_after_unsync"], local["lin1"])
        local_extra = single_process(lambda k, rank=rank: OWNER[k] == rank, extra_per_rank=1)
        assert close(r["local_after_extra"], local_extra["lin1"])
    # globally: all batches plus one extra batch per rank
    assert close(got[0]["interleaved"]["global_after_extra"], single_process(extra_per_rank=WORLD)["lin1"])
    assert close(got[1]["interleaved"]["global_after_extra"], got[0]["interleaved"]["global_after_extra"])
    # the empty rank, after its one extra batch, holds exactly that batch locally
    e = got[1]["rank1_empty"]
    assert int(e["local_n"]) == 0
    assert close(e["local_after_extra"], single_process(lambda k: False, extra_per_rank=1)["lin1"])


@pytest.mark.skipif(not HAVE_TM, reason="torchmetrics is not installed")
@pytest.mark.parametrize("scenario", ["interleaved", "rank1_empty"])
def test_torchmetrics_adapter_two_ranks_equals_plain_accumulator(dist_results, scenario):
    want = single_process()
    for rank in range(WORLD):
        got = dist_results[rank][scenario]
        assert close(got["tm0"], want["lin0"]) and close(got["tm1"], want["lin1"])


def test_sync_refuses_ranks_with_different_sigma(dist_results):
    for rank in range(WORLD):
        assert "sigma=" in dist_results[rank]["sigma_mismatch"], dist_results[rank]["sigma_mismatch"]

"""Shared harness of the 2-process gloo tests: each rank runs a module-level function and saves what it returns;
the fixture spawns the ranks and loads their results."""

from __future__ import annotations

import os
import socket
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, fn, world: int, port: int, outdir: str) -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.save(fn(rank), os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_on_ranks(fn, world: int, outdir: str, weights_only: bool = True) -> list:
    """fn(rank) on `world` gloo ranks (fn must be a module-level function); the list of what each rank returned."""
    mp.spawn(_worker, args=(fn, world, _free_port(), outdir), nprocs=world, join=True)
    return [torch.load(os.path.join(outdir, f"rank{r}.pt"), weights_only=weights_only) for r in range(world)]

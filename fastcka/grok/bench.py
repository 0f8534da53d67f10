"""Training-step speed of the grokking trainer: steps/s of the plain and the fast forward.

    python -m fastcka.grok.bench [--p 59] [--train-frac 0.4] [--threads 1] [--steps 100]

Times full-batch AdamW updates (forward, backward, step; no logging) after a few warm-up steps, with subnormals
flushed as in the trainer, and prints one line per forward.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from .train import TrainConfig, build


def steps_per_second(cfg: TrainConfig, steps: int = 100, warmup: int = 10) -> float:
    torch.set_flush_denormal(True)
    ds, model, opt, _ = build(cfg, torch.device("cpu" if cfg.device == "auto" else cfg.device))
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        logits, _ = model(ds.train_x, fast=cfg.fast)
        loss = F.cross_entropy(logits, ds.train_y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="add")
    ap.add_argument("--p", type=int, default=59)
    ap.add_argument("--train-frac", type=float, default=0.4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=100)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    for fast in (False, True):
        cfg = TrainConfig(task=a.task, p=a.p, train_frac=a.train_frac, fast=fast, device="cpu")
        rate = steps_per_second(cfg, a.steps)
        print(f"{a.task} p={a.p} train {a.train_frac:.0%}, {a.threads} thread(s), {'fast' if fast else 'plain'} "
              f"forward: {rate:.1f} steps/s  (torch {torch.__version__})")


if __name__ == "__main__":
    main()

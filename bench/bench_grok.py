"""The grokking trainer (fastcka grok / fastcka study): one full-batch training step, and one log row.

Cases: the demo's fast regime (addition mod 59, train fraction 0.4: 1,392 examples) and the pilot's regime (addition
mod 97, train fraction 0.3: 2,823 examples), the trainer's default model (2 blocks, d_model 128, d_mlp 512), float32.
Rows: fast (one AdamW update with the fast forward of fastcka/grok/model.py: forward, backward, step), plain (the
same update with the plain forward — the plain-torch baseline, computing the same function), log_row (one logged
row of the trainer: the test forward, Ô01 over all training inputs, Fourier concentration of W_E, the weight norm and
the spectral entropy; the trainer pays it every 25 steps). A study run is ~10⁴ steps, so steps/s = 1 / median is
what sets the study's cost. extra_info: steps_per_s (the step rows). The × plain torch column of log_row is its time
over the plain step's; over the fast step's, divide the two medians.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import _common
from fastcka.grok.train import TrainConfig, build, measure

CASES = {"add_p59_f0.4": dict(p=59, train_frac=0.4, lr=3e-3), "add_p97_f0.3": dict(p=97, train_frac=0.3, lr=1e-3)}


def _setup(case: str, fast: bool):
    torch.manual_seed(0)
    cfg = TrainConfig(task="add", device="cpu", fast=fast, **CASES[case])
    ds, model, opt, probe = build(cfg, torch.device("cpu"))

    def step():
        logits, resid = model(ds.train_x, fast=cfg.fast)
        loss = F.cross_entropy(logits, ds.train_y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return logits, resid, loss

    return cfg, ds, model, probe, step


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("impl", ["fast", "plain", "log_row"])
def test_grok_step(benchmark, impl, case):
    torch.set_flush_denormal(True)  # as the trainer does (reset at the end: later suites must not inherit it)
    benchmark.group = f"grok {case} cpu"
    cfg, ds, model, probe, step = _setup(case, fast=impl != "plain")
    for _ in range(5):  # past the first steps' allocations
        logits, resid, loss = step()
    if impl == "log_row":
        detached = [r.detach() for r in resid]
        fn = lambda: measure(cfg, ds, model, probe, 5, loss.detach(), logits.detach(), detached, None,  # noqa: E731
                             loss.detach())
    else:
        fn = step
    try:
        _common.run(benchmark, fn, "cpu", rounds_=_common.rounds(10, 30), warmup=2)
    finally:
        torch.set_flush_denormal(False)
    med = benchmark.stats.stats.median
    _common.record(benchmark, family="grok", case=case, impl=impl, device="cpu", dtype="float32",
                   threads=torch.get_num_threads(), steps_per_s=(1.0 / med) if impl != "log_row" else None,
                   n_train=int(ds.train_x.shape[0]))

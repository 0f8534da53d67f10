"""fastcka.compare on two models over a DataLoader: the overhead of measuring, and the peers' model-comparison APIs.

Two encoders built from torch.nn (no download): A = 4 TransformerEncoderLayers of width 128, B = 6 of width 96,
(n, T = 16, 32) float32 inputs, 512 examples in batches of 64; every encoder layer of both is hooked (4 × 6 pairs).

Timed (interleaved rounds, so that load from other processes hits every mode alike; medians of wall and process
CPU time):
  bare             the same two forward passes over the loader, eval mode, inference_mode, no hooks
  exact            fastcka.compare(estimator="exact", reduce="mean")        (the overhead goal: ≤ 15 % over bare)
  minibatch        fastcka.compare(estimator="minibatch", reduce="mean")
  minibatch-flat   fastcka.compare(estimator="minibatch", reduce="flatten")  (the representation the peers use)
  cka_pytorch      cka-pytorch 1.1.3 CKACalculator(...).calculate_cka_matrix(loader, num_epochs=1) (its default
                   hook_recursive=True: with False it hooks nothing under a ModuleList)
  torch_cka        torch-cka 0.21 CKA(...).compare(loader) under torch.no_grad()
Peak memory: each mode once in a fresh process (peak RSS beyond the models and data, /proc/self/clear_refs).

Values (a smaller T = 4 so that the exact flattened answer fits): every cell against the exact CKA of the whole set
on the flattened outputs (fastcka.compare, estimator="exact", reduce="flatten"; itself equal to fastcka.cka on the
concatenated activations, tests/test_compare.py). The peers compute Nguyen et al.'s minibatch CKA on flattened
outputs, so they are also compared with fastcka's minibatch estimator on the same batches.

    python bench/bench_compare.py [rounds]     # the tables below (one short run)
    pytest bench/bench_compare.py --benchmark-only

Measured here (``FASTCKA_BENCH_THREADS=1 python bench/bench_compare.py 5``; 2-core CPU shared with other jobs at
load average ~10, so wall times are inflated ~3x: read the CPU-time medians), torch 2.13.0+cpu, 09:55 UTC run:

  mode            cpu median   overhead (cpu)   peak RSS beyond models+data
  bare              310 ms          —              +17 MB
  exact             350 ms        +13.1 %          +24 MB
  minibatch         323 ms         +4.3 %          +19 MB
  minibatch-flat    627 ms       +102 %            +41 MB   (float64 Grams of 2,048-wide flattened outputs)
  cka_pytorch       305 ms         -1.6 %          +23 MB   (flattened outputs, float32 Grams)
  torch_cka         354 ms        +14.5 %          +29 MB   (flattened outputs, float32, .item() per HSIC)

  An earlier run of the same script at load ~8.7 (before the minibatch estimator used the HSIC-matrix op) gave
  exact +27.5 %, minibatch +26.5 %, cka_pytorch +23.5 %, torch_cka +47.6 %: the run-to-run spread at this load is
  as large as the overheads themselves. Of the exact estimator's own cost, the end-of-run CKA of the 24 pairs is
  ~35-55 ms and the 8 float64 moment updates ~13-18 ms (timed alone).

  values (T = 4, flattened): the peers agree with fastcka's minibatch estimator to 2.3e-7 (cka-pytorch) and
  5.3e-7 (torch-cka) on the same batches; every minibatch number (theirs and ours) is up to 0.060 away from the
  exact CKA of the whole set, which only the exact estimator gives. With the hooked activations shifted by 1e3,
  cka-pytorch returns NaN cells and torch-cka raises "HSIC computation resulted in NANs"; fastcka's exact and
  minibatch matrices move by at most 2.2e-7 and 3.9e-7 (the float32 rounding of h + 1e3 itself).

Re-measure on an idle machine before quoting a figure.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

import fastcka  # noqa: E402

N, BATCH, D_IN = 512, 64, 32
LAYERS = "taps.*"
HAVE = {p: importlib.util.find_spec(p) is not None for p in ("cka_pytorch", "torch_cka")}


class Tap(nn.Module):
    """The hooked point after each encoder layer: its input plus ``offset`` (a mean that many times the spread of
    the LayerNorm'ed stream; 0 in the timed runs). The result only feeds the hooks."""

    def __init__(self, offset: float):
        super().__init__()
        self.offset = offset

    def forward(self, h):
        return h + self.offset if self.offset else h


class Encoder(nn.Module):
    def __init__(self, depth: int, width: int, seed: int, offset: float = 0.0):
        super().__init__()
        torch.manual_seed(seed)
        self.inp = nn.Linear(D_IN, width)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(width, 4, 2 * width, dropout=0.1, batch_first=True) for _ in range(depth))
        self.taps = nn.ModuleList(Tap(offset) for _ in range(depth))
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        h = self.inp(x)
        for layer, tap in zip(self.layers, self.taps):
            h = layer(h)
            tap(h)
        return self.head(h.mean(1))


def setup(t: int = 16, seed: int = 0, n: int = N, offset: float = 0.0):
    a, b = Encoder(4, 128, seed, offset), Encoder(6, 96, seed + 1, offset)
    g = torch.Generator().manual_seed(seed + 2)
    x = torch.randn(n, t, D_IN, generator=g)
    loader = DataLoader(TensorDataset(x, torch.zeros(n, dtype=torch.long)), batch_size=BATCH)
    return a, b, loader


def layer_names(m: nn.Module):
    return [f"taps.{i}" for i in range(len(m.taps))]


def mode_fn(mode: str, a: nn.Module, b: nn.Module, loader) -> Callable[[], Any]:
    """A no-argument callable running ``mode`` once (fresh peer objects per call: their hooks stay on the model)."""
    if mode == "bare":
        def bare():
            a.eval(), b.eval()
            with torch.inference_mode():
                for x, _ in loader:
                    a(x), b(x)
        return bare
    if mode in ("exact", "minibatch", "minibatch-flat"):
        kw = dict(estimator="exact" if mode == "exact" else "minibatch",
                  reduce="flatten" if mode.endswith("flat") else "mean")
        return lambda: fastcka.compare(a, b, loader, layers_a=LAYERS, layers_b=LAYERS, progress=False, **kw).matrix
    if mode == "cka_pytorch":
        from cka_pytorch.cka import CKACalculator

        def run_cka_pytorch():
            ma, mb = copy.deepcopy(a), copy.deepcopy(b)
            calc = CKACalculator(ma, mb, model1_layers=layer_names(ma), model2_layers=layer_names(mb), verbose=False)
            return calc.calculate_cka_matrix(loader, num_epochs=1).detach().to(torch.float64)
        return run_cka_pytorch
    if mode == "torch_cka":
        from torch_cka import CKA

        def run_torch_cka():
            ma, mb = copy.deepcopy(a), copy.deepcopy(b)
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                c = CKA(ma, mb, "A", "B", model1_layers=layer_names(ma), model2_layers=layer_names(mb))
                import contextlib
                import io

                with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar cannot be turned off
                    c.compare(loader)
            return c.hsic_matrix.to(torch.float64)
        return run_torch_cka
    raise ValueError(mode)


def modes():
    return ["bare", "exact", "minibatch", "minibatch-flat"] + [p for p in ("cka_pytorch", "torch_cka") if HAVE[p]]


def interleaved(rounds: int = 5, warmup: int = 1) -> Dict[str, Dict[str, float]]:
    a, b, loader = setup()
    fns = {m: mode_fn(m, a, b, loader) for m in modes()}
    wall = {m: [] for m in fns}
    cpu = {m: [] for m in fns}
    for r in range(warmup + rounds):
        for m, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            if r >= warmup:
                wall[m].append(time.perf_counter() - t0)
                cpu[m].append(time.process_time() - c0)
    med = statistics.median
    return {m: {"wall": med(wall[m]), "cpu": med(cpu[m]), "min": min(wall[m])} for m in fns}


def peak_mb(mode: str) -> Optional[float]:
    """Peak RSS (MB) of one run of ``mode`` beyond the models and data, in a fresh process."""
    out = subprocess.run([sys.executable, __file__, "--mem", mode], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])["extra_mb"]


def _mem_main(mode: str) -> None:
    _common.setup_threads()
    a, b, loader = setup()
    fn = mode_fn(mode, a, b, loader)
    _common.reset_peak_rss()  # the peak mark starts at the RSS with models and data built
    before = _common.maxrss_mb()
    fn()
    print(json.dumps({"extra_mb": _common.maxrss_mb() - before}))


def values(offset: float = 0.0) -> Dict[str, Dict[str, float]]:
    """Max |Δ| of each method against the exact flattened answer and against fastcka's minibatch (T = 4), with the
    hooked activations shifted by ``offset``."""
    a, b, loader = setup(t=4, seed=3, offset=offset)
    exact = fastcka.compare(a, b, loader, layers_a=LAYERS, layers_b=LAYERS, reduce="flatten", progress=False).matrix
    ours = mode_fn("minibatch-flat", a, b, loader)()
    out = {"fastcka minibatch": {"vs_exact": (ours - exact).abs().max().item(), "vs_minibatch": 0.0}}
    for p in ("cka_pytorch", "torch_cka"):
        if HAVE[p]:
            try:
                m = mode_fn(p, a, b, loader)()
            except Exception as e:  # noqa: BLE001 - a peer failing is a result too
                out[p] = {"error": f"{type(e).__name__}: {str(e)[:80]}"}
                continue
            out[p] = {"vs_exact": (m - exact).abs().max().item(), "vs_minibatch": (m - ours).abs().max().item()}
    return out


def report(stats, mems, vals, vals_offset) -> str:
    lines = [f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), cpu; A 4×128, B 6×96, T 16, "
             f"n {N} in batches of {BATCH}; {len(stats)} modes"]
    bare = stats["bare"]
    for m, s in stats.items():
        extra = "" if m == "bare" else (f"  overhead: wall {100 * (s['wall'] / bare['wall'] - 1):+6.1f} %, "
                                        f"cpu {100 * (s['cpu'] / bare['cpu'] - 1):+6.1f} %")
        mem = mems.get(m)
        lines.append(f"{m:15s} wall median {s['wall'] * 1e3:8.1f} ms (min {s['min'] * 1e3:8.1f}), cpu median "
                     f"{s['cpu'] * 1e3:8.1f} ms, peak +{'?' if mem is None else f'{mem:.0f}'} MB{extra}")
    for title, vs in (("", vals), (", hooked activations + 1e3", vals_offset)):
        lines.append(f"values (T = 4, flattened outputs{title}), max |Δ| over the 4 × 6 cells:")
        for k, v in vs.items():
            if "error" in v:
                lines.append(f"  {k:18s} failed: {v['error']}")
            else:
                lines.append(f"  {k:18s} vs the exact answer {v['vs_exact']:.2e}; vs fastcka minibatch "
                             f"{v['vs_minibatch']:.2e}")
    return "\n".join(lines)


def main(argv) -> None:
    if len(argv) >= 2 and argv[0] == "--mem":
        _mem_main(argv[1])
        return
    rounds = int(argv[0]) if argv else 5
    _common.setup_threads()
    stats = interleaved(rounds)
    mems = {m: peak_mb(m) for m in stats}
    print(report(stats, mems, values(), values(offset=1e3)))


# ---------------------------------------------------------------------------------------------------------------
# pytest-benchmark (quick: the exact estimator against the bare forward passes)
# ---------------------------------------------------------------------------------------------------------------

try:
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="module")
    def models():
        return setup(n=N if _common.FULL else 2 * BATCH)  # quick mode: 2 batches (make bench stays short)

    @pytest.mark.parametrize("mode", ["bare", "exact", "minibatch"])
    def test_compare_two_encoders(benchmark, models, mode):
        benchmark.group = "fastcka.compare: A 4x128 vs B 6x96 encoders, batches of 64"
        benchmark.extra_info["mode"] = mode
        benchmark.pedantic(mode_fn(mode, *models), rounds=_common.rounds(2, 10), iterations=1, warmup_rounds=1)


if __name__ == "__main__":
    main(sys.argv[1:])

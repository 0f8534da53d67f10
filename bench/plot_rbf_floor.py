"""RBF CKA against its GEMM floor as n grows (issue 23): time / floor for the exact-median path (what
``fastcka.cka(x, y, kernel="rbf")`` does by default: Kornblith et al.'s median over all n² squared distances, then the
fused pass) and for the σ-given path (the fused pass alone), n = 2¹¹ … 2¹⁷.

    python bench/plot_rbf_floor.py                  # n = 2¹¹ … 2¹⁴, p = 64 and 256 (a few minutes on 2 cores)
    FASTCKA_BENCH_FULL=1 python bench/plot_rbf_floor.py   # n up to 2¹⁷ (p = 64) and 2¹⁵ (p = 256): about 15 min

The floor is the work no RBF CKA can skip: the Gram products X·Xᵀ and Y·Yᵀ in float32 (as in bench_kernel.py). Where
an n×n float32 product does not fit comfortably in memory (n > 2¹⁴) it is timed in row blocks of 2²⁴ entries (the same
multiply-adds, nothing stored). Each point: median of up to three calls after a warm-up (a call over 20 s is timed
once: its warm-up). Outputs: bench/rbf_floor.png and bench/rbf_floor.json. float32 inputs from cases.correlated_pair, torch
threads from FASTCKA_BENCH_THREADS (default: all cores).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import _common  # noqa: E402
import cases  # noqa: E402
import fastcka  # noqa: E402

OUT = _common.BENCH_DIR
BLOCK_ENTRIES = 1 << 24


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()  # warm-up, and the one measurement of a call over 20 s
    first = time.perf_counter() - t0
    if first > 20.0:
        return first
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if times[-1] > 20.0:
            break
    return statistics.median(times)


def floor_fn(x: torch.Tensor, y: torch.Tensor):
    n = x.shape[0]
    if n <= 1 << 14:
        return lambda: (x @ x.T, y @ y.T)
    rows = max(1, BLOCK_ENTRIES // n)

    def blocks():
        for z in (x, y):
            for i in range(0, n, rows):
                z[i : i + rows] @ z.T

    return blocks


def main() -> None:
    _common.setup_threads()
    series = {64: range(11, 18 if _common.FULL else 15), 256: range(11, 16 if _common.FULL else 15)}
    rows = []
    for p, exps in series.items():
        for e in exps:
            n = 1 << e
            x, y = cases.correlated_pair(n, p, p)
            sx = fastcka.functional.rbf_gamma(x)  # σ-given path: the same bandwidth, passed in
            sy = fastcka.functional.rbf_gamma(y)
            sigma = ((0.5 / sx).sqrt().item(), (0.5 / sy).sqrt().item())
            floor = timed(floor_fn(x, y))
            given = timed(lambda: fastcka.cka(x, y, kernel="rbf", sigma=sigma))
            median = timed(lambda: fastcka.cka(x, y, kernel="rbf"))
            row = {"n": n, "p": p, "floor_s": floor, "sigma_given_s": given, "exact_median_s": median,
                   "sigma_given_x_floor": given / floor, "exact_median_x_floor": median / floor}
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = {"machine": _common.machine(), "threads": torch.get_num_threads(), "rows": rows}
    (OUT / "rbf_floor.json").write_text(json.dumps(out, indent=1) + "\n")

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for p, style in ((64, "o"), (256, "s")):
        pts = [r for r in rows if r["p"] == p]
        ns = [r["n"] for r in pts]
        ax.plot(ns, [r["exact_median_x_floor"] for r in pts], style + "-", label=f"exact median, p = q = {p}")
        ax.plot(ns, [r["sigma_given_x_floor"] for r in pts], style + "--", label=f"σ given, p = q = {p}")
    ax.axhline(1.5, color="grey", lw=0.8, ls=":", label="goal: 1.5× the floor")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("n (examples)")
    ax.set_ylabel("time / GEMM floor (X·Xᵀ and Y·Yᵀ)")
    ax.set_title(f"RBF CKA against its GEMM floor, float32, {torch.get_num_threads()} threads")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "rbf_floor.png", dpi=120)
    print(f"wrote {OUT / 'rbf_floor.png'} and {OUT / 'rbf_floor.json'}")


if __name__ == "__main__":
    main()

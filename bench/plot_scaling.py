"""Scaling of fastcka's CKA against n and p, with the feature/sample crossover marked; writes PNGs and a JSON.

    python bench/plot_scaling.py            # quick grid (about a minute on 2 cores)
    FASTCKA_BENCH_FULL=1 python bench/plot_scaling.py   # n up to 10⁵, p up to 8192

Outputs in bench/: scaling_n.png (time and peak extra memory against n: linear CKA by path at p = q = 256, RBF CKA
at p = q = 64, plain-torch explicit-Gram RBF for comparison), scaling_p.png (time against p = q at n = 2048: the
feature path grows as p², the sample path as p; the crossover predicted by the multiply counts, p = 2n/3, and the
measured one are marked; "auto" should follow the lower envelope), scaling.json (the numbers).
Each point: median of a few calls after one warm-up (a call slower than a quarter of the budget is timed once, and a
series stops after a call over the budget: 20 s in full mode, 3 s in quick); peak memory = VmHWM − RSS before the call (the peak mark reset
through /proc/self/clear_refs), in the same process. float32, torch threads as in _common (FASTCKA_BENCH_THREADS).
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
BUDGET_S = 20.0 if _common.FULL else 3.0  # stop a series once one call takes longer than this


def measure(fn, reps):
    _common.reset_peak_rss()
    base = _common.maxrss_mb()
    t = time.perf_counter()
    fn()  # warm-up (also the only call when it is slow)
    t = time.perf_counter() - t
    if t > BUDGET_S / 4:
        return t, _common.maxrss_mb() - base
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), _common.maxrss_mb() - base


def series(name, sizes, make, reps, limit=None):
    out = []
    for s in sizes:
        if limit is not None and s > limit:
            break
        fn = make(s)
        t, m = measure(fn, reps)
        out.append({"size": s, "seconds": t, "extra_mb": m})
        print(f"  {name:>18} {s:>7}: {t * 1e3:10.1f} ms  {m:8.1f} MB", flush=True)
        if t > BUDGET_S:
            break
    return out


def main():
    threads = _common.setup_threads()
    full = _common.FULL
    reps = 3 if full else 2
    res = {"machine": _common.machine(), "threads": threads}

    # --- against n ----------------------------------------------------------------------------------------------
    ns = [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 100000] if full else [512, 1024, 2048, 4096, 8192]
    p = 256
    pairs = {}

    def lin(method):
        def make(n):
            if n not in pairs:
                pairs.clear()
                pairs[n] = cases.correlated_pair(n, p, p)
            x, y = pairs[n]
            return lambda: fastcka.cka(x, y, method=method)
        return make

    print(f"linear CKA against n (p = q = {p})")
    res["n_linear"] = {m: series(f"linear {m}", ns, lin(m), reps, limit=16384 if m == "sample" else None)
                       for m in ("auto", "feature", "sample", "tiled")}
    pr = 64
    rbf_pairs = {}

    def rbf(kind):
        def make(n):
            if n not in rbf_pairs:
                rbf_pairs.clear()
                rbf_pairs[n] = cases.correlated_pair(n, pr, pr)
            x, y = rbf_pairs[n]
            if kind == "fastcka":
                return lambda: fastcka.cka(x, y, kernel="rbf")
            return lambda: cases.torch_rbf_cka(x, y)
        return make

    print(f"RBF CKA against n (p = q = {pr})")
    ok, why = cases.fastcka_rbf_available()
    res["n_rbf"] = {"fastcka": series("rbf fastcka", ns, rbf("fastcka"), reps) if ok else [],
                    "torch_gram": series("rbf torch_gram", ns, rbf("torch"), reps, limit=16384 if full else 8192)}

    # --- against p ----------------------------------------------------------------------------------------------
    n = 2048
    ps = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192] if full else [16, 64, 256, 512, 1024, 2048, 4096]
    ppairs = {}

    def linp(method):
        def make(pp):
            if pp not in ppairs:
                ppairs.clear()
                ppairs[pp] = cases.correlated_pair(n, pp, pp)
            x, y = ppairs[pp]
            return lambda: fastcka.cka(x, y, method=method)
        return make

    print(f"linear CKA against p = q (n = {n})")
    res["p_linear"] = {m: series(f"linear {m}", ps, linp(m), reps) for m in ("auto", "feature", "sample", "tiled")}
    res["p_crossover_predicted"] = 2 * n / 3
    f = {d["size"]: d["seconds"] for d in res["p_linear"]["feature"]}
    s = {d["size"]: d["seconds"] for d in res["p_linear"]["sample"]}
    common = sorted(set(f) & set(s))
    res["p_crossover_measured"] = next((pp for pp in common if f[pp] > s[pp]), None)
    (OUT / "scaling.json").write_text(json.dumps(res, indent=1))
    plot(res, n, p, pr)


def plot(res, n, p, pr):
    m = res["machine"]
    title = f"{m['cpu']} ×{m['cores']}, torch {m['torch']}, {res['threads']} threads, float32"
    styles = {"auto": ("k", "-", "o"), "feature": ("tab:blue", "--", "s"), "sample": ("tab:orange", "--", "^"),
              "tiled": ("tab:green", ":", "d"), "fastcka": ("tab:red", "-", "o"), "torch_gram": ("tab:gray", "--", "x")}

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for key, label in (("n_linear", f"linear, p=q={p}"), ("n_rbf", f"RBF, p=q={pr}")):
        for meth, pts in res[key].items():
            if not pts:
                continue
            c, ls, mk = styles[meth]
            lab = f"{label}: {meth if key == 'n_linear' else ('fastcka (tiled)' if meth == 'fastcka' else 'plain torch n×n')}"
            lw = 2.2 if key == "n_rbf" else 1.3
            col = c if key == "n_linear" else ("tab:red" if meth == "fastcka" else "tab:brown")
            axes[0].loglog([d["size"] for d in pts], [d["seconds"] for d in pts], color=col, ls=ls, marker=mk, lw=lw,
                           label=lab)
            axes[1].loglog([d["size"] for d in pts], [max(d["extra_mb"], 0.1) for d in pts], color=col, ls=ls,
                           marker=mk, lw=lw, label=lab)
    axes[0].axvline(1.5 * p, color="tab:purple", lw=0.8, alpha=0.6)
    axes[0].text(1.5 * p, axes[0].get_ylim()[1], " feature/sample\n crossover n=1.5p", va="top", fontsize=7,
                 color="tab:purple")
    axes[0].set(xlabel="n (examples)", ylabel="median time per CKA (s)", title="time against n")
    axes[1].set(xlabel="n (examples)", ylabel="peak extra RSS of the call (MB)", title="memory against n")
    axes[1].axhline(256, color="k", lw=0.6, ls=":")
    axes[1].text(axes[1].get_xlim()[0], 256, " 256 MB", fontsize=7, va="bottom")
    for a in axes:
        a.grid(True, which="both", alpha=0.3)
        a.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(OUT / "scaling_n.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.6))
    for meth, pts in res["p_linear"].items():
        c, ls, mk = styles[meth]
        ax.loglog([d["size"] for d in pts], [d["seconds"] for d in pts], color=c, ls=ls, marker=mk,
                  lw=2.2 if meth == "auto" else 1.3, label=f"linear {meth}")
    ax.axvline(res["p_crossover_predicted"], color="tab:purple", lw=0.8)
    ax.text(res["p_crossover_predicted"], ax.get_ylim()[1], " predicted\n crossover\n p=2n/3", va="top", fontsize=7,
            color="tab:purple")
    if res["p_crossover_measured"]:
        ax.axvline(res["p_crossover_measured"], color="tab:purple", lw=0.8, ls="--")
        ax.text(res["p_crossover_measured"], ax.get_ylim()[0], f" first measured p\n with sample < feature: {res['p_crossover_measured']}",
                va="bottom", fontsize=7, color="tab:purple")
    ax.set(xlabel="p = q (features)", ylabel="median time per CKA (s)", title=f"linear CKA against p (n = {n})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(OUT / "scaling_p.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--replot":
        r = json.loads((OUT / "scaling.json").read_text())
        plot(r, 2048, 256, 64)
    else:
        main()

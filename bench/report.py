"""Markdown tables from a pytest-benchmark JSON of the suites (all ratios within one run):

    FASTCKA_BENCH_FULL=1 python -m pytest bench --benchmark-only -o addopts="" --benchmark-json=bench/results.json
    python bench/report.py bench/results.json > bench/results_tables.md

Per group (family, case, device): median; × floor (median / the floor row's median); × plain torch (the plain-torch
formula of the same path: torch_feature for the feature path, torch_gram for the sample path and for RBF); × best
peer (the fastest peer computing the same estimator); peak extra RSS of the call in a subprocess; relative error
against the float64 reference on the same input and on the shifted input (mean 10⁴ × spread).
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

PEERS = ("ckatorch", "cka_pytorch", "torch_cka", "repsim")


def fmt_t(s):
    if s is None:
        return "–"
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def fmt_r(r):
    return "–" if r is None else f"{r:.2f}×"


def fmt_e(e, v=None):
    if e is None:
        return "–"
    if not math.isfinite(e):
        return "NaN result" if v is not None and not math.isfinite(v) else "∞"
    return f"{e:.1e}"


def fmt_m(m):
    if not m:
        return "–"
    if "error" in m:
        return m["error"]
    return f"{m['extra_mb']:.0f} MB"


def main(path: str) -> None:
    data = json.loads(Path(path).read_text())
    mi = data["machine_info"].get("fastcka", {})
    print(f"Machine: {mi.get('cpu')}, {mi.get('cores')} cores, torch {mi.get('torch')} ({mi.get('blas')}), "
          f"{mi.get('torch_threads')} torch threads, Python {mi.get('python')}, {mi.get('mode')} mode, "
          f"load average at start {mi.get('loadavg_at_start')}; run {data.get('datetime', '?')}.\n")
    groups = defaultdict(dict)
    for b in data["benchmarks"]:
        e = b["extra_info"]
        if "family" not in e:
            continue
        groups[(e["family"], e["case"], e["device"])][e["impl"]] = (b["stats"]["median"], b["stats"]["rounds"], e)
    for (family, case, device), rows in groups.items():
        floor = rows.get("floor", (None,))[0]
        path = next((r[2].get("path") for r in rows.values() if r[2].get("path")), None)
        plain_name = {"streaming": "torch_f64", "frequency": "torch_fft", "grok": "plain"}.get(
            family, "torch_feature" if (family == "linear" and path == "feature") else "torch_gram")
        plain = rows.get(plain_name, (None,))[0]
        print(f"#### {family} {case} ({device}{', ' + path + ' path' if path else ''})\n")
        print("| row | estimator | median | rounds | × floor | × plain torch | × best peer | peak extra RSS | "
              "rel. error | rel. error, mean 10⁴×spread |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for impl, (med, rounds, e) in rows.items():
            est = e.get("estimator", "–")
            best = [r[0] for k, r in rows.items() if k in PEERS and r[2].get("estimator") == est and k != impl]
            bp = min(best) if best else None
            name = impl + (f" ({plain_name}: plain torch)" if impl == plain_name else "")
            extra = f" (call alone {e['call_seconds']:.1f} s)" if "call_seconds" in e else ""
            print(f"| {name} | {est} | {fmt_t(med)}{extra} | {rounds} | {fmt_r(med / floor if floor else None)} | "
                  f"{fmt_r(med / plain if plain else None)} | {fmt_r(med / bp if bp else None)} | {fmt_m(e.get('mem'))} | "
                  f"{fmt_e(e.get('err'), e.get('value'))} | {fmt_e(e.get('err_shift'), e.get('value_shift'))} |")
        print()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parent / "results.json"))

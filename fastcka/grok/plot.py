"""One PNG per run: accuracies, Ô01 (raw and smoothed) with the detector's events, and the other progress measures.

Panels share the step axis (log-x with ``logx=True``). Vertical lines mark memorisation (grey), the alarm (red),
the grok step (green) and, for a run that diverged, its first non-finite step (purple); dotted grey ticks along the
Ô01 panel mark train-loss spikes. Non-finite values (a diverged run) are left out of the lines.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from .detect import Detector, DetectorConfig


def plot_run(rows: list[dict], summary: dict, path: Path | str, logx: bool = False,
             detector: Optional[DetectorConfig] = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = summary["config"]
    det = Detector(detector or DetectorConfig(**cfg["detector"]))
    for r in rows:
        det.update(r["step"], r["o01"], r["train_acc"], r["train_loss_max"])
    d = det.result
    steps = [max(r["step"], 1) if logx else r["step"] for r in rows]
    col = lambda k: [r[k] if math.isfinite(r[k]) else math.nan for r in rows]  # inf would stretch an axis

    fig, (ax_acc, ax_o, ax_m) = plt.subplots(3, 1, figsize=(9, 9), sharex=True,
                                             gridspec_kw={"height_ratios": [1, 1.2, 1]})
    ax_acc.plot(steps, col("train_acc"), label="train acc", color="tab:blue")
    ax_acc.plot(steps, col("test_acc"), label="test acc", color="tab:orange")
    ax_acc.set_ylabel("accuracy")
    ax_loss = ax_acc.twinx()
    ax_loss.semilogy(steps, col("train_loss_max"), color="tab:blue", alpha=0.25, lw=0.8, label="train loss (max)")
    ax_loss.set_ylabel("train loss", color="tab:blue", alpha=0.6)

    ax_o.plot(steps, col("o01"), color="tab:green", alpha=0.35, lw=1, label="Ô01 raw")
    ax_o.plot(steps, d.smoothed, color="tab:green", lw=2, label="Ô01 smoothed")
    if d.minimum is not None:
        rise = cfg["detector"]["rise"] * cfg["detector"]["direction"]
        ax_o.axhline(d.minimum, color="tab:green", ls=":", lw=1, label="running minimum")
        ax_o.axhline(d.minimum + rise, color="tab:red", ls=":", lw=1, label=f"minimum + {rise:g}")
    for s in d.spike_steps:
        ax_o.axvline(s, color="grey", ls=":", lw=0.8)
    ax_o.set_ylabel("Ô01 (CKA block 0 vs 1)")

    def unit(xs: list[float]) -> list[float]:
        finite = [x for x in xs if math.isfinite(x)]
        top = max(abs(x) for x in finite) if finite else 1.0
        return [x / top if top else x for x in xs]

    for key, label in [("fourier", "Fourier concentration of W_E"), ("weight_norm", "weight norm / max"),
                       ("spec_entropy", "spectral entropy / max"), ("test_loss", "test loss / max")]:
        ax_m.plot(steps, unit(col(key)), label=label)
    ax_m.set_ylabel("progress measures")
    ax_m.set_xlabel("step")

    diverged = summary.get("diverged") or {}
    events = [(summary.get("memorised_step"), "grey", "memorised"), (summary.get("alarm_step"), "tab:red", "alarm"),
              (summary.get("grok_step"), "tab:green", "grokked"), (diverged.get("step"), "tab:purple", "diverged")]
    for ax in (ax_acc, ax_o, ax_m):
        for s, c, label in events:
            if s is not None:
                ax.axvline(max(s, 1) if logx else s, color=c, lw=1.2, alpha=0.8, label=label if ax is ax_acc else None)
        if logx:
            ax.set_xscale("log")
    ax_acc.legend(loc="center right", fontsize=8)
    ax_o.legend(loc="lower right", fontsize=8)
    ax_m.legend(loc="lower right", fontsize=8)
    what = cfg["task"] + (f" p={cfg['p']}" if cfg["task"] != "parity" else f" n={cfg['n_bits']} k={cfg['k']}")
    lead = summary.get("lead")
    ax_acc.set_title(f"{what}, train {cfg['train_frac']:.0%}, seed {cfg['seed']}: alarm "
                     f"{summary.get('alarm_step') if summary.get('alarm_step') is not None else 'none'}, grok "
                     f"{summary.get('grok_step') if summary.get('grok_step') is not None else 'none'}"
                     + (f", lead {lead}" if lead is not None else "")
                     + (f", DIVERGED at step {diverged['step']}" if diverged else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

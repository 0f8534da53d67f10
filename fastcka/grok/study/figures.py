"""The report's figures: small multiples of every run, and the lead time of every signal (matplotlib, imported
lazily)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from ..detect import Detector, DetectorConfig
from .analysis import SIGNALS
from .fmt import fmt_num
from .verdicts import PILOT


def plot_runs(runs: Sequence[dict], facts: Sequence[dict], path: Path) -> None:
    """Small multiples: Ô01 (raw, thin; smoothed, thick) and train/test accuracy per run, with the memorisation
    (grey), Ô01 alarm (red) and grok (green) lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(runs)
    ncols = min(4, max(1, n))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, run, f in zip(axes.flat, runs, facts):
        rows = run["rows"]
        steps = [r["step"] for r in rows]
        d = Detector(DetectorConfig(**f["config"]["detector"]))
        for r in rows:
            d.update(r["step"], r["o01"], r["train_acc"], r["train_loss_max"])
        ax.plot(steps, [r["o01"] for r in rows], color="tab:green", alpha=0.3, lw=0.8)
        ax.plot(steps, d.result.smoothed, color="tab:green", lw=1.6, label="Ô01 (smoothed)")
        ax.set_ylim(0, 1.02)
        ax2 = ax.twinx()
        ax2.plot(steps, [r["train_acc"] for r in rows], color="tab:blue", lw=0.9, label="train acc")
        ax2.plot(steps, [r["test_acc"] for r in rows], color="tab:orange", lw=0.9, label="test acc")
        ax2.set_ylim(0, 1.02)
        ax2.set_yticklabels([])
        for s in d.result.spike_steps:
            ax.axvline(s, color="grey", ls=":", lw=0.6)
        for s, c in ((f["memorised"], "grey"), (f["alarms"]["o01"], "tab:red"), (f["grok"], "tab:green")):
            if s is not None:
                ax.axvline(s, color=c, lw=1.2)
        ax.set_title(f"{f['regime']} · {f['role']} · {f['name']}\nÔ01 alarm {fmt_num(f['alarms']['o01'])}, grok "
                     f"{fmt_num(f['grok'])}", fontsize=8)
        ax.tick_params(labelsize=7)
    h1, l1 = axes.flat[0].get_legend_handles_labels()
    fig.legend(h1 + [plt.Line2D([], [], color="tab:blue"), plt.Line2D([], [], color="tab:orange"),
                     plt.Line2D([], [], color="tab:red"), plt.Line2D([], [], color="tab:green", lw=1.2),
                     plt.Line2D([], [], color="grey", ls=":")],
               l1 + ["train acc (right)", "test acc (right)", "Ô01 alarm", "grok step", "train-loss spike"],
               loc="lower center", ncol=7, fontsize=8)
    fig.tight_layout(rect=(0, 0.04 if nrows > 1 else 0.08, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)


SHARE_FLOOR = -1.5  # the lead/grok-step panel's lower edge


def plot_leads(facts: Sequence[dict], path: Path) -> None:
    """Lead time (grok − alarm) of every signal in every grokking run, in steps and as a fraction of the grok step;
    alarms after the jump are negative, runs with no alarm are not drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s.name for s in SIGNALS] + ["test_acc"]
    grokked = [f for f in facts if f["grok"] is not None and f["grok"] > 0]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 3.8))
    groups = sorted({f["group"] for f in grokked})
    colors = {g: plt.cm.tab20(i % 20) for i, g in enumerate(groups)}  # tab10 repeats colours past 10 groups
    for i, sig in enumerate(names):
        for j, f in enumerate(grokked):
            lead = f["leads"][sig]
            if lead is None:
                continue
            x = i + (j - len(grokked) / 2) * 0.6 / max(len(grokked), 1)
            a1.scatter(x, lead, color=colors[f["group"]], s=18)
            share = lead / f["grok"]  # an alarm long after an early jump is many grok steps late: clip, mark ▼
            a2.scatter(x, max(share, SHARE_FLOOR), color=colors[f["group"]], s=18,
                       marker="v" if share < SHARE_FLOOR else "o")
    for ax, yl in ((a1, "lead (steps)"), (a2, "lead / grok step")):
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, fontsize=8, rotation=20)
        ax.set_ylabel(yl)
    a2.set_ylim(SHARE_FLOOR - 0.1, None)
    a2.text(0.01, 0.02, f"▼ below {SHARE_FLOOR:g}, clipped", transform=a2.transAxes, fontsize=7)
    a1.axhspan(PILOT["lead"] - PILOT["lead_sd"], PILOT["lead"] + PILOT["lead_sd"], color="tab:red", alpha=0.12,
               label="pilot: 3,297 ± 461")
    handles = [plt.Line2D([], [], marker="o", ls="", color=colors[g]) for g in groups]
    # beside the axes, not on them: inside, it covered the pilot regime's Ô01 leads
    fig.legend(handles + [plt.Rectangle((0, 0), 1, 1, color="tab:red", alpha=0.12)], groups + ["pilot 3,297 ± 461"],
               fontsize=7, loc="center left", bbox_to_anchor=(0.86, 0.5), frameon=False)
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


REGIME_ORDER = ("pilot", "fast", "parity", "forcing", "layernorm", "other")
ROLE_ORDER = ("grok", "control", "parity", "forcing", "arch")


def run_order(f: dict) -> tuple:
    """Sort key of a run in the report's figures and tables: by regime, then role, then task, p and seed."""
    reg = REGIME_ORDER.index(f["regime"]) if f["regime"] in REGIME_ORDER else len(REGIME_ORDER)
    role = ROLE_ORDER.index(f["role"]) if f["role"] in ROLE_ORDER else len(ROLE_ORDER)
    return (reg, role, f["task"], f["p"] or 0, f["seed"], f["name"])


def plot_alarm_vs_grok(facts: Sequence[dict], path: Path, regime: str = "pilot") -> None:
    """The Ô01 alarm step against the grok step, one point per run of a regime (grok- and control-role runs), with
    the y = x line (above it: the alarm came after the jump) and the line y = x − the pilot's lead. Runs that did not
    grok are unresolved: drawn at their last step with a ▶ (their grok step, if any, is later)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fs = [f for f in facts if f["regime"] == regime and f["role"] in ("grok", "control")]
    fig, ax = plt.subplots(figsize=(5.6, 4.4))
    colors = {"add": "tab:blue", "mul": "tab:orange"}
    xs = []
    for f in fs:
        a = f["alarms"]["o01"]
        if a is None:
            continue
        x = f["grok"] if f["grok"] is not None else f["steps"]
        xs.append(x)
        ax.scatter(x, a, color=colors.get(f["task"], "grey"), marker="o" if f["grok"] is not None else ">",
                   s=30 if f["grok"] is not None else 45, edgecolor="black" if f["grok"] is None else None, lw=0.6)
    top = max(xs, default=1000) * 1.05
    ax.plot([0, top], [0, top], color="black", lw=0.8, label="y = x (alarm at the jump)")
    ax.plot([PILOT["lead"], top], [0, top - PILOT["lead"]], color="tab:red", lw=0.8, ls="--",
            label=f"alarm {PILOT['lead']:,} steps before the jump (the pilot)")
    handles, labels = ax.get_legend_handles_labels()
    handles += [plt.Line2D([], [], marker="o", ls="", color=c) for c in colors.values()]
    labels += [f"{t}: grokked (x = grok step)" for t in colors]
    handles.append(plt.Line2D([], [], marker=">", ls="", color="grey", markeredgecolor="black"))
    labels.append("did not grok: unresolved (x = last step)")
    ax.legend(handles, labels, fontsize=7, loc="upper left")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("grok step (test accuracy ≥ 0.95)")
    ax.set_ylabel("Ô01 alarm step (guard hold)")
    ax.set_title(f"{regime} regime: does the alarm's timing follow the jump?", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

"""The report's tables: every signal's statistics over sets of runs, and the Ô01 detector's sensitivity to its
thresholds."""

from __future__ import annotations

import dataclasses
from typing import Sequence

from ..detect import DetectorConfig
from .analysis import SIGNALS, TEST_ACC_LABEL, signal_alarm
from .fmt import fmt_ci, fmt_num
from .stats import quantile, signal_stats

SENSITIVITY_RISES = (0.02, 0.05, 0.10)
SENSITIVITY_PERSISTS = (50, 100, 200)


def sensitivity_table(runs: Sequence[dict], facts: Sequence[dict]) -> list[str]:
    """The Ô01 detector re-run on the same logs over a grid of its two main thresholds (rise, persist), per regime:
    is there any setting that fires before the jump in the grokking runs without firing in the others?"""
    lines = ["| regime | rise | persist | alarm before grok | false alarms in runs that did not grok | median lead |",
             "|---|---|---|---|---|---|"]
    for reg in ("pilot", "fast"):
        sel = [(r, f) for r, f in zip(runs, facts) if f["regime"] == reg and f["role"] in ("grok", "control")]
        if not sel:
            continue
        for rise in SENSITIVITY_RISES:
            for persist in SENSITIVITY_PERSISTS:
                hits = false = n_grok = n_never = 0
                lead_list = []
                for r, f in sel:
                    det = dataclasses.replace(DetectorConfig(**f["config"]["detector"]), rise=rise, persist=persist)
                    a = signal_alarm(r["rows"], SIGNALS[0], det)
                    if f["grok"] is None:
                        n_never += 1
                        false += a is not None
                    else:
                        n_grok += 1
                        if a is not None and a < f["grok"]:
                            hits += 1
                            lead_list.append(f["grok"] - a)
                lines.append(f"| {reg} | {rise:g} | {persist} | {hits}/{n_grok} | {false}/{n_never} | "
                             f"{fmt_num(quantile(lead_list, 0.5))} |")
    return lines


def stats_table(sets: Sequence[tuple[str, Sequence[dict]]], signals: Sequence[str]) -> list[str]:
    lines = ["| runs | signal | alarm before grok (Wilson 95%) | alarm at/after grok | false alarms in runs that did "
             "not grok (Wilson 95%) | lead, steps: median [IQR] | bootstrap 95% CI of the median | lead / grok step: "
             f"median [IQR] | earlier than {TEST_ACC_LABEL} | median steps earlier than {TEST_ACC_LABEL} |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label, facts in sets:
        if not facts:
            continue
        for sig in signals:
            st = signal_stats(facts, sig)
            lines.append(
                f"| {label} | {sig} | {st['hits']}/{st['n_grok']} {fmt_ci(st['hit_ci'], True)} | {st['late']} | "
                f"{st['false']}/{st['n_never']} {fmt_ci(st['false_ci'], True)} | {fmt_num(st['lead_median'])} "
                f"[{fmt_num(st['lead_q1'])}, {fmt_num(st['lead_q3'])}] | {fmt_ci(st['lead_ci'])} | "
                f"{fmt_num(st['frac_median'], 2)} [{fmt_num(st['frac_q1'], 2)}, {fmt_num(st['frac_q3'], 2)}] | "
                f"{st['beats_test_acc'] if sig != 'test_acc' else '–'}/{st['hits'] if sig != 'test_acc' else '–'} | "
                f"{fmt_num(st['gain_median']) if sig != 'test_acc' else '–'} |")
    return lines

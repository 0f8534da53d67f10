"""A plain verdict on each of the pilot's claims, with the rule that decides it stated next to it. The modular-arithmetic
claims are judged only from the pilot's own regime (p 97/113, lr 1e-3); parity and forcing from their own groups
(the pilot gives no regime for them: ours are parity runs and the fast regime, p 59, lr 3e-3)."""

from __future__ import annotations

import re
import statistics
from typing import Optional, Sequence

from ..detect import DetectorConfig
from .analysis import RELAPSE_DROP, TEST_ACC_LABEL
from .fmt import fmt_ci, fmt_num
from .stats import quantile, wilson

GUARDS = ("hold", "off", "rebase")
# the pilot's abstract: lead 3,297 ± 461 (addition), 3,083 ± 186 (multiplication), the jump near step 4,000
PILOT = {"lead": 3297, "lead_sd": 461, "mul_lead": 3083, "mul_lead_sd": 186, "grok": 4000}


def _split(fs: Sequence[dict], signal: str = "o01") -> tuple[list, list, list, list]:
    """(runs that grokked, those with an alarm strictly before the grok step, runs that did not grok, those that
    alarmed anyway)."""
    g = [f for f in fs if f["grok"] is not None]
    never = [f for f in fs if f["grok"] is None]
    return (g, [f for f in g if f["leads"][signal] is not None and f["leads"][signal] > 0], never,
            [f for f in never if f["alarms"][signal] is not None])


def modular_runs(facts: Sequence[dict], reg: str, task: Optional[str] = None) -> list[dict]:
    """The grok- and control-role runs of one regime (a control that grokked counts as a grokking run)."""
    return [f for f in facts if f["regime"] == reg and f["role"] in ("grok", "control")
            and (task is None or f["task"] == task)]


def _provisional(n: int, pilot_n: int, what: str) -> str:
    return f" (provisional: {n} {what}, fewer than the pilot's {pilot_n})" if n < pilot_n else ""


def _lead_verdict(fs: Sequence[dict], mean: float, sd: float, pilot_n: int, what: str, verdict: bool = True) -> str:
    """Reproduced = an alarm in every grokking run and a median lead within 2 SD of the pilot's mean; partly = alarms
    in only some runs with a median inside that band, or a median outside it in steps but inside it as a share of the
    grok step (the pilot's band over its jump near step 4,000: our runs may jump later than the pilot's); not
    otherwise. With ``verdict=False`` only the numbers (for a regime that is not the pilot's)."""
    g, h, _, _ = _split(fs)
    if not g:
        return "not yet tested (no such run has finished and grokked)" if verdict else "no grokking run yet"
    if not h:
        return (f"not: no alarm before the jump in 0/{len(g)} {what}" if verdict
                else f"no alarm before the jump in 0/{len(g)} {what}")
    leads = [f["leads"]["o01"] for f in h]
    med = quantile(leads, 0.5)
    share = quantile([f["leads"]["o01"] / f["grok"] for f in h], 0.5)
    lo, hi = (mean - 2 * sd) / PILOT["grok"], min(1.0, (mean + 2 * sd) / PILOT["grok"])  # a lead < its grok step
    inside = abs(med - mean) <= 2 * sd
    share_inside = lo <= share <= hi
    v = ("reproduced" if inside and len(h) == len(g) else "partly" if inside or share_inside else "not")
    if not verdict:
        return f"median lead {fmt_num(med)} steps ({fmt_num(share, 2)} of the grok step) in {len(h)}/{len(g)} {what}"
    groks = [f["grok"] for f in g]
    # one more digit where two would print the share equal to the band's edge (then "inside" would read as a tie)
    nd = 3 if f"{share:.2f}" in (f"{lo:.2f}", f"{hi:.2f}") else 2
    where = ("" if inside else
             f", outside {mean:,.0f} ± {2 * sd:,.0f} in steps; these runs jumped at steps {fmt_num(min(groks))}–"
             f"{fmt_num(max(groks))} (median {fmt_num(quantile(groks, 0.5))}), the pilot's near {PILOT['grok']:,}; as a "
             f"share of the grok step the median lead {fmt_num(share, nd)} is {'inside' if share_inside else 'outside'} "
             f"the pilot's ({mean:,.0f} ± {2 * sd:,.0f}) / {PILOT['grok']:,} = {lo:.{nd}f}–{hi:.{nd}f}"
             + (" (capped at 1: a lead cannot exceed its grok step)" if (mean + 2 * sd) / PILOT["grok"] > 1 else "")
             + (" — at the band's edge" if share_inside and min(share - lo, hi - share) < 0.01 else "")
             + (f"; the leads' SD is {statistics.stdev(leads):,.0f} steps, the pilot's {sd:,.0f}" if len(leads) > 1
                else ""))
    return (f"{v}: median lead {fmt_num(med)} steps (IQR {fmt_num(quantile(leads, 0.25))}–{fmt_num(quantile(leads, 0.75))}; "
            f"{fmt_num(share, 2)} of the grok step) in {len(h)}/{len(g)} {what}{where}"
            f"{_provisional(len(g), pilot_n, what)}")


def claim_verdicts(facts: Sequence[dict], by_guard: Optional[dict] = None) -> list[str]:
    """The pilot's claims, the modular-arithmetic ones judged from the finished runs of the pilot's own regime (p 97/113,
    lr 1e-3), parity and forcing from their own groups; the fast regime is reported beside the modular ones but never
    decides their verdicts. Rules are stated next to each verdict."""
    pilot, fast = modular_runs(facts, "pilot"), modular_runs(facts, "fast")
    out = []

    def hits_line(fs, label):
        g, h, _, _ = _split(fs)
        return f"{label}: {len(h)}/{len(g)}" if g else f"{label}: no grokking run yet"

    # 1. every grokking run re-rises before the jump
    g, h, _, _ = _split(pilot)
    if not g:
        v = "not yet tested in the pilot's regime (no pilot-regime run has finished and grokked)"
    else:
        v = ("reproduced" if len(h) == len(g) else "partly" if h else "not") + \
            f": the alarm fired before the grok step in {len(h)}/{len(g)} pilot-regime grokking runs (Wilson 95% " \
            f"{fmt_ci(wilson(len(h), len(g)), True)})" + _provisional(len(g), 16, "grokking runs")
    gf, hf, _, _ = _split(fast)
    guard_src, guard_label = (g, "pilot regime") if g else (gf, "fast regime")
    guards = ""
    if by_guard and guard_src:
        names = {x["name"] for x in guard_src}
        guards = (f" The same logs ({guard_label}) with each spike guard: " + "; ".join(
            f"{gd}: {sum(1 for f in by_guard[gd] if f['name'] in names and (f['leads']['o01'] or 0) > 0)}/"
            f"{len(guard_src)}" for gd in GUARDS) + ". (`rebase` restarts the average and the running minimum after every spike window; "
            "it removes level shifts made at a spike, but also any slow rise that spans spikes, so a low count under "
            "rebase alone does not show that the rise is made of spikes.)")
    out.append(f"- **Ô01 re-rises before the jump in every grokking run (pilot: 16/16).** {v}. Fast regime (p 59, "
               f"lr 3e-3; not the pilot's regime, no verdict): {len(hf)}/{len(gf)}. Rule: reproduced = all, partly = "
               f"some, not = none." + guards + _spike_made_clause(h))
    # 2. the lead (addition) and 4. multiplication
    out.append(f"- **The lead is ~3,000 steps (3,297 ± 461) in the pilot's regime.** "
               f"{_lead_verdict(modular_runs(facts, 'pilot', 'add'), PILOT['lead'], PILOT['lead_sd'], 10, 'pilot-regime addition runs')}."
               f" Fast regime (numbers only): {_lead_verdict(modular_runs(facts, 'fast', 'add'), PILOT['lead'], PILOT['lead_sd'], 0, 'fast-regime runs', verdict=False)}."
               " Rule: reproduced = an alarm in every grokking run and a median lead within 2 SD (±922) of 3,297; "
               "partly = alarms in only some runs with the median inside that band, or the median outside it in steps "
               "but inside it as a share of the grok step (the band divided by the pilot's jump near step 4,000); not "
               "otherwise. (The pilot gives a mean ± SD over its addition runs; we compare our median with it, and "
               "read its 3,297 ± 461 as the addition runs' figure, since it quotes multiplication separately.)")
    out.append(f"- **Multiplication: 6/6, lead 3,083 ± 186.** "
               f"{_lead_verdict(modular_runs(facts, 'pilot', 'mul'), PILOT['mul_lead'], PILOT['mul_lead_sd'], 6, 'pilot-regime multiplication runs')}."
               " Rule: as for addition, with 3,083 ± 372 (a share of 0.68–0.86).")
    # 3. no alarm in runs that do not grok
    g, _, nev, fa = _split(pilot)
    _, _, nevf, faf = _split(fast)
    fa_full = [f for f in fa if f not in _stopped_early(nev, g)]  # ran past every jump: not censored
    if not nev:
        v = "not yet tested in the pilot's regime (no pilot-regime run has finished without grokking)"
    else:
        v = ("not" if fa_full else "partly" if fa else "reproduced") + \
            f": the Ô01 alarm fired in {len(fa)}/{len(nev)} pilot-regime runs that did not grok (Wilson 95% " \
            f"{fmt_ci(wilson(len(fa), len(nev)), True)})" + (f": {', '.join(f['name'] for f in fa)}" if fa else "") + \
            ("" if fa else _provisional(len(nev), 5, "pilot-regime runs that did not grok"))  # one false alarm refutes
    out.append(f"- **No alarm in runs that do not grok (pilot: 0/5).** {v}. Fast regime: false alarms in "
               f"{len(faf)}/{len(nevf)} runs that did not grok" + (f" ({', '.join(f['name'] for f in faf)})" if faf
                                                                    else "")
               + _control_lengths(pilot, "pilot regime") + _control_lengths(fast, "fast regime")
               + ". Rule: reproduced = no alarm in any pilot-regime run that did not grok (provisional below the "
               "pilot's 5); not = an alarm in one that ran at least as long as the slowest grok (one false alarm "
               "refutes \"0/5\" at any count); partly = alarms only in runs stopped earlier (censored: they might "
               "have grokked later). \"Did not grok\" means not "
               "within the run's max steps (censored).")
    # 5. parity
    parity = [f for f in facts if f["regime"] == "parity"]
    # grokking is generalisation *after* memorisation: a run that generalised by the time it memorised has no delay,
    # and one whose delay is not longer than the detector's persistence cannot show an alarm before the jump
    persist = lambda f: DetectorConfig(**f["config"]["detector"]).persist  # noqa: E731
    instant = [f for f in parity if f["grok"] is not None and f["memorised"] is not None and f["grok"] <= f["memorised"]]
    short = [f for f in parity if f["grok"] is not None and f["memorised"] is not None and f not in instant
             and f["grok"] - f["memorised"] <= persist(f)]
    measured = [f for f in parity if f["o01_peak"] is not None and f["o01_min"] is not None
                and f not in instant and f not in short]
    unmeasured = len(parity) - len(measured) - len(instant) - len(short)
    if not parity:
        v = "not yet tested (no parity run finished)"
    elif (instant or short) and not measured:
        where = ", ".join(f"{f['name']} memorised at {f['memorised']}, generalised at {f['grok']}" for f in instant + short)
        v = (f"not tested: {len(instant) + len(short)}/{len(parity)} parity runs generalised by the step they memorised "
             f"or within the detector's persistence after it ({where}): no grokking delay the detector could see, so "
             "this parity setting cannot test the claim; a harder one (more bits, less data) is needed")
    elif not measured:
        v = f"inconclusive: none of the {len(parity)} parity runs has a measurable Ô01 drop (no memorisation or no finite Ô01)"
    else:
        min_drop = DetectorConfig(**measured[0]["config"]["detector"]).min_drop
        dropped = [f for f in measured if f["o01_peak"] - f["o01_min"] >= min_drop]

        def rose_in(fs):  # an alarm before the jump, or at all in a run that did not grok
            return [f for f in fs if f["alarms"]["o01"] is not None and (f["grok"] is None or f["alarms"]["o01"] < f["grok"])]

        rose = rose_in(measured)
        names = {f["name"] for f in measured}
        rose_off = rose_in([f for f in by_guard["off"] if f["name"] in names]) if by_guard else rose
        grokked = [f for f in measured if f["grok"] is not None]
        relapsed = [f for f in parity if f["relapse"] is not None]
        off_where = ", ".join(f"{f['name']} at {fmt_num(f['alarms']['o01'])}" for f in rose_off)
        short_where = ", ".join(f"{f['name']}: {f['grok'] - f['memorised']} steps" for f in short)
        relapse_where = ", ".join(f"{f['name']} at {fmt_num(f['relapse'])}" for f in relapsed)
        counts = (f"Ô01 dropped by ≥ {min_drop:g} after memorisation in {len(dropped)}/{len(measured)} parity runs and "
                  f"re-rose (an alarm before the jump, or at all in a run with no jump) in {len(rose)}/{len(measured)}"
                  + (f", with the spike guard off in {len(rose_off)}/{len(measured)}"
                     + (f" ({off_where})" if rose_off else "") if by_guard else "")
                  + f"; {len(grokked)}/{len(measured)} grokked"
                  + (f"; {unmeasured} run(s) without a measurable Ô01 left out" if unmeasured else "")
                  + (f"; {len(instant)} run(s) with no grokking delay left out" if instant else "")
                  + (f"; {len(short)} run(s) whose delay was not longer than the detector's persistence left out "
                     f"({short_where})" if short else "")
                  + (f". {len(relapsed)}/{len(parity)} parity runs relapsed: test accuracy fell below "
                     f"{measured[0]['config']['grok_acc'] - RELAPSE_DROP:.2f} after their grok step ({relapse_where}); "
                     "their grok step still counts" if relapsed else ""))
        if not grokked:
            v = (f"not tested: none of the {len(measured)} parity runs generalised within its max steps (the claim is "
                 f"about runs that do); {counts}")
        else:
            clean = len(dropped) == len(measured) and not rose and not rose_off
            v = ("reproduced" if clean else "not" if len(rose) == len(rose_off) == len(measured) else "partly") + \
                f": {counts}"
    out.append(f"- **On k-sparse parity the signal blurs / Ô01 drops instead of rising.** {v}. Rule: reproduced = "
               "a drop and no re-rise alarm in every parity run, with the spike guard on and off; not = a re-rise "
               "alarm in every one under both; partly otherwise.")
    # 6. no rise by step 1,000 → no grok (the pilot's regime: rise near 750, jump near 4,000). A "rise" here is the
    # first step at which the detector's rise condition held at all (first_rise), persistent or not.
    def rise_1000(fs):
        g, _, nev, _ = _split(fs)
        late = [f for f in g if f["first_rise"] is None or f["first_rise"] > 1000]
        early_nev = [f for f in nev if f["first_rise"] is not None and f["first_rise"] <= 1000]
        return g, nev, late, early_nev

    g, nev, late, early_nev = rise_1000(pilot)
    counter = len(late) + len(early_nev)
    if not g and not nev:
        v = "not yet tested in the pilot's regime"
    else:
        if counter and 2 * counter > len(g) + len(nev):  # the claim is an implication: most runs contradict it
            v = "not"
        elif counter:
            v = "partly"
        elif g and nev:
            v = "reproduced"
        else:
            v = "no counterexample yet, half tested"
        v += (" (no pilot-regime run failed to grok)" if not nev else "") + \
            (" (no pilot-regime run grokked)" if not g else "") + \
            f": {len(late)}/{len(g)} pilot-regime grokking runs had no rise by step 1,000" + \
            (f" ({', '.join(f['name'] for f in late)})" if late else "") + \
            f"; {len(early_nev)}/{len(nev)} that did not grok had one by step 1,000" + \
            (f" ({', '.join(f['name'] for f in early_nev)})" if early_nev else "") + _rise_ranges(g, nev)
    gf, nevf, latef, earlyf = rise_1000(fast)
    out.append(f"- **Runs with no re-rise by step 1,000 do not grok (rise begins near step 750, only in runs that "
               f"will grok).** {v}. Fast regime: {len(latef)}/{len(gf)} grokking runs without a rise by 1,000, "
               f"{len(earlyf)}/{len(nevf)} non-grokking runs with one. A rise is the first step where smoothed Ô01 "
               f"stood `rise` above its post-memorisation minimum after a real drop, whether or not it persisted. "
               f"Rule: reproduced = both kinds of run tested and no counterexample of either kind; not = more than half "
               f"of the tested runs counterexamples; partly = some. The step-1,000 mark is the pilot's regime's; it cannot "
               f"transfer to runs that memorise later or grok earlier.")
    # the question: does Ô01 beat watching test accuracy? Two ways to watch it: test acc +0.10 over its value
    # at memorisation, and the same detector on test accuracy (`test_acc_rise`); Ô01 must beat both
    parts = []
    for label, fs in (("pilot regime", pilot), ("fast regime", fast)):
        g, h, nev, fa = _split(fs)
        if not g:
            continue
        before = lambda f, key: f["alarms"][key] is None or f["alarms"]["o01"] < f["alarms"][key]  # noqa: E731
        earlier = [f for f in h if before(f, "test_acc")]
        earlier_rise = [f for f in h if before(f, "test_acc_rise")]
        earlier_both = [f for f in h if before(f, "test_acc") and before(f, "test_acc_rise")]
        fat, far = _split(fs, "test_acc")[3], _split(fs, "test_acc_rise")[3]
        if len(earlier_both) == len(g):
            v = "yes" if len(fa) <= min(len(fat), len(far)) else "earlier, but with more false alarms"
        else:
            v = "no" if 2 * len(earlier_both) < len(g) else "in some runs"
        parts.append(f"{label}: {v} — the Ô01 alarm came before {TEST_ACC_LABEL} in {len(earlier)}/{len(g)} grokking "
                     f"runs, before the test-accuracy detector (`test_acc_rise`) in {len(earlier_rise)}/{len(g)}, "
                     f"before both in {len(earlier_both)}/{len(g)}; false alarms in runs that did not grok: Ô01 "
                     f"{len(fa)}/{len(nev)}, {TEST_ACC_LABEL} {len(fat)}/{len(nev)}, `test_acc_rise` "
                     f"{len(far)}/{len(nev)}")
    out.append("- **Does the Ô01 alarm beat simply watching test accuracy?** (the issue's question, not a pilot claim) "
               + ("; ".join(parts) if parts else "not yet tested") + f". Rule: yes = earlier than both ways of "
               f"watching test accuracy ({TEST_ACC_LABEL}, and the detector on test accuracy) in every grokking run "
               "with no more false alarms than either; no = earlier than both in fewer than half the grokking runs; "
               "in some runs otherwise.")
    out.append(layernorm_line(facts, by_guard))
    # 7. forcing
    forced = [f for f in facts if f["regime"] == "forcing"]
    if not forced:
        v = "not yet tested (no forced run finished)"
    else:
        gf_steps = [f["grok"] for f in fast if f["grok"] is not None]
        per, effective = [], []
        for lam in sorted({f["config"]["force_cka"] for f in forced}):
            fs = [f for f in forced if f["config"]["force_cka"] == lam]
            held = [f for f in fs if (f.get("o01_post_median") or 0) >= 0.9]
            effective += held
            per.append(f"λ = {lam:g}: {sum(f['grok'] is not None for f in fs)}/{len(fs)} grokked within "
                       f"{max(f['config']['max_steps'] for f in fs):,} steps (grok steps "
                       f"{', '.join(fmt_num(f['grok']) for f in fs)}), median post-memorisation Ô01 "
                       f"{', '.join(fmt_num(f.get('o01_post_median'), 2) for f in fs)}")
        eg = [f for f in effective if f["grok"] is not None]
        if not effective:
            v = "inconclusive: the loss term did not hold Ô01 near 1 (median post-memorisation Ô01 < 0.9 in every run)"
        else:
            v = ("reproduced" if 3 * len(eg) >= 2 * len(effective) else "partly" if eg else "not") + \
                f": {len(eg)}/{len(effective)} runs in which forcing held Ô01 ≥ 0.9 still grokked" + \
                _provisional(len(effective), 3, "effectively forced runs")
        v += ". " + "; ".join(per) + (f". Unforced fast-regime grok steps for comparison: median {fmt_num(quantile(gf_steps, 0.5))}"
                                      if gf_steps else "")
    out.append(f"- **Forcing Ô01 → 1 does not stop grokking (pilot: 2/3 at 20k steps).** {v}. (Forced runs are in the "
               "fast regime, p 59, lr 3e-3: the pilot does not say which regime it forced.) Rule: among runs where "
               "the term held the median post-memorisation Ô01 ≥ 0.9, reproduced = ≥ 2/3 grokked, not = none did "
               "(within our max steps, shorter than the pilot's 20k: a run that did not grok may grok later).")
    return out


def _stopped_early(never: Sequence[dict], grokked: Sequence[dict]) -> list[dict]:
    """The runs that did not grok but stopped before the slowest grok step: censored."""
    slowest = max((f["grok"] for f in grokked), default=0)
    return [f for f in never if f["steps"] < slowest]


def _control_lengths(fs: Sequence[dict], label: str) -> str:
    """How long the runs that did not grok ran against the slowest grok of their regime (the issue asks for controls
    at least that long; one stopped earlier is censored, so its alarm is false only within its steps)."""
    g, _, nev, _ = _split(fs)
    if not g or not nev:
        return ""
    slow = max(g, key=lambda f: f["grok"])
    short = _stopped_early(nev, g)
    alarm = lambda f: f["alarms"]["o01"]  # noqa: E731
    return (f". {label.capitalize()}: the runs that did not grok ran {', '.join(fmt_num(f['steps']) for f in nev)} "
            f"steps, against the slowest grok at {fmt_num(slow['grok'])} ({slow['name']})"
            + ("" if not short else "; shorter: " + ", ".join(
                f"{f['name']}" + (f" (its alarm at {fmt_num(alarm(f))} is false only within its {fmt_num(f['steps'])} steps: censored)"
                                  if alarm(f) is not None else " (no alarm within its steps: censored)")
                for f in short)))


def _spike_made_clause(hits: Sequence[dict]) -> str:
    made = [f for f in hits if f["rise_at_spike"]]
    return (f" In {len(made)}/{len(hits)} of these alarms the rise was a level set at a train-loss spike (defined under "
            "*The spike guard*)." if hits else "")


def spike_made_line(facts: Sequence[dict]) -> str:
    """How many Ô01 alarms (guard hold) measured a level that a train-loss spike had set, per regime."""
    parts = []
    for label, fs in (("pilot regime", modular_runs(facts, "pilot")), ("fast regime", modular_runs(facts, "fast")),
                      ("all runs", list(facts))):
        alarmed = [f for f in fs if f["rise_at_spike"] is not None]
        if alarmed:
            parts.append(f"{label} {sum(bool(f['rise_at_spike']) for f in alarmed)}/{len(alarmed)}")
    if not parts:
        return ""
    return ("Alarms (guard hold) whose rise was a level set at a spike — raw Ô01 on the row before the last spike "
            "preceding the onset still less than `rise` above the running minimum, and the onset within two logging "
            "intervals after that spike's window, so the average only caught up with a jump the spike made: "
            + ", ".join(parts) + " (denominator: every run with an alarm, controls included). The hold guard delays such an alarm by about a window; only `rebase` removes it.")


def _rise_ranges(grokked: Sequence[dict], never: Sequence[dict]) -> str:
    """Where the first rises fell in runs that grokked and in runs that did not, and whether some step separates
    them here (found after the fact on these runs: a description, not a tested prediction)."""
    rg = [f["first_rise"] for f in grokked if f["first_rise"] is not None]
    rn = [f["first_rise"] for f in never if f["first_rise"] is not None]
    span = lambda xs: f"{fmt_num(min(xs))}–{fmt_num(max(xs))}" if xs else "none"
    out = (f". First rises: steps {span(rg)} in {len(rg)}/{len(grokked)} grokking runs, {span(rn)} in "
           f"{len(rn)}/{len(never)} runs that did not grok")
    if rg and never and len(rg) == len(grokked) and (not rn or max(rg) < min(rn)):
        out += (f"; here a mark between steps {fmt_num(max(rg))} and {fmt_num(min(rn)) if rn else 'the end'} would "
                "have separated them (chosen after the fact on "
                "these runs, so a description, not a tested prediction)")
    return out


def layernorm_line(facts: Sequence[dict], by_guard: Optional[dict] = None) -> str:
    """Pre-LN blocks against none (the issue's architecture question): numbers only, no verdict — the pilot did not
    say which it used. Per learning rate: how many grokked, how often the train loss spiked, how much of the run the
    hold guard froze, and the Ô01 alarm count before the jump under each spike guard."""
    head = "- **Architecture: pre-LN blocks** (the issue's question, not a pilot claim; numbers only)."
    ln = [f for f in facts if f["regime"] == "layernorm"]
    if not ln:
        return head + " not yet tested (no pre-LN run has finished)."

    def describe(fs: Sequence[dict], label: str) -> str:
        names = {f["name"] for f in fs}
        g = [f for f in fs if f["grok"] is not None]
        guards = by_guard or {"hold": facts}
        hits = ", ".join(f"{gd} {len(_split([x for x in guards[gd] if x['name'] in names])[1])}/{len(g)}"
                         for gd in guards)
        rate = quantile([1000 * f["spikes"] / f["steps"] for f in fs if f["steps"]], 0.5)
        frozen = quantile([f["frozen_frac"] for f in fs if f["frozen_frac"] is not None], 0.5)
        steps = f" (grok steps {', '.join(fmt_num(f['grok']) for f in g)})" if g else ""
        return (f"{label}: {len(g)}/{len(fs)} grokked{steps}, "
                f"median {fmt_num(rate, 1)} train-loss spikes per 1,000 steps, the hold guard froze a median "
                f"{fmt_num(None if frozen is None else 100 * frozen, 0)}% of the logged points after memorisation; "
                f"Ô01 alarm before the jump with guard {hits}")

    parts = [describe([f for f in ln if f["config"]["lr"] == lr], f"lr {lr:g}")
             for lr in sorted({f["config"]["lr"] for f in ln}, reverse=True)]
    fast = modular_runs(facts, "fast")
    if fast:
        parts.append(describe([f for f in fast if f["role"] == "grok"],
                              "no LayerNorm for comparison (fast regime, lr 3e-3, its grok-role runs)"))
    return head + " " + "; ".join(parts) + "."


def in_short(facts: Sequence[dict]) -> str:
    """The pilot regime in plain words, from the same counts as the verdicts (empty before a pilot-regime run has
    grokked with an alarm)."""
    pilot = modular_runs(facts, "pilot")
    g, h, nev, fa = _split(pilot)
    if not h:
        return ""
    span = lambda xs: f"{fmt_num(min(xs))}–{fmt_num(max(xs))}"  # noqa: E731
    share = quantile([f["leads"]["o01"] / f["grok"] for f in h], 0.5)
    out = (f"In short, in the pilot's regime (p 97/113, lr 1e-3): the Ô01 alarm fired at steps "
           f"{span([f['alarms']['o01'] for f in h])}, before the jump in {len(h)}/{len(g)} grokking runs, which "
           f"jumped at steps {span([f['grok'] for f in g])} (median lead "
           f"{fmt_num(quantile([f['leads']['o01'] for f in h], 0.5))} steps — the pilot's {PILOT['lead']:,} for "
           f"addition, {PILOT['mul_lead']:,} for multiplication — or "
           f"{fmt_num(share, 2)} of the grok step).")
    if any(f["rise_at_spike"] for f in h):
        out += _spike_made_clause(h)
    if nev:
        short = _stopped_early(nev, g)
        notes = ([f"at steps {', '.join(fmt_num(f['alarms']['o01']) for f in fa)}"] if fa else []) + (
            [f"{len(short)} of the {len(nev)} stopped before the slowest grok step, so for "
             f"{'it' if len(short) == 1 else 'them'} 'did not grok' is censored"] if short else [])
        out += f" It also fired in {len(fa)}/{len(nev)} runs that did not grok" + (
            f" ({'; '.join(notes)})" if notes else "") + "."
        if fa and len(fa) == len(nev):
            out += " So the alarm alone did not tell the runs that would grok from those that would not."
        if fa and len(h) == len(g) and max(f["alarms"]["o01"] for f in h) < min(f["alarms"]["o01"] for f in fa):
            out += (f" Its timing did here: grokking runs alarmed by step {fmt_num(max(f['alarms']['o01'] for f in h))}, "
                    + ("the others" if len(fa) == len(nev) else f"the {len(fa)} of {len(nev)} others that alarmed")
                    + f" from step {fmt_num(min(f['alarms']['o01'] for f in fa))} (a separation found after "
                    "the fact, not a tested rule).")
    first = [f for f in h if f["alarms"]["test_acc_rise"] is not None
             and f["alarms"]["test_acc_rise"] <= f["alarms"]["o01"]]
    far = _split(pilot, "test_acc_rise")[3]
    out += (f" The same detector watching test accuracy (`test_acc_rise`) fired no later than Ô01 in {len(first)}/"
            f"{len(h)} of these runs" + (f", with {len(far)}/{len(nev)} false alarms" if nev else "") + ".")
    return out


_VERDICT = re.compile(r"^(reproduced|partly|not yet tested|not tested|not|inconclusive)\b")
_SPIKE_MADE = re.compile(r"In (\d+)/(\d+) of these alarms the rise was a level set")
_PER_REGIME = re.compile(r"(pilot regime|fast regime): (.*?) — ")


def brief_table(claims: Sequence[str]) -> list[str]:
    """The verdicts of :func:`claim_verdicts` as a table: each claim and its verdict word (marked provisional where
    the line says so); the question of test accuracy gets its answer per regime; numbers-only lines are left out."""
    out = ["| claim | verdict |", "|---|---|"]
    for line in claims:
        _, claim, rest = line.split("**", 2)
        rest = rest.strip()
        if re.match(r"\([^)]*numbers only\)", rest):  # "(…; numbers only)" right after the claim: no verdict
            continue
        m = _VERDICT.match(rest)
        if m:
            evidence = rest.split(" Rule:")[0]  # a rule may mention "provisional" itself
            verdict = m.group(1) + (" (provisional: fewer runs than the pilot)" if "provisional" in evidence else "")
            spike = _SPIKE_MADE.search(rest)
            if spike and spike.group(1) != "0":
                verdict += f"; in {spike.group(1)}/{spike.group(2)} the rise was a level set at a train-loss spike"
        elif _PER_REGIME.search(rest):
            verdict = "; ".join(f"{reg}: {v}" for reg, v in _PER_REGIME.findall(rest))
        else:
            continue
        out.append(f"| {claim.rstrip('.')} | {verdict} |")
    return out

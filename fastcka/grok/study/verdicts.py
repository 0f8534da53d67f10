"""A plain verdict on each of the pilot's claims, with the rule that decides it stated next to it. The modular-arithmetic
claims are judged only from the pilot's own regime (p 97/113, lr 1e-3); parity and forcing from their own groups
(the pilot gives no regime for them: ours are parity runs and the fast regime, p 59, lr 3e-3)."""

from __future__ import annotations

import math
import statistics
from typing import Optional, Sequence

from ..detect import DetectorConfig
from .analysis import RELAPSE_DROP, TEST_ACC_LABEL, WD0_HORIZON
from .fmt import fmt_ci, fmt_num
from .records import Verdict, render_table
from .stats import pearson, quantile, wilson

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


def _lead_verdict(fs: Sequence[dict], mean: float, sd: float, pilot_n: int, what: str,
                  verdict: bool = True) -> tuple[str, str, dict]:
    """The lead claim decided on timing: (verdict, evidence, numbers). Reproduced = an alarm before the jump in every
    grokking run, a median lead within 2 SD of the pilot's mean, and leads no more spread than twice the pilot's SD
    (a lead that is a timing does not spread with the grok step); partly = the median inside that band but alarms
    missing or the leads spread more; not = the median outside it. The share of the grok step, r(alarm step, grok
    step) and the leads to the test-accuracy ramp are reported, never decide (issue 20: any early alarm passes a
    share band). With ``verdict=False`` only the numbers (for a regime that is not the pilot's)."""
    g, h, _, _ = _split(fs)
    if not g:
        return ("not yet tested" if verdict else "no grokking run yet",
                "no such run has finished and grokked" if verdict else "", {})
    if not h:
        return ("not" if verdict else "no alarm", f"no alarm before the jump in 0/{len(g)} {what}", {"hits": 0, "n": len(g)})
    leads = [f["leads"]["o01"] for f in h]
    med = quantile(leads, 0.5)
    share = quantile([f["leads"]["o01"] / f["grok"] for f in h], 0.5)
    spread = statistics.stdev(leads) if len(leads) > 1 else 0.0
    r_alarm = pearson([f["grok"] for f in h], [f["alarms"]["o01"] for f in h])
    r_lead = pearson([f["grok"] for f in h], leads)
    ramp = [f["alarms"]["test_acc"] - f["alarms"]["o01"] for f in h if f["alarms"].get("test_acc") is not None]
    half = [f["half"] - f["alarms"]["o01"] for f in h if f.get("half") is not None]
    inside = abs(med - mean) <= 2 * sd
    timed = spread <= 2 * sd
    numbers = {"hits": len(h), "n": len(g), "median_lead": med, "lead_sd": spread, "share": share,
               "r_alarm_grok": r_alarm, "r_lead_grok": r_lead, "median_lead_to_ramp": quantile(ramp, 0.5),
               "median_lead_to_half": quantile(half, 0.5)}
    v = "reproduced" if inside and timed and len(h) == len(g) else "partly" if inside else "not"
    groks = [f["grok"] for f in g]
    alarms = [f["alarms"]["o01"] for f in h]
    r = lambda x: "–" if math.isnan(x) else f"{x:.2f}"  # noqa: E731
    timing = (f"; the alarms fired at steps {fmt_num(min(alarms))}–{fmt_num(max(alarms))} and the jumps came at "
              f"{fmt_num(min(groks))}–{fmt_num(max(groks))}: r(alarm step, grok step) = {r(r_alarm)}, r(lead, grok "
              f"step) = {r(r_lead)}" + (" — the lead is the grok step minus a near-constant, not a timing"
                                        if not math.isnan(r_lead) and r_lead > 0.9 and (math.isnan(r_alarm) or r_alarm < 0.5)
                                        else "")
              + f"; the leads' SD is {spread:,.0f} steps, the pilot's {sd:,.0f}; lead to the start of the test-"
              f"accuracy ramp ({TEST_ACC_LABEL}) median {fmt_num(quantile(ramp, 0.5))}, to test accuracy 0.5 median "
              f"{fmt_num(quantile(half, 0.5))}; as a share of the grok step {fmt_num(share, 2)} (reported, not "
              "decisive: any alarm well before a late jump has a large share)")
    evidence = (f"median lead {fmt_num(med)} steps (IQR {fmt_num(quantile(leads, 0.25))}–"
                f"{fmt_num(quantile(leads, 0.75))}) in {len(h)}/{len(g)} {what}" + timing
                + _provisional(len(g), pilot_n, what))
    if not verdict:
        return "numbers only", evidence, numbers
    return v, evidence, numbers


def _lead_rule(mean: float, sd: float) -> str:
    return (f"reproduced = an alarm before the jump in every grokking run, the median lead within 2 SD "
            f"({mean:,.0f} ± {2 * sd:,.0f}) and the leads' SD at most twice the pilot's ({2 * sd:,.0f}: a lead that is "
            "a timing does not spread with the grok step); partly = the median inside the band but alarms missing or "
            "the leads spread more; not = the median outside the band")


def claim_verdicts(facts: Sequence[dict], by_guard: Optional[dict] = None) -> list[Verdict]:
    """The pilot's claims as verdict records, the modular-arithmetic ones judged from the finished runs of the pilot's
    own regime (p 97/113, lr 1e-3), parity and forcing from their own groups; the fast regime is reported beside the
    modular ones but never decides their verdicts. Each record states its rule."""
    pilot, fast = modular_runs(facts, "pilot"), modular_runs(facts, "fast")
    return [discriminating_verdict(pilot, fast, by_guard),
            lead_verdict(facts, "add"), lead_verdict(facts, "mul"),
            parity_verdict(facts, by_guard), rise_1000_verdict(pilot, fast), watch_test_acc_verdict(pilot, fast),
            baselines_record(facts), layernorm_record(facts, by_guard), forcing_verdict(facts, fast)]


def discriminating_verdict(pilot: Sequence[dict], fast: Sequence[dict], by_guard: Optional[dict] = None) -> Verdict:
    """The pilot's one discriminating claim: an alarm before the jump in every grokking run and in none that does not
    grok (16/16 against 0/5)."""
    claim = ("Ô01 re-rises before the jump in every grokking run and in no run that does not grok (pilot: 16/16 "
             "against 0/5).")
    rule = ("reproduced = an alarm before the jump in every pilot-regime grokking run and no alarm in any that did not "
            "grok (provisional below the pilot's 16 and 5); not = an alarm in a run that did not grok and ran at "
            "least as long as the slowest grok (the alarm then does not tell the two apart, at any count), or no alarm "
            "before any jump; partly otherwise (alarms before only some jumps, or false alarms only in runs stopped "
            "earlier, censored). \"Did not grok\" means not within the run's max steps")
    g, h, nev, fa = _split(pilot)
    gf, hf, nevf, faf = _split(fast)
    unres = [f for f in nevf if f.get("unresolved")]
    fa_res = [f for f in faf if not f.get("unresolved")]
    fast_part = (f"Fast regime (p 59, lr 3e-3; not the pilot's regime, no verdict): {len(hf)}/{len(gf)} grokking "
                 f"runs alarmed before the jump; false alarms in {len(fa_res)}/{len(nevf) - len(unres)} runs that did "
                 "not grok" + (f" ({', '.join(f['name'] for f in fa_res)})" if fa_res else "")
                 + (f"; {len(unres)} weight-decay-0 control(s) are unresolved, neither negatives nor false alarms "
                    f"(no weight decay, stopped at {', '.join(fmt_num(f['steps']) for f in unres)} steps, well short of "
                    f"the {WD0_HORIZON:,} a run without weight decay may need: {', '.join(f['name'] for f in unres)})"
                    if unres else ""))
    if not g and not nev:
        return Verdict(claim, "not yet tested in the pilot's regime", {}, (),
                       "no pilot-regime run has finished. " + fast_part, rule)
    censored = _stopped_early(nev, g)
    fa_full = [f for f in fa if f not in censored]
    if fa_full or not h:
        v = "not"
    elif len(h) == len(g) and not fa and nev:
        v = "reproduced"
    else:
        v = "partly"
    numbers = {"hits": len(h), "grokked": len(g), "false_alarms": len(fa), "did_not_grok": len(nev),
               "false_alarms_uncensored": len(fa_full)}
    caveats = [f"{len(h)}/{len(g)} grokking runs vs {len(fa)}/{len(nev)} that did not grok alarmed"]
    if v != "not" and (len(g) < 16 or len(nev) < 5):  # a false alarm past the slowest grok refutes at any count
        caveats.append("provisional: fewer runs than the pilot")
    evidence = (f"the alarm fired before the grok step in {len(h)}/{len(g)} pilot-regime grokking runs (Wilson 95% "
                f"{fmt_ci(wilson(len(h), len(g)), True)}) and in {len(fa)}/{len(nev)} pilot-regime runs that did not "
                f"grok (Wilson 95% {fmt_ci(wilson(len(fa), len(nev)), True)})"
                + (f": {', '.join(f['name'] for f in fa)}" if fa else "")
                + (f"; {len(censored)} of these stopped before the slowest grok (censored: "
                   f"{', '.join(f['name'] for f in censored)})" if censored else "")
                + (_provisional(len(g), 16, "grokking runs") if v != "not" else "") + _control_lengths(pilot, "pilot regime"))
    evidence += ". " + fast_part
    guard_src, guard_label = (g, "pilot regime") if g else (gf, "fast regime")
    if by_guard and guard_src:
        names = {x["name"] for x in guard_src}
        evidence += (f". The same logs ({guard_label}) with each spike guard: " + "; ".join(
            f"{gd}: {sum(1 for f in by_guard[gd] if f['name'] in names and (f['leads']['o01'] or 0) > 0)}/"
            f"{len(guard_src)}" for gd in GUARDS) + " (`rebase` restarts the average and the running minimum after every "
            "spike window; it removes level shifts made at a spike, but also any slow rise that spans spikes)")
    made = [f for f in h if f["rise_at_spike"]]
    if h:
        evidence += (f". In {len(made)}/{len(h)} of these alarms the rise was a level set at a train-loss spike "
                     "(defined under *The spike guard*)")
        if made:
            caveats.append(f"in {len(made)}/{len(h)} the rise was a level set at a train-loss spike")
    removed = _removed_counts(g)
    if removed:
        evidence += (". With the spikes' Ô01 increments removed, the detector (guard off) fires before the jump in "
                     + ", ".join(f"{k}/{len(g)} (increment over {span} row(s) after the spike)" for span, k in removed)
                     + " — the re-rise is built from the spikes (see *The spike sawtooth*)")
        caveats.append("spikes' increments removed: before the jump in "
                       + ", ".join(f"{k}/{len(g)}" for _, k in removed) + f" (spans {', '.join(str(s) for s, _ in removed)})")
    numbers["removed_alarms"] = dict(removed)
    return Verdict(claim, v, numbers, tuple(caveats), evidence, rule)


def _removed_counts(grokked: Sequence[dict]) -> list[tuple[int, int]]:
    """(span, grokking runs whose spikes-removed Ô01 alarm, guard off, fires before the jump) per sawtooth span."""
    if not grokked or "sawtooth" not in grokked[0]:
        return []
    spans = sorted(grokked[0]["sawtooth"])
    return [(span, sum(1 for f in grokked if f["sawtooth"][span]["removed_alarm"] is not None
                       and f["sawtooth"][span]["removed_alarm"] < f["grok"])) for span in spans]


def lead_verdict(facts: Sequence[dict], task: str) -> Verdict:
    """The lead (addition: 3,297 ± 461 over 10 runs; multiplication: 3,083 ± 186 over 6), decided on timing."""
    mean, sd, n_pilot, claim, what = (
        (PILOT["lead"], PILOT["lead_sd"], 10, "The lead is ~3,000 steps (3,297 ± 461) in the pilot's regime.",
         "pilot-regime addition runs") if task == "add" else
        (PILOT["mul_lead"], PILOT["mul_lead_sd"], 6, "Multiplication: 6/6, lead 3,083 ± 186.",
         "pilot-regime multiplication runs"))
    v, evidence, numbers = _lead_verdict(modular_runs(facts, "pilot", task), mean, sd, n_pilot, what)
    _, fast_ev, _ = _lead_verdict(modular_runs(facts, "fast", task), mean, sd, 0, "fast-regime runs", verdict=False)
    if fast_ev:
        evidence += f". Fast regime (numbers only): {fast_ev}"
    caveats = []
    if numbers.get("r_alarm_grok") is not None and not math.isnan(numbers.get("r_alarm_grok", math.nan)):
        caveats.append(f"r(alarm step, grok step) = {numbers['r_alarm_grok']:.2f}")
    if "provisional" in evidence.split(". Fast regime")[0]:
        caveats.append("provisional: fewer runs than the pilot")
    rule = _lead_rule(mean, sd) + (" (the pilot gives a mean ± SD over its addition runs; we compare our median with "
                                   "it)" if task == "add" else "")
    return Verdict(claim, v, numbers, tuple(caveats), evidence, rule)


def parity_verdict(facts: Sequence[dict], by_guard: Optional[dict] = None) -> Verdict:
    """On k-sparse parity the signal blurs / Ô01 drops instead of rising."""
    claim = "On k-sparse parity the signal blurs / Ô01 drops instead of rising."
    rule = ("reproduced = a drop and no re-rise alarm in every parity run, with the spike guard on and off; not = a "
            "re-rise alarm in every one under both; partly otherwise")
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
    numbers = {"runs": len(parity), "measured": len(measured)}
    if not parity:
        return Verdict(claim, "not yet tested", numbers, (), "no parity run finished", rule)
    if (instant or short) and not measured:
        where = ", ".join(f"{f['name']} memorised at {f['memorised']}, generalised at {f['grok']}" for f in instant + short)
        return Verdict(claim, "not tested", numbers, (), f"{len(instant) + len(short)}/{len(parity)} parity runs "
                       "generalised by the step they memorised or within the detector's persistence after it "
                       f"({where}): no grokking delay the detector could see, so this parity setting cannot test the "
                       "claim; a harder one (more bits, less data) is needed", rule)
    if not measured:
        return Verdict(claim, "inconclusive", numbers, (), f"none of the {len(parity)} parity runs has a measurable Ô01 "
                       "drop (no memorisation or no finite Ô01)", rule)
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
    numbers.update({"dropped": len(dropped), "rose": len(rose), "rose_off": len(rose_off), "grokked": len(grokked)})
    if not grokked:
        return Verdict(claim, "not tested", numbers, (), f"none of the {len(measured)} parity runs generalised within "
                       f"its max steps (the claim is about runs that do); {counts}", rule)
    clean = len(dropped) == len(measured) and not rose and not rose_off
    v = "reproduced" if clean else "not" if len(rose) == len(rose_off) == len(measured) else "partly"
    return Verdict(claim, v, numbers, (), counts, rule)


def rise_1000_verdict(pilot: Sequence[dict], fast: Sequence[dict]) -> Verdict:
    """No re-rise by step 1,000 → no grok (the pilot's regime: rise near 750, jump near 4,000). A "rise" is the first
    step at which the detector's rise condition held at all (first_rise), persistent or not."""
    claim = ("Runs with no re-rise by step 1,000 do not grok (rise begins near step 750, only in runs that will "
             "grok).")
    rule = ("reproduced = both kinds of run tested and no counterexample of either kind; not = more than half of the "
            "tested runs counterexamples; partly = some. The step-1,000 mark is the pilot's regime's; it cannot "
            "transfer to runs that memorise later or grok earlier")

    def rise_1000(fs):
        g, _, nev, _ = _split(fs)
        late = [f for f in g if f["first_rise"] is None or f["first_rise"] > 1000]
        early_nev = [f for f in nev if f["first_rise"] is not None and f["first_rise"] <= 1000]
        return g, nev, late, early_nev

    g, nev, late, early_nev = rise_1000(pilot)
    counter = len(late) + len(early_nev)
    gf, nevf, latef, earlyf = rise_1000(fast)
    fast_part = (f". Fast regime: {len(latef)}/{len(gf)} grokking runs without a rise by 1,000, {len(earlyf)}/"
                 f"{len(nevf)} non-grokking runs with one. A rise is the first step where smoothed Ô01 stood `rise` "
                 "above its post-memorisation minimum after a real drop, whether or not it persisted")
    numbers = {"grokked_without_rise": len(late), "grokked": len(g), "never_with_rise": len(early_nev),
               "did_not_grok": len(nev)}
    if not g and not nev:
        return Verdict(claim, "not yet tested in the pilot's regime", numbers, (), fast_part.lstrip(". "), rule)
    if counter and 2 * counter > len(g) + len(nev):  # the claim is an implication: most runs contradict it
        v = "not"
    elif counter:
        v = "partly"
    elif g and nev:
        v = "reproduced"
    else:
        v = "no counterexample yet, half tested"
    v += (" (no pilot-regime run failed to grok)" if not nev else "") + (" (no pilot-regime run grokked)" if not g else "")
    evidence = (f"{len(late)}/{len(g)} pilot-regime grokking runs had no rise by step 1,000"
                + (f" ({', '.join(f['name'] for f in late)})" if late else "")
                + f"; {len(early_nev)}/{len(nev)} that did not grok had one by step 1,000"
                + (f" ({', '.join(f['name'] for f in early_nev)})" if early_nev else "") + _rise_ranges(g, nev)
                + fast_part)
    return Verdict(claim, v, numbers, (), evidence, rule)


def watch_test_acc_verdict(pilot: Sequence[dict], fast: Sequence[dict]) -> Verdict:
    """The issue's question: does Ô01 beat watching test accuracy? Two ways to watch it: test acc +0.10 over its value
    at memorisation, and the same detector on test accuracy (`test_acc_rise`); Ô01 must beat both."""
    claim = "Does the Ô01 alarm beat simply watching test accuracy? (the issue's question, not a pilot claim)"
    rule = (f"yes = earlier than both ways of watching test accuracy ({TEST_ACC_LABEL}, and the detector on test "
            "accuracy) in every grokking run with no more false alarms than either; no = earlier than both in fewer "
            "than half the grokking runs; in some runs otherwise")
    parts, answers, numbers = [], [], {}
    for label, fs in (("pilot regime", pilot), ("fast regime", fast)):
        g, h, nev, fa = _split(fs)
        if not g:
            continue
        before = lambda f, key: f["alarms"][key] is None or f["alarms"]["o01"] < f["alarms"][key]  # noqa: E731
        earlier = [f for f in h if before(f, "test_acc")]
        earlier_rise = [f for f in h if before(f, "test_acc_rise")]
        earlier_both = [f for f in h if before(f, "test_acc") and before(f, "test_acc_rise")]
        fat, far = _split(fs, "test_acc")[3], _split(fs, "test_acc_rise")[3]
        hit_t = _split(fs, "test_acc")[1]
        if len(earlier_both) == len(g):
            v = "yes" if len(fa) <= min(len(fat), len(far)) else "earlier, but with more false alarms"
        else:
            v = "no" if 2 * len(earlier_both) < len(g) else "in some runs"
        answers.append(f"{label}: {v}")
        at_mem = [f["test_acc_at_mem"] for f in fs if f.get("test_acc_at_mem") is not None]
        times = [f["test_acc_at_mem"] / f["chance"] for f in fs if f.get("test_acc_at_mem") is not None]
        numbers[label] = {"answer": v, "earlier_both": len(earlier_both), "grokked": len(g),
                          "test_acc_hits": len(hit_t), "test_acc_false": len(fat), "o01_false": len(fa)}
        parts.append(f"{label}: the Ô01 alarm came before {TEST_ACC_LABEL} in {len(earlier)}/{len(g)} grokking runs, "
                     f"before the test-accuracy detector (`test_acc_rise`) in {len(earlier_rise)}/{len(g)}, before both "
                     f"in {len(earlier_both)}/{len(g)}; false alarms in runs that did not grok: Ô01 {len(fa)}/{len(nev)}, "
                     f"{TEST_ACC_LABEL} {len(fat)}/{len(nev)}, `test_acc_rise` {len(far)}/{len(nev)}; {TEST_ACC_LABEL} "
                     f"fired before the jump in {len(hit_t)}/{len(g)} grokking runs"
                     + (f"; test accuracy at memorisation {fmt_num(min(at_mem), 3)}–{fmt_num(max(at_mem), 3)}, "
                        f"{min(times):.0f}–{max(times):.0f}× chance — the split is not at chance when the net has "
                        "memorised" if at_mem else ""))
    if not parts:
        return Verdict(claim, "not yet tested", {}, (), "", rule)
    return Verdict(claim, "; ".join(answers), numbers, (), "; ".join(parts), rule)


def baselines_record(facts: Sequence[dict]) -> Verdict:
    """What two of the baseline signals detect (numbers only): the Fourier concentration in the additive basis per
    operation, and how early the weight-norm alarm fires in runs with weight decay."""
    claim = "What the baselines detect (numbers only)"
    pilot = modular_runs(facts, "pilot")
    parts, numbers = [], {}
    counts = []
    for task in ("add", "mul"):
        g, h, _, _ = _split([f for f in pilot if f["task"] == task], "fourier")
        if g:
            counts.append(f"{len(h)}/{len(g)} pilot-regime {'addition' if task == 'add' else 'multiplication'} runs")
            numbers[f"fourier_{task}"] = (len(h), len(g))
    if counts:
        parts.append("Fourier concentration of W_E (additive basis) fired before the jump in " + " and ".join(counts))
    if "fourier_mul" in numbers:
        parts[-1] += (" — multiplication mod p is addition of discrete logarithms, so its circuit is sparse in the "
                      "multiplicative basis (residues 1…p−1 indexed by their discrete log, "
                      "`frequency_concentration(..., basis=\"multiplicative\")`), not in the additive one")
    wd = [f["alarms"]["weight_norm"] for f in facts if f["config"].get("weight_decay", 1.0) > 0
          and f["alarms"].get("weight_norm") is not None and f["regime"] in ("pilot", "fast")]
    n_wd = sum(1 for f in facts if f["config"].get("weight_decay", 1.0) > 0 and f["regime"] in ("pilot", "fast"))
    if wd:
        parts.append(f"the weight-norm alarm fired in {len(wd)}/{n_wd} modular runs with weight decay, at steps "
                     f"{fmt_num(min(wd))}–{fmt_num(max(wd))} (median {fmt_num(quantile(wd, 0.5))}), whether or not "
                     "they grokked: it detects weight decay shrinking the weights, not the coming jump")
        numbers["weight_norm_alarms"] = (len(wd), n_wd)
    return Verdict(claim, "numbers only", numbers, (), "; ".join(parts) if parts else "no run yet", "", table=False)


def forcing_verdict(facts: Sequence[dict], fast: Sequence[dict]) -> Verdict:
    """Forcing Ô01 → 1 does not stop grokking (pilot: 2/3 at 20k steps)."""
    claim = "Forcing Ô01 → 1 does not stop grokking (pilot: 2/3 at 20k steps)."
    rule = ("among runs where the term held the median post-memorisation Ô01 ≥ 0.9, reproduced = ≥ 2/3 grokked, not = "
            "none did (within our max steps, shorter than the pilot's 20k: a run that did not grok may grok later). "
            "Forced runs are in the fast regime, p 59, lr 3e-3: the pilot does not say which regime it forced")
    forced = [f for f in facts if f["regime"] == "forcing"]
    if not forced:
        return Verdict(claim, "not yet tested", {}, (), "no forced run finished", rule)
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
        v, evidence = "inconclusive", "the loss term did not hold Ô01 near 1 (median post-memorisation Ô01 < 0.9 in every run)"
    else:
        v = "reproduced" if 3 * len(eg) >= 2 * len(effective) else "partly" if eg else "not"
        evidence = (f"{len(eg)}/{len(effective)} runs in which forcing held Ô01 ≥ 0.9 still grokked"
                    + _provisional(len(effective), 3, "effectively forced runs"))
    evidence += ". " + "; ".join(per) + (f". Unforced fast-regime grok steps for comparison: median "
                                         f"{fmt_num(quantile(gf_steps, 0.5))}" if gf_steps else "")
    rates = [10000 * f["spikes"] / f["steps"] for f in forced if f["steps"]]
    low = [f["post_grok_low"] for f in forced if f.get("post_grok_low") is not None]
    g, h, _, _ = _split(fast)
    caveats = []
    if rates:
        evidence += (f". The forced runs are unstable: {min(rates):.0f}–{max(rates):.0f} train-loss spikes per 10,000 "
                     "steps" + (f", and test accuracy back below 0.5 at {100 * min(low):.0f}–{100 * max(low):.0f}% of "
                                "the logged points after the grok" if low else ""))
        caveats.append(f"unstable: {min(rates):.0f}–{max(rates):.0f} spikes per 10,000 steps")
    if g:
        evidence += (f"; and they are in the fast regime, where the Ô01 alarm came before the jump in only "
                     f"{len(h)}/{len(g)} unforced grokking runs: Ô01 does not predict grokking there anyway, so "
                     "forcing it there says little about the pilot's regime")
        caveats.append(f"fast regime, where Ô01 alarmed before {len(h)}/{len(g)} jumps")
    return Verdict(claim, v, {"effective": len(effective), "grokked": len(eg)}, tuple(caveats), evidence, rule)


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


def layernorm_record(facts: Sequence[dict], by_guard: Optional[dict] = None) -> Verdict:
    """Pre-LN blocks against none (the issue's architecture question): numbers only, no verdict — the pilot did not
    say which it used. Per learning rate: how many grokked, how often the train loss spiked, how much of the run the
    hold guard froze, and the Ô01 alarm count before the jump under each spike guard."""
    claim = "Architecture: pre-LN blocks (the issue's question, not a pilot claim; numbers only)."
    ln = [f for f in facts if f["regime"] == "layernorm"]
    if not ln:
        return Verdict(claim, "not yet tested", {}, (), "no pre-LN run has finished", "", table=False)

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
    return Verdict(claim, "numbers only", {"runs": len(ln)}, (), "; ".join(parts), "", table=False)


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
    r = pearson([f["grok"] for f in h], [f["alarms"]["o01"] for f in h])
    if not math.isnan(r):
        out += (f" The alarm's step hardly follows the jump's (r(alarm step, grok step) = {r:.2f}), so that lead is the "
                "grok step minus a near-constant, not a warning time.")
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
                    "the fact, not a tested rule; H2 of docs/study/PREREG.md tests it on fresh runs).")
    first = [f for f in h if f["alarms"]["test_acc_rise"] is not None
             and f["alarms"]["test_acc_rise"] <= f["alarms"]["o01"]]
    far = _split(pilot, "test_acc_rise")[3]
    out += (f" The same detector watching test accuracy (`test_acc_rise`) fired no later than Ô01 in {len(first)}/"
            f"{len(h)} of these runs" + (f", with {len(far)}/{len(nev)} false alarms" if nev else "") + ".")
    return out


def brief_table(verdicts: Sequence[Verdict]) -> list[str]:
    """The verdict records of :func:`claim_verdicts` as the brief table (numbers-only records left out)."""
    return render_table(list(verdicts))

"""The verdict record: what every claim's verdict function returns, and what the report's prose and brief table are
both rendered from (issue 20: no text is read back to find a verdict)."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One claim's verdict.

    ``claim``: the claim as stated (bold in the report); ``verdict``: the verdict word or phrase ("reproduced",
    "partly", "not", "not yet tested", "pending (3 of 16 runs finished)", ...); ``numbers``: the counts and figures
    the verdict rests on, by name; ``caveats``: short qualifications the brief table carries beside the verdict;
    ``evidence``: the sentence(s) giving the numbers in words; ``rule``: how the verdict is decided; ``table``:
    False for a numbers-only line with no verdict (left out of the brief table)."""

    claim: str
    verdict: str
    numbers: dict[str, Any] = dataclasses.field(default_factory=dict)
    caveats: tuple[str, ...] = ()
    evidence: str = ""
    rule: str = ""
    table: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.claim, str) or not self.claim:
            raise ValueError("claim: expected a non-empty string")
        if not isinstance(self.verdict, str):
            raise TypeError(f"verdict: expected a string, got {type(self.verdict).__name__}")
        if isinstance(self.caveats, str):
            raise TypeError("caveats: expected a sequence of strings, not one string")
        object.__setattr__(self, "caveats", tuple(self.caveats))


def render_line(v: Verdict) -> str:
    """The verdict as a markdown bullet: the claim in bold, the verdict, its evidence, its rule."""
    body = v.verdict + (f": {v.evidence}" if v.evidence else "")
    claim = v.claim if v.claim[-1] in ".?!)" else v.claim + "."
    return f"- **{claim}** {body.rstrip('.')}." + (f" Rule: {v.rule.rstrip('.')}." if v.rule else "")


def render_table(verdicts: list[Verdict]) -> list[str]:
    """The brief table: one row per verdict that has one (numbers-only records are left out), with its caveats."""
    out = ["| claim | verdict |", "|---|---|"]
    for v in verdicts:
        if v.table:
            out.append(f"| {v.claim.rstrip('.')} | {'; '.join((v.verdict, *v.caveats))} |")
    return out

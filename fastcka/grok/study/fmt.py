"""Number formatting shared by the report's tables, verdicts and figures."""

from __future__ import annotations

import math
from typing import Any


def fmt_num(x: Any, nd: int = 0) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def fmt_ci(ci: tuple[float, float], pct: bool = False, nd: int = 0) -> str:
    if any(not math.isfinite(v) for v in ci):
        return "–"
    return f"[{ci[0]:.0%}, {ci[1]:.0%}]" if pct else f"[{ci[0]:.{nd}f}, {ci[1]:.{nd}f}]"

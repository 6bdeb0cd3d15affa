"""How the report writes numbers and Markdown tables."""

from __future__ import annotations

import math
from typing import Any

from .stats import Interval


def fmt(x: Any, nd: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def fmt_bytes(x: Any) -> str:
    if not isinstance(x, (int, float)) or math.isnan(x):
        return "-"
    for unit, div in (("MB", 1e6), ("kB", 1e3)):
        if x >= div:
            return f"{x / div:.2f} {unit}"
    return f"{int(x)} B"


def md_table(header: list[str], body: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(row) + " |" for row in body]
    return out


def mean_text(r: dict[str, Any] | None, nd: int = 2) -> str:
    """A mean row's value with its interval: ``29.49 [29.01, 29.97]``, or the value alone without one."""
    if not r:
        return "-"
    iv = Interval(r["value"], _none_nan(r.get("ci_lo")), _none_nan(r.get("ci_hi")), r.get("n", 0), r.get("ci_kind", ""))
    return iv.text(nd, signed=False)


def _none_nan(x: Any) -> float:
    return math.nan if x is None else float(x)

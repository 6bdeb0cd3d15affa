"""The paper's claims at a multi-task preset's settings: one table row per (claim, task) with the paper's
figure, the measured numbers and a verdict, written as ``claims.md`` beside the report and copied into bench/RESULTS.md.

Input is the report's per-task quality (task -> base method -> {"family", "sparsity", "psnr": {(image, seed): dB}}),
so this module needs no harness and no rows format of its own. Every comparison is paired by image and seed and read
from the 95% interval of its mean difference (:mod:`.stats`): a claim "holds" only when the interval clears the
threshold, is "within noise" when it straddles it, "does not hold" when it lies on the wrong side, "n too small"
with fewer than three pairs, and "not measured yet" without paired rows.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from . import stats

NEAR_DB = 0.5  # target: "within 0.5 dB" of dense (up to 89%) and of the image's own ticket (transfer)
ABOVE_RANDOM_DB = 1.0  # target: "at >= 95% sparsity, LIP above random pruning by >= 1 dB"
MODERATE = 0.9  # "up to 89%": the LIPs whose sparsity is at most this must match dense
EXTREME = 0.95  # "at >= 95%": the LIPs compared with random pruning

# The paper's own plots (PSNR dB; sparsity -> LIP PSNR), as recorded in ../shared/DOMAIN.md: task -> (image, dense,
# [(sparsity, LIP PSNR)]). Its images, sizes and 3000-iteration fits differ from a preset's: compare gaps, not dB.
PAPER_FIGURES: dict[str, tuple[str, float, list[tuple[float, float]]]] = {
    "denoise": ("baby", 31.07, [(0.59, 31.17), (0.67, 31.24), (0.74, 31.13), (0.9953, 29.02)]),
    "inpaint": ("kate", 33.32, [(0.79, 34.52), (0.83, 34.42), (0.914, 33.83), (0.9953, 29.67)]),
    "sr": ("zebra, x4", 25.59, [(0.83, 25.75), (0.865, 25.73), (0.914, 25.63), (0.9953, 23.72)]),
}


@dataclass(frozen=True)
class Comparison:
    """Differences ``a - b`` of one pair of methods on one task, per unit (an (image, seed) pair: both fitted on
    the same image with the same seed)."""

    a: str
    b: str
    diffs: dict[Hashable, float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.diffs.values())

    @property
    def interval(self) -> stats.Interval:
        """Mean and 95% interval of the differences (:func:`lipdeploy.bench.stats.interval`)."""
        return stats.interval(list(self.diffs.values()))

    @property
    def label(self) -> str:
        """The LIP's sparsity label ("89") or the transferred ticket's name."""
        return _label(self.a)

    def text(self) -> str:
        """``89: -0.05 [-0.31, +0.21] (n=6)``."""
        iv = self.interval
        return f"{self.label}: {iv.text()} (n={iv.n})"


def _label(method: str) -> str:
    """``lip-unstructured-89`` -> ``89``, the suffix its random / matched rivals share; other names unchanged."""
    return method.removeprefix("lip-unstructured-")


def _diff(ms: dict[str, dict[str, Any]], a: str, b: str) -> Comparison | None:
    pa, pb = ms.get(a, {}).get("psnr", {}), ms.get(b, {}).get("psnr", {})
    imgs = sorted(set(pa) & set(pb))
    return Comparison(a, b, {i: pa[i] - pb[i] for i in imgs}) if imgs else None


@dataclass(frozen=True)
class Bar:
    """A claim's threshold: the difference must be above ``threshold`` (``strict``: strictly)."""

    threshold: float
    strict: bool = False


def verdict(comparisons: list[Comparison], bar: Bar) -> str:
    """Each comparison's verdict read from its interval (:func:`lipdeploy.bench.stats.verdict`): 'holds',
    'within noise', 'does not hold' or 'n too small'; 'not measured yet' without comparisons. Where the comparisons
    (sparsities, transferred tickets) disagree, each verdict names where it applies: "holds at 59, 89; within noise
    at 95.6"."""
    if not comparisons:
        return "not measured yet"
    each = [(c.label, stats.verdict(c.interval, bar.threshold, bar.strict)) for c in comparisons]
    kinds = list(dict.fromkeys(v for _, v in each))
    if len(kinds) == 1:
        return kinds[0]
    return "; ".join(f"{k} at {', '.join(lbl for lbl, v in each if v == k)}" for k in kinds)


def _lips(ms: dict[str, dict[str, Any]], keep: Callable[[float], bool]) -> list[str]:
    lips = [m for m, e in ms.items() if e.get("family") == "lip" and e.get("sparsity") is not None]
    return sorted((m for m in lips if keep(ms[m]["sparsity"])), key=lambda m: ms[m]["sparsity"])


def _paper_near_dense(task: str) -> str:
    if task not in PAPER_FIGURES:
        return "-"
    img, dense, pts = PAPER_FIGURES[task]
    best = max((p for p in pts if p[0] < EXTREME), key=lambda p: p[0])
    return f"{img}: {100 * best[0]:.1f}% {best[1] - dense:+.2f} vs dense"


def _paper_extreme(task: str) -> str:
    if task not in PAPER_FIGURES:
        return "-"
    img, dense, pts = PAPER_FIGURES[task]
    sp, v = max(pts)
    return f"{img}: {100 * sp:.2f}% {v - dense:+.2f} vs dense"


def _measured(cs: list[Comparison]) -> str:
    """``59: +0.16 [-0.1, +0.4] (n=6); 89: ... dB (2 image(s) x 3 seed(s); t)``."""
    if not cs:
        return "-"
    images = max(len({u[0] if isinstance(u, tuple) else u for u in c.diffs}) for c in cs)
    seeds = max(len({u[1] if isinstance(u, tuple) else 0 for u in c.diffs}) for c in cs)
    kinds = ", ".join(dict.fromkeys(c.interval.kind for c in cs))
    return "; ".join(c.text() for c in cs) + f" dB ({images} image(s) x {seeds} seed(s); {kinds})"


def claim_rows(tq: dict[str, dict[str, dict[str, Any]]]) -> list[list[str]]:
    """[claim, task, paper, measured, verdict] per claim and task, in the order the issue states them."""
    rows: list[list[str]] = []

    def add(claim: str, task: str, paper: str, cs: list[Comparison], bar: Bar | None) -> None:
        rows.append([claim, task, paper, _measured(cs), verdict(cs, bar) if bar else "reported (no threshold)"])

    for task in sorted(tq):
        ms = tq[task]
        near = [c for m in _lips(ms, lambda s: s <= MODERATE) if (c := _diff(ms, m, "dense"))]
        add(f"LIP within {NEAR_DB} dB of dense up to 89%", task, _paper_near_dense(task), near, Bar(-NEAR_DB))
        extreme = _lips(ms, lambda s: s >= EXTREME)
        above = [c for m in extreme if (c := _diff(ms, m, f"random-{_label(m)}"))]
        add(f"LIP >= {ABOVE_RANDOM_DB:g} dB above random pruning at >= 95%", task, "LIP above random (curves)",
            above, Bar(ABOVE_RANDOM_DB))  # fmt: skip
        dd = [c for m in _lips(ms, lambda s: True) if (c := _diff(ms, m, f"dd-matched-{_label(m)}"))]
        add("LIP beats the deep decoder of equal size", task, "LIP above deep decoder", dd, Bar(0.0, strict=True))
        drop = [c for m in extreme[-1:] if (c := _diff(ms, m, "dense"))]
        add("LIP at the most extreme sparsity vs dense", task, _paper_extreme(task), drop, None)
        for family, what in (("transfer", "another image"), ("transfer-task", "another task"),
                             ("transfer-multi", "several other images at once")):  # fmt: skip
            cs = []
            for m, e in sorted(ms.items()):
                if e.get("family") == family and (c := _diff(ms, m, f"lip-unstructured-{m.split('-')[1]}")):
                    cs.append(c)
            cs.sort(key=lambda c: ms[c.b]["sparsity"])
            add(f"a ticket found on {what} within {NEAR_DB} dB of the image's own", task, "transfers (tables)", cs,
                Bar(-NEAR_DB))  # fmt: skip
    return [r for r in rows if not (r[3] == "-" and r[0].startswith("a ticket found"))]  # transfers a task lacks


def claims_markdown(tq: dict[str, dict[str, dict[str, Any]]], setting: str) -> str:
    """The claims table as Markdown (``setting`` says where it was measured), '' without per-task rows."""
    body = claim_rows(tq)
    if not body:
        return ""
    lines = [
        f"Measured: {setting}. Numbers are PSNR differences in dB, paired by image and seed: mean [95% interval] "
        "(n pairs) per sparsity for the LIP rows, per transferred ticket for the transfer rows; the interval is "
        f"Student t (below {stats.BOOTSTRAP_MIN_N} pairs) or the percentile bootstrap, none below {stats.MIN_N} pairs "
        "(n too small). A verdict holds only when the interval clears the threshold; 'within noise': it straddles "
        "it. Paper: its own plots as recorded in DOMAIN.md (other images, full size, 3000 iterations), so compare "
        "gaps, not absolute dB.",
        "",
        "| claim | task | paper | measured here | verdict |",
        "|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines) + "\n"

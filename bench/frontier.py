"""Structured tickets: quality vs measured latency. Per ticket family, the sparsest ticket within 0.5 dB of the
dense DIP and its latency beside dense's, and the structured-sparsity targets as verdicts; build_report appends these
lines when the rows hold a dense DIP."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from . import stats
from .derived import sparsity_of
from .verdicts import (
    NEAR_DENSE_DB,
    better_verdict,
    delta_intervals,
    delta_vs_dense,
    interval_line,
    paired_diffs,
    quality_by_fit,
)

REFERENCE_FAMILIES = ("dense", "dd", "dd-matched", "dip-narrow")
# the deployable form on each runtime: a structured ticket runs compacted (the masked "torch-cpu" network costs what
# dense costs whatever the mask, so it says nothing about a ticket's speed)
FRONTIER_RUNNERS = (("onnxruntime-cpu", "ONNX Runtime CPU"), ("torch-cpu-compact", "compacted PyTorch CPU"))


def family_label(family: str, rows: list[dict[str, Any]]) -> str:
    """A ticket family as the report names it. Channel tickets say which pruning rule made them: rows of tickets
    found by the global rule (mean |w| over the whole network, no minimum width) carry no ``channel_rule``: the
    committed cpu ``lip-channel-59``."""
    if family == "lip":
        return "unstructured"
    if family in ("lip-channel", "lip-channel-norm"):
        rules = {r.get("channel_rule") for r in rows if r.get("family") == family and r["metric"] == "psnr_best"}
        rule = next((x for x in rules if x), None)
        return f"channel ({rule})" if rule else "channel (earlier rule: global mean |w|, no minimum width)"
    return family.removeprefix("lip-")


def latency_vs_dense(rows: list[dict[str, Any]], runner: str) -> dict[str, float]:
    """Per method: forward latency over the dense DIP's, both timed in the same run (rows' ``env``). Ratios across runs
    mean nothing on a shared machine: on the cpu preset's 2-core VM the dense-cost masked network timed 160 ms in one
    session and 76 ms in the next (PyTorch CPU, 1 thread). Methods without a dense timing in their run are left out
    (re-time them together: ``lipdeploy bench --jobs 'latency/*' --redo 'latency/*'``)."""
    return {m: ms / dense_ms for m, (ms, dense_ms) in beside_dense(rows, runner).items()}


def beside_dense(rows: list[dict[str, Any]], runner: str) -> dict[str, tuple[float, float]]:
    """Per method timed on ``runner`` in a run (rows' ``env``) that also timed the dense DIP: (its forward ms, the
    dense DIP's forward ms in that run)."""
    timed = [
        r
        for r in rows
        if r["metric"] == "forward_ms" and r.get("runner") == runner and isinstance(r.get("value"), (int, float))
    ]
    dense = {r.get("env"): r["value"] for r in timed if r["method"] == "dense" and r["value"] > 0}
    return {r["method"]: (r["value"], dense[r.get("env")]) for r in timed if r.get("env") in dense}


def frontier_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per ticket granularity: the sparsest ticket whose mean PSNR is within 0.5 dB of the dense DIP's
    (paired by image and seed), with the verdict its 95% interval gives ("within noise" when the interval straddles
    -0.5 dB), and its forward latency ratio vs dense per runtime; then each channel ticket vs the narrow DIP of equal
    parameter count. Empty when the rows hold no dense DIP."""
    deltas = delta_vs_dense(rows)
    if not deltas.get("dense", (0, 0))[1]:
        return []
    ivs = delta_intervals(rows)
    q = quality_by_fit(rows)
    sparsity = sparsity_of(rows)
    fams: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        fam = r.get("family") or ""
        if r["metric"] == "psnr_best" and r.get("image") == "mean" and (fam == "lip" or fam.startswith("lip-")):
            fams[fam].append(r["method"])
    lat = {b: latency_vs_dense(rows, b) for b, _ in FRONTIER_RUNNERS}
    lines = []
    for fam in sorted(fams):
        paired = [m for m in fams[fam] if m in ivs and ivs[m].n]
        label = family_label(fam, rows)
        verdicts = {m: stats.verdict(ivs[m], -NEAR_DENSE_DB) for m in paired}
        ok = [m for m in paired if ivs[m].mean >= -NEAR_DENSE_DB]
        if not ok:
            worst = ", ".join(f"{m} {ivs[m].text()} dB" for m in sorted(paired))
            lines.append(f"- {label}: no ticket within {NEAR_DENSE_DB} dB of dense ({worst or 'no paired results'})")
            continue
        best = max(ok, key=lambda m: sparsity.get(m, 0.0))
        speed = []
        for b, name in FRONTIER_RUNNERS:
            if lat[b].get(best):
                speed.append(f"{name} latency {lat[b][best]:.2f}x dense's")
        sp = 100 * sparsity.get(best, 0.0)
        how = {stats.HOLDS: "", stats.NOISE: " (within noise: its interval straddles the bar)",
               stats.UNKNOWN: " (mean only: n too small for an interval)"}[verdicts[best]]  # fmt: skip
        lines.append(
            f"- {label}: sparsest ticket within {NEAR_DENSE_DB} dB of dense{how}: {best} ({sp:.1f}% sparse, "
            f"{interval_line(ivs[best], paired_diffs(q, best, 'dense'))}); "
            + ("; ".join(speed) or "latency not measured in a run that timed dense")
        )
    for m in sorted({m for m, _, _ in q if m.startswith("lip-channel-norm-")}):
        other = m.replace("lip-channel-norm-", "dip-narrow-")
        v = better_verdict(q, m, other)
        if v:
            lines.append(f"- {m} vs {other} (dense narrow DIP, equal parameters): {v}")
    return lines + target_lines(rows)


TARGET_SPEEDUP = 2.0  # target: a structured LIP within 0.5 dB of dense, >= 2x the dense export's ORT CPU speed
BLOCK_TARGET_SPARSITY = 0.8  # target: a block-16 LIP at >= 80% within 0.5 dB of dense


def target_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The structured-sparsity targets as verdicts: (1) a structured ticket (any granularity but unstructured) within
    0.5 dB of dense that runs >= 2x faster than the dense model in ONNX Runtime CPU; (2) a 16x16 block ticket at
    >= 80% within 0.5 dB of dense. Each names the tickets that meet it, or the closest ones, with the number of images
    behind it."""
    deltas = delta_vs_dense(rows)
    if not deltas.get("dense", (0, 0))[1]:
        return []
    sparsity = sparsity_of(rows)
    family = {r["method"]: r.get("family") or "" for r in rows if r["metric"] == "psnr_best" and r.get("method")}
    paired = {m: deltas[m] for m in family if m in deltas and deltas[m][1]}
    structured = sorted(m for m in paired if family[m].startswith("lip-"))
    ort = {m: 1.0 / r for m, r in latency_vs_dense(rows, "onnxruntime-cpu").items() if r > 0}  # speedups

    ivs = delta_intervals(rows)
    q = quality_by_fit(rows)

    def desc(m: str) -> str:
        speed = f", {ort[m]:.2f}x dense's ONNX Runtime CPU speed" if m in ort else ""
        verdict = stats.verdict(ivs[m], -NEAR_DENSE_DB)
        return (f"{m} ({100 * sparsity.get(m, 0.0):.1f}% sparse, {interval_line(ivs[m], paired_diffs(q, m, 'dense'))}"
                f"{speed}: {verdict})")  # fmt: skip

    def near_dense(m: str) -> bool:  # the mean is within 0.5 dB; desc() says what its interval makes of it
        return paired[m][0] >= -NEAR_DENSE_DB

    lines = []
    near = [m for m in structured if near_dense(m)]
    timed = [m for m in structured if m in ort]
    met = [m for m in near if m in timed and ort[m] >= TARGET_SPEEDUP]
    head = f"- target: a structured LIP within {NEAR_DENSE_DB} dB of dense, >= {TARGET_SPEEDUP:g}x faster in ORT CPU"
    if met:
        lines.append(f"{head}: met by " + "; ".join(desc(m) for m in met))
    elif not timed:
        lines.append(f"{head}: not measured (no structured ticket timed in ONNX Runtime beside dense)")
    else:
        closest = [max((m for m in near if m in timed), key=lambda m: ort[m], default=None)]
        fast = [m for m in timed if ort[m] >= TARGET_SPEEDUP]
        closest.append(max(fast, key=lambda m: paired[m][0], default=None))
        named = "; ".join(desc(m) for m in dict.fromkeys(c for c in closest if c))
        lines.append(f"{head}: not met; closest: {named or 'none timed'}")
    blocks = sorted((m for m in structured if family[m] == "lip-block"), key=lambda m: sparsity.get(m, 0.0))
    high = [m for m in blocks if sparsity.get(m, 0.0) >= BLOCK_TARGET_SPARSITY]
    head = f"- target: a 16x16 block LIP at >= {BLOCK_TARGET_SPARSITY:.0%} within {NEAR_DENSE_DB} dB of dense"
    if not high:
        lines.append(f"{head}: not measured")
    else:
        ok = [m for m in high if near_dense(m)]
        miss = [m for m in high if m not in ok]
        verdict = "met by " + "; ".join(desc(m) for m in ok) if ok else "not met"
        lines.append(f"{head}: {verdict}" + ("; not by " + "; ".join(desc(m) for m in miss) if miss else ""))
    return lines

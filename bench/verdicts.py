"""Paired comparisons and their verdicts: every difference pairs two methods' fits on the same image with the same
seed, and a verdict is read from the 95% interval of the differences (:func:`lipdeploy.bench.stats.verdict`). Also
the noise floor those intervals stand on."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from . import stats
from .derived import method_order, seed_of, sparsity_of
from .formatting import md_table
from .stats import Interval

CLAIM_BAND = (0.79, 0.91)  # "LIPs at 80-90% sparsity" (nominal 0.8^k sparsities 83% and 89% fall in it)


NEAR_DENSE_DB = 0.5  # "within 0.5 dB of dense": the quality bar of the frontier's headline lines


Unit = tuple[str, int]  # (image, seed): one fit of a method; paired differences pair two methods' fits on a unit


def quality_by_fit(rows, metric="psnr_best") -> dict[tuple[str, str, int], float]:
    """(method, image, seed) -> value of a per-image metric."""
    return {
        (r["method"], r["image"], seed_of(r)): r["value"]
        for r in rows
        if r["metric"] == metric and r["image"] not in ("mean", "-") and isinstance(r.get("value"), (int, float))
    }


def paired_diffs(q: dict[tuple[str, str, int], float], a: str, b: str) -> dict[Unit, float]:
    """``a - b`` per (image, seed) on which both were fitted."""
    units = sorted({(i, s) for m, i, s in q if m == a} & {(i, s) for m, i, s in q if m == b})
    return {u: q[(a, *u)] - q[(b, *u)] for u in units}


def paired_interval(q: dict[tuple[str, str, int], float], a: str, b: str) -> Interval:
    """Mean and 95% interval of ``a - b`` over the (image, seed) units both have."""
    return stats.interval(list(paired_diffs(q, a, b).values()))


def delta_intervals(rows: list[dict[str, Any]], metric: str = "psnr_best") -> dict[str, Interval]:
    """Per method: the mean and 95% interval of (method - dense DIP on the same image with the same seed).

    Methods are run on different image sets (structured tickets on the first image only, transfer on the others),
    and PSNR varies by several dB between photographs, so differences are only meaningful paired."""
    q = quality_by_fit(rows, metric)
    return {m: paired_interval(q, m, "dense") for m in {m for m, _, _ in q}}


def delta_vs_dense(rows: list[dict[str, Any]], metric: str = "psnr_best") -> dict[str, tuple[float, int]]:
    """Per method: (mean of method - dense DIP paired by image and seed, the number of pairs)."""
    return {m: (iv.mean, iv.n) for m, iv in delta_intervals(rows, metric).items()}


def units_text(diffs: dict[Unit, float]) -> str:
    """``6: 2 image(s) x 3 seed(s)``: what a paired n stands on."""
    images = len({i for i, _ in diffs})
    seeds = len({s for _, s in diffs})
    grid = "x" if images * seeds == len(diffs) else "pairs over"  # not every image has every seed yet
    return f"{len(diffs)}: {images} image(s) {grid} {seeds} seed(s)"


def interval_line(iv: Interval, diffs: dict[Unit, float]) -> str:
    """``-0.26 [-0.61, +0.09] dB (n=6: 2 image(s) x 3 seed(s), t)``."""
    return f"{iv.text()} dB (n={units_text(diffs)}, {iv.kind})" if iv.n else "no pairs"


def better_verdict(q: dict[tuple[str, str, int], float], a: str, b: str) -> str | None:
    """Verdict of "a beats b" (a - b > 0), paired by image and seed, read from the interval of the difference."""
    diffs = paired_diffs(q, a, b)
    if not diffs:
        return None
    iv = stats.interval(list(diffs.values()))
    return f"{interval_line(iv, diffs)} -> {stats.verdict(iv, 0.0, strict=True)}"


def _beats(q: dict[tuple[str, str], float], lips: list[str], rival: str, title: str, what: str) -> list[str]:
    """A claim "each LIP beats its rival" (the rival named by replacing the LIP's prefix with ``rival``)."""
    lines = ["", title]
    for m in lips:
        other = m.replace("lip-unstructured-", rival)
        v = better_verdict(q, m, other)
        if v:
            lines.append(f"- {m} vs {other}: {v}")
    if len(lines) == 2:
        lines.append(f"- not tested yet (no paired LIP / {what} results)")
    return lines


NO_VERDICT_PRESETS = ("ci",)  # smoke-test presets: their numbers carry no evidence, so no verdict is printed


def claims(rows: list[dict[str, Any]], preset: dict[str, Any] | None = None) -> list[str]:
    """The paper's three claims with a verdict computed from the measured PSNRs, paired by image and seed: "holds"
    only when the 95% interval of the difference clears the threshold, "within noise" when it straddles it, "does
    not hold" when it lies on the wrong side (:func:`lipdeploy.bench.stats.verdict`). A smoke-test preset
    (:data:`NO_VERDICT_PRESETS`) gets one line saying why there is no verdict instead, a multi-task preset one line
    pointing to its per-task claims table."""
    if preset and preset.get("name") in NO_VERDICT_PRESETS:
        return [
            f"- no verdicts: the `{preset['name']}` preset is a smoke test (tiny images, few iterations); its "
            "numbers say nothing about the paper's claims. Use `--preset cpu` or `paper`."
        ]
    if preset and len(preset.get("tasks") or ()) > 1:
        # method names carry "@task" there and each task has its own dense DIP: the per-task claims table
        # (paper_claims) pairs them; these one-task verdicts would compare across tasks or find no dense
        return ["- per task: see the table of the paper's claims (claims.md, and its section below)"]
    q = quality_by_fit(rows)
    sp = {r["method"]: r.get("sparsity") for r in rows if r["metric"] == "psnr_best"}
    lips = sorted({m for m, _, _ in q if m.startswith("lip-unstructured-")}, key=lambda m: (sp.get(m) or 0, m))
    lines = []
    # 1. LIP at 80-90% within 0.5 dB of dense
    band = [m for m in lips if sp.get(m) is not None and CLAIM_BAND[0] <= sp[m] <= CLAIM_BAND[1]]
    lines.append("**Claim 1: LIPs at 80-90% sparsity match the dense DIP within 0.5 dB (best PSNR).**")
    tested = band or lips
    if not tested:
        lines.append("- not tested: no LIP or no dense DIP result yet")
    if not band and lips:
        lines.append("- no LIP at 80-90% sparsity in this run; the LIPs measured are reported for information")
    for m in tested:
        diffs = paired_diffs(q, m, "dense")
        if not diffs:
            lines.append(f"- {m}: no dense result on the same images yet")
            continue
        iv = stats.interval(list(diffs.values()))
        verdict = stats.verdict(iv, -NEAR_DENSE_DB)
        tag = verdict if m in band else f"({verdict} at this sparsity; outside the claim's range)"
        lines.append(f"- {m} ({100 * sp[m]:.1f}% sparse) vs dense: {interval_line(iv, diffs)} -> {tag}")
    # 2. LIP beats DD of equal parameter count; 3. random pruning is worse
    claim2 = "**Claim 2: LIPs beat the deep decoder of (about) equal parameter count.**"
    lines += _beats(q, lips, "dd-matched-", claim2, "matched deep decoder")
    claim3 = "**Claim 3: random pruning at equal sparsity is worse than the LIP.**"
    lines += _beats(q, lips, "random-", claim3, "random")
    # transfer is the paper's fourth finding, reported without a pass/fail threshold
    transfers = sorted({m for m, _, _ in q if m.startswith("transfer-")})
    if transfers:
        lines += ["", "**Transfer: a ticket found on one image, fitted to another (vs the target's own LIP).**"]
    for m in transfers:
        own = "lip-unstructured-" + m.split("-")[1]
        d_own, d_dense = paired_diffs(q, m, own), paired_diffs(q, m, "dense")
        iv_own, iv_dense = stats.interval(list(d_own.values())), stats.interval(list(d_dense.values()))
        vs_own = f"{interval_line(iv_own, d_own)} vs {own}" if d_own else f"no {own} on the same images yet"
        vs_dense = f"{interval_line(iv_dense, d_dense)} vs dense" if d_dense else "no dense result on the same images"
        lines.append(f"- {m}: {vs_own}; {vs_dense}")
    return lines


def dense_of(method: str) -> str:
    """The dense DIP a method is compared with: ``dense``, or ``dense@task`` for a multi-task preset's method."""
    _, at, task = method.partition("@")
    return f"dense@{task}" if at else "dense"


def reference_pairs(methods: list[str], sparsity: dict[str, float]) -> list[tuple[str, str, str, float, bool]]:
    """Every comparison the presets make, as (a, b, claim, threshold, strict): a - b must be above the threshold.
    A ticket vs the dense DIP (within 0.5 dB), an unstructured LIP vs random pruning (above it; by >= 1 dB from 95%)
    and vs the matched deep decoder (above it), a transferred ticket vs the image's own (within 0.5 dB), a channel
    ticket vs the narrow DIP of its size (above it)."""
    have = set(methods)
    out = []
    for m in methods:
        base, at, task = m.partition("@")
        tail = f"@{task}" if at else ""
        dense = dense_of(m)
        fam = base.rsplit("-", 1)[0]
        if base.startswith("lip-") and dense in have:
            out.append((m, dense, f"within {NEAR_DENSE_DB} dB of dense", -NEAR_DENSE_DB, False))
        if base.startswith("lip-unstructured-"):
            p = base.removeprefix("lip-unstructured-")
            rnd, dd = f"random-{p}{tail}", f"dd-matched-{p}{tail}"
            if rnd in have:
                extreme = (sparsity.get(m) or 0) >= 0.95
                out.append((m, rnd, "above random pruning" + (" by >= 1 dB" if extreme else ""),
                            1.0 if extreme else 0.0, not extreme))  # fmt: skip
            if dd in have:
                out.append((m, dd, "above the matched deep decoder", 0.0, True))
        if fam.startswith("transfer-") or base.startswith("transfer-") or base.startswith("xtask-"):
            own = f"lip-unstructured-{base.split('-')[1]}{tail}"
            if own in have:
                out.append((m, own, f"within {NEAR_DENSE_DB} dB of the image's own ticket", -NEAR_DENSE_DB, False))
        if base.startswith("lip-channel-norm-"):
            narrow = base.replace("lip-channel-norm-", "dip-narrow-") + tail
            if narrow in have:
                out.append((m, narrow, "above the narrow DIP of equal size", 0.0, True))
    return out


def comparison_table(rows: list[dict[str, Any]]) -> list[str]:
    """Every paired comparison of :func:`reference_pairs` with its mean difference, 95% interval, n and verdict."""
    q = quality_by_fit(rows)
    sparsity = sparsity_of(rows)
    methods = method_order([r for r in rows if r["metric"] == "psnr_best"])
    body = []
    for a, b, claim, threshold, strict in reference_pairs(methods, sparsity):
        diffs = paired_diffs(q, a, b)
        if not diffs:
            continue
        iv = stats.interval(list(diffs.values()))
        bar = f"{'>' if strict else '>='} {threshold:+.1f}"
        body.append([f"{a} - {b}", claim, bar, iv.text(), units_text(diffs), iv.kind,
                     stats.verdict(iv, threshold, strict)])  # fmt: skip
    if not body:
        return []
    return md_table(["difference (dB)", "claim", "bar", "mean [95% interval]", "n", "interval", "verdict"], body)


def noise_floor(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The seed-to-seed noise of the folder's fits: the pooled standard deviation over seeds of one method's best PSNR
    on one image (``fit_sd``, with ``fit_df`` degrees of freedom over ``fit_groups`` (method, image) groups), and of a
    method's difference to the dense DIP on one image with the same seed (``diff_sd``, ``diff_df``,
    ``diff_groups``); nan without two seeds of anything."""
    q = quality_by_fit(rows)
    fits: dict[tuple[str, str], list[float]] = defaultdict(list)
    for (m, i, _s), v in q.items():
        fits[(m, i)].append(v)
    diffs: dict[tuple[str, str], list[float]] = defaultdict(list)
    for m in {m for m, _, _ in q}:
        if m != dense_of(m):
            for (i, _s), d in paired_diffs(q, m, dense_of(m)).items():
                diffs[(m, i)].append(d)
    fit_sd, fit_df = stats.pooled_sd(list(fits.values()))
    diff_sd, diff_df = stats.pooled_sd(list(diffs.values()))
    return {
        "fit_sd": fit_sd, "fit_df": fit_df, "fit_groups": sum(len(v) > 1 for v in fits.values()),
        "diff_sd": diff_sd, "diff_df": diff_df, "diff_groups": sum(len(v) > 1 for v in diffs.values()),
        "seeds": len({s for _, _, s in q}),
    }  # fmt: skip


def noise_floor_lines(rows: list[dict[str, Any]], preset: dict[str, Any]) -> list[str]:
    """The noise floor in words (:func:`noise_floor`), or a line saying that one seed per fit cannot show it."""
    nf = noise_floor(rows)
    name = preset.get("name", "?")
    if not nf["fit_df"]:
        return [f"- `{name}`: one seed per fit: the seed-to-seed noise is not measured in this folder"]
    fit = (
        f"- `{name}`: seed-to-seed standard deviation of a fit's best PSNR **{nf['fit_sd']:.2f} dB** (pooled over "
        f"{nf['fit_groups']} (method, image) groups, {nf['fit_df']} degrees of freedom)"
    )
    if not nf["diff_df"]:
        return [fit + "; no paired difference to the dense DIP with two seeds yet"]
    gap = stats.t_quantile(nf["diff_df"]) * nf["diff_sd"]
    return [
        fit + f"; of a paired difference to the dense DIP (same image, same seed) **{nf['diff_sd']:.2f} dB** "
        f"({nf['diff_groups']} groups, {nf['diff_df']} df): one pair's difference is noise up to about +-{gap:.2f} dB "
        "(95%), a mean over n pairs up to about that / sqrt(n)"
    ]


def threads_note(rows: list[dict[str, Any]]) -> list[str]:
    """A line when the quality rows ran with different torch thread counts (or some did not record theirs): a fit's
    PSNR depends on its threads (seed 0, 96 px: 27.18 dB on one thread, 27.09 dB on two), so such rows are not
    repeats of one measurement."""
    fits = [r for r in rows if r["metric"] == "psnr_best" and r.get("image") not in ("mean", "-")]
    counts: dict[str, int] = defaultdict(int)
    for r in fits:
        counts["not recorded" if r.get("threads") is None else str(r["threads"])] += 1
    if len(counts) < 2:
        return []
    mix = ", ".join(f"{k} thread(s): {v} fits" for k, v in sorted(counts.items()))
    return ["", f"Note: these fits ran with different torch thread counts ({mix}); a fit's PSNR depends on its "
            "threads, so they are not repeats of one measurement."]  # fmt: skip

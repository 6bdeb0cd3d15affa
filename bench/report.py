"""Build the report from every rows file in a results folder: CSV, JSON, Markdown and PNG plots.

Always rebuilt from all ``rows-*.jsonl`` files (never incrementally), so shards copied into one folder merge and a
resumed run's report covers everything finished. Derived numbers are computed here, not in the jobs, because they
combine jobs that may have run on different machines: means over images, time to quality (needs the dense DIP's best
PSNR on the same image) and the verdicts on the paper's claims. The folder is read through :mod:`.rows` only: the
report never imports the harness, so a copied results folder rebuilds without the fitting engine.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from lipdeploy.errors import InputError
from lipdeploy.fileio import atomic_output, atomic_write_text, read_json_file

from . import stats
from .paper_claims import claims_markdown
from .rows import RowStore, curve_path
from .stats import Interval

TTQ_MARGIN_DB = 0.5  # time to quality: seconds until PSNR >= dense DIP best - this
HEADLINE_FAMILIES = (
    "dense", "dd", "lip", "random", "dd-matched", "lip-kernel", "lip-channel", "transfer",
    "lip-block", "random-block", "lip-channel-norm", "dip-narrow",
)  # fmt: skip
CLAIM_BAND = (0.79, 0.91)  # "LIPs at 80-90% sparsity" (nominal 0.8^k sparsities 83% and 89% fall in it)
ENV_COLUMNS = ("cpu", "gpu", "torch", "onnxruntime", "triton", "numpy", "torch_threads")
CSV_COLUMNS = (
    "method",
    "family",
    "image",
    "metric",
    "value",
    "unit",
    "runner",
    "preset",
    "task",
    "sparsity",
    "params",
    "nonzeros",
    "granularity",
    "dd_k",
    "source_image",
    "size",
    "rounds",
    "iterations",
    "seed",
    "threads",
    "n",
    "n_images",
    "n_seeds",
    "ci_lo",
    "ci_hi",
    "ci_kind",
    "loadavg",
    "loaded",
    "min_ms",
    "q1_ms",
    "q3_ms",
    "max_ms",
    "job",
    "env",
)


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if isinstance(x, (int, float)) and not math.isnan(x)]
    return statistics.fmean(xs) if xs else math.nan


def read_curve(path: Path) -> dict[str, Any]:
    """A fit's curve file (``curves/*.json``): an object whose ``curve`` lists ``[iteration, seconds, psnr]`` numbers;
    InputError naming the file otherwise."""
    data = read_json_file(path, "curve file")
    curve = data.get("curve") if isinstance(data, dict) else None
    ok = isinstance(curve, list) and all(
        isinstance(p, list) and len(p) == 3 and all(isinstance(x, (int, float)) for x in p) for p in curve
    )
    if not ok or not all(isinstance(data.get(k), str) for k in ("method", "image")):
        raise InputError(path, "not a curve file: 'method', 'image' (text) and 'curve' ([iteration, seconds, psnr])")
    return data


def load(out: Path) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]], dict[str, Any], dict[str, Any]]:
    rows, jobs = RowStore.read_all(out)
    envs = {}
    for p in sorted(out.glob("environment-*.json")):
        try:
            e = json.loads(p.read_text())
            envs[e["env_id"]] = e
        except (OSError, ValueError, KeyError):
            continue
    preset = read_json_file(out / "preset.json", "preset file") if (out / "preset.json").exists() else {}
    if not isinstance(preset, dict):
        raise InputError(out / "preset.json", f"a JSON {type(preset).__name__}, not a preset (an object)")
    return rows, jobs, envs, preset


def time_to_quality(out: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (method, image, seed): first fitting time at which PSNR (best so far) >= dense best - 0.5 dB (the dense
    DIP's fit on the same image with the same seed)."""
    dense_best = {
        (r["image"], seed_of(r)): r["value"] for r in rows if r["method"] == "dense" and r["metric"] == "psnr_best"
    }
    quality = {(r["method"], r["image"], seed_of(r)): r for r in rows if r["metric"] == "psnr_best"}
    derived = []
    for (method, image, seed), base in quality.items():
        if (image, seed) not in dense_best:
            continue
        threshold = dense_best[(image, seed)] - TTQ_MARGIN_DB
        path = curve_path(out, method, image, None if "seed" not in base or seed == DEFAULT_SEED else seed)
        if not path.exists():
            continue
        curve = read_curve(path)["curve"]
        t = next((sec for _it, sec, p in curve if p >= threshold), None)
        r = {k: base.get(k) for k in CSV_COLUMNS if k in base}
        r.update(
            metric="time_to_quality_s",
            value=None if t is None else round(t, 3),
            unit="s",
            note=f"PSNR >= dense best - {TTQ_MARGIN_DB} dB = {threshold:.2f} dB"
            + ("" if t is not None else "; not reached"),
            derived=True,
        )
        derived.append(r)
    return derived


def mean_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean over images and seeds of every per-image quality metric, as rows with image = "mean": ``n`` fits
    (``n_images`` images x ``n_seeds`` seeds at most) and the 95% interval of the mean (``ci_lo``, ``ci_hi``,
    ``ci_kind``: :func:`lipdeploy.bench.stats.interval`)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get("image") not in ("-", None, "mean") and isinstance(r.get("value"), (int, float)) and r.get("method"):
            groups[(r["method"], r["metric"])].append(r)
    out = []
    for rs in groups.values():
        r = {k: rs[0].get(k) for k in CSV_COLUMNS if k in rs[0]}
        iv = stats.interval([x["value"] for x in rs])
        r.update(image="mean", value=round(_mean([x["value"] for x in rs]), 5), n=len(rs),
                 n_images=len({x["image"] for x in rs}), n_seeds=len({seed_of(x) for x in rs}),
                 ci_lo=None if not iv.known else round(iv.lo, 5), ci_hi=None if not iv.known else round(iv.hi, 5),
                 ci_kind=iv.kind, derived=True)  # fmt: skip
        r.pop("job", None)
        r.pop("seed", None)
        r.pop("threads", None)
        out.append(r)
    return out


DEFAULT_SEED = 0  # the seed of rows written before rows carried one (every preset's own seed is 0)


def seed_of(r: dict[str, Any]) -> int:
    """The fit seed of a row (:data:`DEFAULT_SEED` for rows measured before seeds existed)."""
    s = r.get("seed")
    return DEFAULT_SEED if s is None else int(s)


# --------------------------------------------------------------------------------------------------- claims


Unit = tuple[str, int]  # (image, seed): one fit of a method; paired differences pair two methods' fits on a unit


def _q(rows, metric="psnr_best") -> dict[tuple[str, str, int], float]:
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


def _paired(q: dict[tuple[str, str, int], float], a: str, b: str) -> tuple[float, int]:
    iv = paired_interval(q, a, b)
    return iv.mean, iv.n


def delta_intervals(rows: list[dict[str, Any]], metric: str = "psnr_best") -> dict[str, Interval]:
    """Per method: the mean and 95% interval of (method - dense DIP on the same image with the same seed).

    Methods are run on different image sets (structured tickets on the first image only, transfer on the others),
    and PSNR varies by several dB between photographs, so differences are only meaningful paired."""
    q = _q(rows, metric)
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


def _better(q: dict[tuple[str, str, int], float], a: str, b: str) -> str | None:
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
        v = _better(q, m, other)
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
    q = _q(rows)
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


# --------------------------------------------------------------------------------------------------- tables


def _fmt(x: Any, nd: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _bytes(x: Any) -> str:
    if not isinstance(x, (int, float)) or math.isnan(x):
        return "-"
    for unit, div in (("MB", 1e6), ("kB", 1e3)):
        if x >= div:
            return f"{x / div:.2f} {unit}"
    return f"{int(x)} B"


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(row) + " |" for row in body]
    return out


def method_order(rows: list[dict[str, Any]]) -> list[str]:
    fam_rank = {
        "dense": 0,
        "dd": 1,
        "lip": 2,
        "random": 3,
        "dd-matched": 4,
        "lip-kernel": 5,
        "lip-channel": 6,
        "transfer": 7,
        "ticket": 8,
    }
    info = {}
    for r in rows:
        if r.get("method"):
            info.setdefault(r["method"], (fam_rank.get(r.get("family"), 9), r.get("sparsity") or 0, r["method"]))
    return sorted(info, key=lambda m: info[m])


def per_image(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], float | None]:
    """(method, image, metric) -> mean over the seeds of that image (None where every seed's value is None)."""
    acc: dict[tuple[str, str, str], list[Any]] = defaultdict(list)
    for r in rows:
        if r.get("image") not in ("mean", "-", None) and r.get("method"):
            acc[(r["method"], r["image"], r["metric"])].append(r.get("value"))
    out: dict[tuple[str, str, str], float | None] = {}
    for k, vs in acc.items():
        nums = [v for v in vs if isinstance(v, (int, float)) and not isinstance(v, bool)]
        out[k] = _mean(nums) if nums else None
    return out


def _mean_text(r: dict[str, Any] | None, nd: int = 2) -> str:
    """A mean row's value with its interval: ``29.49 [29.01, 29.97]``, or the value alone without one."""
    if not r:
        return "-"
    iv = Interval(r["value"], _none_nan(r.get("ci_lo")), _none_nan(r.get("ci_hi")), r.get("n", 0), r.get("ci_kind", ""))
    return iv.text(nd, signed=False)


def _none_nan(x: Any) -> float:
    return math.nan if x is None else float(x)


def quality_tables(rows: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    means = {(r["method"], r["metric"]): r for r in rows if r.get("image") == "mean"}
    per = per_image(rows)
    images = sorted({r["image"] for r in rows if r["metric"] == "psnr_best" and r["image"] not in ("mean", "-")})
    deltas = delta_intervals(rows)
    body = []
    for m in method_order(rows):
        pb = means.get((m, "psnr_best"))
        if not pb:
            continue
        ttq = [per.get((m, i, "time_to_quality_s")) for i in images if (m, i, "psnr_best") in per]
        ttq_s = "n/r" if ttq and all(t is None for t in ttq) else _fmt(_mean([t for t in ttq if t is not None]), 1)
        if ttq and any(t is None for t in ttq) and not all(t is None for t in ttq):
            ttq_s += f" ({sum(t is None for t in ttq)} n/r)"
        iv = deltas.get(m)
        body.append(
            [
                m,
                _fmt(100 * pb["sparsity"], 1) if pb.get("sparsity") is not None else "-",
                f"{pb.get('params', 0):,}",
                _mean_text(pb),
                _fmt(means.get((m, "psnr_final"), {}).get("value")),
                _fmt(means.get((m, "ssim_best"), {}).get("value"), 4),
                _fmt(means.get((m, "ssim_final"), {}).get("value"), 4),
                f"{iv.text()} ({iv.how()})" if iv and iv.n else "-",
                ttq_s,
                _fmt(means.get((m, "fit_seconds"), {}).get("value"), 1),
                f"{pb.get('n_images', '')} x {pb.get('n_seeds', 1)}",
            ]
        )
    t1 = _table(
        [
            "method",
            "sparsity %",
            "params",
            "PSNR best [95% interval]",
            "PSNR final",
            "SSIM best",
            "SSIM final",
            "Δ best vs dense [95% interval] (n, interval)",
            "time to quality s",
            "fit s",
            "images x seeds",
        ],
        body,
    )
    body2 = []
    for m in method_order(rows):
        if not any((m, i, "psnr_best") in per for i in images):
            continue
        cells = []
        for i in images:
            b, f = per.get((m, i, "psnr_best")), per.get((m, i, "psnr_final"))
            cells.append("-" if b is None else f"{b:.2f} / {_fmt(f)}")
        body2.append([m, *cells])
    t2 = _table(["method (PSNR best / final, dB; mean over seeds)", *images], body2)
    return t1, t2


def resource_table(rows: list[dict[str, Any]]) -> list[str]:
    mem = {(r["method"], r["metric"]): r["value"] for r in rows if r.get("image") == "-" and r["metric"] != "note"}
    lat = {
        (r["method"], r.get("runner"), r["metric"]): r["value"]
        for r in rows
        if r["metric"] in ("forward_ms", "step_ms")
    }
    loaded = {
        (r["method"], r.get("runner"), r["metric"])
        for r in rows
        if r["metric"] in ("forward_ms", "step_ms") and r.get("loaded")
    }
    runners = sorted({b for _, b, _ in lat})
    header = [
        "method",
        "params",
        "nonzeros",
        "ticket",
        "ONNX dense",
        "ONNX sparse",
        "peak RSS step",
        "Adam state dense",
        "Adam state sparse",
    ]
    for b in runners:
        header += [f"fwd ms {b}"] + ([f"step ms {b}"] if any(k[1] == b and k[2] == "step_ms" for k in lat) else [])
    body = []
    for m in method_order(rows):
        if not any(k[0] == m for k in mem) and not any(k[0] == m for k in lat):
            continue
        row = [
            m,
            _fmt(mem.get((m, "params"))),
            _fmt(mem.get((m, "nonzeros"))),
            _bytes(mem.get((m, "bytes_ticket"))),
            _bytes(mem.get((m, "bytes_onnx_dense"))),
            _bytes(mem.get((m, "bytes_onnx_sparse"))),
            _bytes(mem.get((m, "peak_rss_step_bytes"))),
            _bytes(mem.get((m, "optimizer_state_bytes_dense"))),
            _bytes(mem.get((m, "optimizer_state_bytes_sparse"))),
        ]
        for b in runners:
            row.append(_fmt(lat.get((m, b, "forward_ms")), 1) + ("*" if (m, b, "forward_ms") in loaded else ""))
            if any(k[1] == b and k[2] == "step_ms" for k in lat):
                row.append(_fmt(lat.get((m, b, "step_ms")), 1) + ("*" if (m, b, "step_ms") in loaded else ""))
        body.append(row)
    table = _table(header, body)
    if loaded:
        table += [
            "",
            "\\* measured while the load average exceeded the core count (other processes competed for the CPU): "
            "not comparable with the other latencies; the rows' min_ms / q1_ms / q3_ms / max_ms give the spread.",
        ]
    return table


# --------------------------------------------------------------------------------------------------- plots


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*", "h", "p")


# Every plot gives a series the same look: a family keeps its colour and marker whatever else a plot shows. Known
# families first (fixed order), names the report does not know after them (a stable hash of the name).
_FAMILY_ORDER = (
    "dense", "dd", "dd-matched", "unstructured", "random", "kernel", "channel", "channel-norm", "block",
    "random-block", "dip-narrow", "transfer",
)  # fmt: skip
_FAMILY_ALIASES = {"lip": "unstructured", "lip-unstructured": "unstructured", "lip-kernel": "kernel"}


def _palette() -> list[Any]:
    import matplotlib

    # tab10 then Dark2: 18 colours, no two alike (tab20 pairs light and dark shades of one hue)
    return [matplotlib.colormaps["tab10"](i) for i in range(10)] + [matplotlib.colormaps["Dark2"](i) for i in range(8)]


def _family(name: str) -> str:
    """The family a series name stands for: "onnxruntime-cpu lip" -> "unstructured" (runtime, then family),
    "channel (earlier rule: ...)" -> "channel", "lip-kernel" -> "kernel"; else the name itself."""
    for word in (name, name.split(" ")[-1], name.split(" ")[0]):
        word = _FAMILY_ALIASES.get(word, word).removeprefix("lip-")
        if word in _FAMILY_ORDER:
            return word
    return name


def style_of(name: str) -> dict[str, Any]:
    """The colour and marker of series ``name`` in every plot (see :data:`_FAMILY_ORDER`)."""
    import zlib

    palette = _palette()
    base = _family(name)
    if base in _FAMILY_ORDER:
        i = _FAMILY_ORDER.index(base)
    else:
        i = len(_FAMILY_ORDER) + zlib.crc32(base.encode()) % (len(palette) - len(_FAMILY_ORDER))
    return {"color": palette[i % len(palette)], "marker": _MARKERS[i % len(_MARKERS)]}


def series_styles(names: list[str]) -> dict[str, dict[str, Any]]:
    """One colour and one marker per series, the same in every plot and facet (:func:`style_of`) when the series are
    families; per-method series (many per family) get distinct styles in sorted order."""
    names = sorted(dict.fromkeys(names))
    if all(_family(n) in _FAMILY_ORDER for n in names):
        return {n: style_of(n) for n in names}
    palette = _palette()
    return {n: {"color": palette[i % len(palette)], "marker": _MARKERS[i % len(_MARKERS)]} for i, n in enumerate(names)}


def plots(out: Path, rows: list[dict[str, Any]]) -> list[str]:
    """PSNR vs parameters (log x), latency vs sparsity, PSNR over fitting time (one facet per image). Every series
    has its own colour and marker (:func:`series_styles`). Returns the PNG file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    means = [r for r in rows if r.get("image") == "mean" and r["metric"] == "psnr_best"]
    deltas = delta_vs_dense(rows)
    if means and deltas.get("dense", (0, 0))[1]:
        # y = PSNR minus the dense DIP's on the same image, averaged: methods measured on different images compare
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        fams = defaultdict(list)
        for r in means:
            if deltas.get(r["method"], (0, 0))[1]:
                fams[r["family"]].append(r)
        styles = series_styles(list(fams))
        ivs = delta_intervals(rows)
        for fam, rs in sorted(fams.items()):
            rs = sorted(rs, key=lambda r: r.get("params") or 0)
            ys = [deltas[r["method"]][0] for r in rs]
            ax.errorbar([r["params"] for r in rs], ys, yerr=error_bars([ivs[r["method"]] for r in rs]),
                        linestyle="-" if len(rs) > 1 else "", capsize=3, label=fam, **styles[fam])  # fmt: skip
        ax.axhline(-TTQ_MARGIN_DB, color="grey", ls=":", lw=1, label="dense - 0.5 dB")
        ax.set_xscale("log")
        ax.set_xlabel("parameters (nonzero conv weights + biases + BN affine)")
        ax.set_ylabel("best PSNR - dense DIP's (dB, paired; bars: 95% interval)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title("PSNR vs parameters, relative to the dense DIP")
        _save(fig, out / "psnr_vs_params.png")
        made.append("psnr_vs_params.png")
    lat = [
        r
        for r in rows
        if r["metric"] == "forward_ms" and r.get("family") in ("dense", "lip", "random", "lip-kernel", "lip-channel")
    ]
    if lat:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        series = defaultdict(list)
        for r in lat:
            series[(r["runner"], "dense/LIP" if r["family"] in ("dense", "lip") else r["family"])].append(r)
        styles = series_styles([f"{b} {fam}" for b, fam in series])
        for (b, fam), rs in sorted(series.items()):
            rs = sorted(rs, key=lambda r: r.get("sparsity") or 0)
            ax.plot(
                [100 * (r.get("sparsity") or 0) for r in rs],
                [r["value"] for r in rs],
                "-",
                label=f"{b} {fam}",
                **styles[f"{b} {fam}"],
            )
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel("forward latency (ms, median)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title("Latency vs sparsity")
        _save(fig, out / "latency_vs_sparsity.png")
        made.append("latency_vs_sparsity.png")
    curves = sorted((out / "curves").glob("*.json")) if (out / "curves").exists() else []
    loaded = [read_curve(p) for p in curves]
    loaded = [c for c in loaded if c.get("curve")]
    if loaded:
        # one facet per image (every image, not only the first), one colour + marker per method across facets
        images = sorted({c["image"] for c in loaded})
        styles = series_styles([c["method"] for c in loaded])
        ncols = min(3, len(images))
        nrows = math.ceil(len(images) / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols + 2.4, 3.4 * nrows), squeeze=False, sharey=True)
        for ax, image in zip(axes.flat, images, strict=False):
            for c in sorted((c for c in loaded if c["image"] == image), key=lambda c: c["method"]):
                xs, ys = [x[1] for x in c["curve"]], [x[2] for x in c["curve"]]
                st = styles[c["method"]]
                ax.plot(xs, ys, lw=1, color=st["color"], marker=st["marker"], markevery=max(1, len(xs) // 6), ms=4)
            ax.set_title(image, fontsize=9)
            ax.set_xlabel("fitting time (s)")
            ax.grid(True, alpha=0.3)
        for ax in axes.flat[len(images) :]:
            ax.axis("off")
        for ax in axes[:, 0]:
            ax.set_ylabel("PSNR, best so far (dB)")
        handles = [
            plt.Line2D([], [], color=st["color"], marker=st["marker"], lw=1, ms=4, label=m) for m, st in styles.items()
        ]
        fig.legend(handles=handles, loc="center right", fontsize=7, frameon=False)
        fig.suptitle("PSNR over fitting time, per image")
        fig.tight_layout(rect=(0, 0, 1 - 2.2 / (4.2 * ncols + 2.4), 1))
        _save(fig, out / "psnr_over_time.png")
        made.append("psnr_over_time.png")
    return made


def error_bars(ivs: list[Interval]) -> list[list[float]]:
    """matplotlib's ``yerr`` (below, above) of intervals around their means; 0 where there is no interval."""
    below = [iv.mean - iv.lo if iv.known else 0.0 for iv in ivs]
    above = [iv.hi - iv.mean if iv.known else 0.0 for iv in ivs]
    return [below, above]


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    if not fig._suptitle:  # a faceted figure has laid itself out around its legend
        fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


# --------------------------------------------------------------------------------------------------- build


def build_report(out: str | Path) -> dict[str, Any]:
    """Rebuild rows.csv, rows.json, report.md and the plots in ``out`` from all its rows files."""
    out = Path(out)
    rows, jobs, envs, preset = load(out)
    derived = time_to_quality(out, rows)
    all_rows = rows + derived
    all_rows += mean_rows(all_rows)
    # CSV: one row per (method, image, metric[, runner]) joined with its environment
    buf = io.StringIO()
    cols = list(CSV_COLUMNS) + ["note"] + list(ENV_COLUMNS)
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in all_rows:
        env = envs.get(r.get("env"), {})
        w.writerow({**{c: env.get(c) for c in ENV_COLUMNS}, **r})
    atomic_write_text(out / "rows.csv", buf.getvalue())
    atomic_write_text(
        out / "rows.json",
        json.dumps(
            {"preset": preset, "environments": list(envs.values()), "jobs": len(jobs), "rows": all_rows},
            indent=1,
            default=str,
        )
        + "\n",
    )
    pngs = plots(out, all_rows)
    pngs += quality_latency_plot(out, all_rows)
    task_lines, task_pngs = task_section(out, all_rows)
    pngs += task_pngs
    table = claims_markdown(_task_quality(all_rows), claims_setting(preset))
    if table and preset.get("name") not in NO_VERDICT_PRESETS:
        atomic_write_text(out / "claims.md", table)
        task_lines = ["", "## The paper's claims at these settings", "", *table.rstrip("\n").split("\n"), *task_lines]
    front = frontier_lines(all_rows) if preset.get("name") not in NO_VERDICT_PRESETS else []
    front_md = ["", "## Structured tickets: quality vs latency", "", *front] if front else []
    md = markdown(all_rows, jobs, envs, preset, pngs).rstrip("\n") + "\n" + "\n".join([*front_md, *task_lines, ""])
    atomic_write_text(out / "report.md", md)
    atomic_write_text(out / "headline.md", headline(all_rows, preset) + "".join(f"{ln}\n" for ln in front))
    atomic_write_text(out / "noise.md", "\n".join(noise_floor_lines(all_rows, preset)) + "\n")
    if preset.get("name") not in NO_VERDICT_PRESETS:
        table = comparison_table(all_rows) or ["- no paired comparison measured yet"]
        atomic_write_text(out / "comparisons.md", "\n".join(table) + "\n")
    return {"rows": len(all_rows), "jobs": len(jobs), "plots": pngs}


def claims_setting(preset: dict[str, Any]) -> str:
    """Where a claims table was measured, in words: preset, crops, images, iterations."""
    crop = preset.get("crop")
    size = f"{crop}x{crop} crops" if crop else "full images"
    return (
        f"preset `{preset.get('name', '?')}`, {size} of {', '.join(preset.get('images', []))}, "
        f"{preset.get('iters')} iterations per fit, {preset.get('imp_iters')} per IMP round"
    )


HEADLINE_LATENCY_RUNNERS = {"torch-cpu-compact": "compacted torch CPU", "onnxruntime-cpu": "ONNX Runtime CPU"}


def headline(rows: list[dict[str, Any]], preset: dict[str, Any]) -> str:
    """The short table for the README: per sparsity, LIP vs random vs matched deep decoder, and the references."""
    means = {(r["method"], r["metric"]): r for r in rows if r.get("image") == "mean"}
    # the deployable forms (a masked network costs what dense costs, whatever its ticket's structure), and only the
    # timings made in the same run as dense's: milliseconds from another run are not comparable
    lat = {b: {m: ms for m, (ms, _) in _beside_dense(rows, b).items()} for b in HEADLINE_LATENCY_RUNNERS}
    deltas = delta_intervals(rows)
    timed = any(lat.values())
    body = []
    for m in method_order(rows):
        pb = means.get((m, "psnr_best"))
        if not pb or pb.get("family") not in HEADLINE_FAMILIES:
            continue
        sp = pb.get("sparsity")
        iv = deltas.get(m)
        body.append(
            [
                m,
                "-" if not sp else f"{100 * sp:.0f}%",
                f"{pb.get('params', 0):,}",
                _mean_text(pb),
                iv.text() if iv and iv.n and m != "dense" else ("+0.00" if m == "dense" else "-"),
                _fmt(means.get((m, "ssim_best"), {}).get("value"), 3),
                *((_fmt(lat[b].get(m), 1) for b in HEADLINE_LATENCY_RUNNERS) if timed else ()),
                f"{pb.get('n', pb.get('n_images', ''))} ({pb.get('n_images', '')} x {pb.get('n_seeds', 1)})",
            ]
        )
    name = preset.get("name", "?")
    lines = [
        f"Preset `{name}`: {preset.get('net_description', '')}; best PSNR over iterations, mean over images and "
        "seeds with its 95% interval; Δ = PSNR minus the dense DIP's on the same image with the same seed, mean and "
        "95% interval of the pairs; n = fits (images x seeds); intervals: Student t below 20 fits, percentile "
        f"bootstrap from 20, none below {stats.MIN_N} (n too small)"
        + (
            "; fwd ms: forward pass of the first image's model, timed in the same run as the dense DIP's ('-': not "
            "timed in that run)."
            if timed
            else "."
        ),
        "",
    ]
    header = ["method", "sparsity", "params", "PSNR dB [95%]", "Δ vs dense dB [95%]", "SSIM"]
    header += [f"fwd ms ({HEADLINE_LATENCY_RUNNERS[b]})" for b in HEADLINE_LATENCY_RUNNERS] if timed else []
    header += ["n (images x seeds)"]
    lines += _table(header, body)
    lines += [*threads_note(rows)]
    lines += ["", *[ln for ln in claims(rows, preset) if ln.startswith("- ")]]
    return "\n".join(lines) + "\n"


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
    q = _q(rows)
    sparsity = _sparsity_of(rows)
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
    return _table(["difference (dB)", "claim", "bar", "mean [95% interval]", "n", "interval", "verdict"], body)


def noise_floor(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The seed-to-seed noise of the folder's fits: the pooled standard deviation over seeds of one method's best PSNR
    on one image (``fit_sd``, with ``fit_df`` degrees of freedom over ``fit_groups`` (method, image) groups), and of a
    method's difference to the dense DIP on one image with the same seed (``diff_sd``, ``diff_df``,
    ``diff_groups``); nan without two seeds of anything."""
    q = _q(rows)
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


def markdown(rows, jobs, envs, preset, pngs) -> str:
    t1, t2 = quality_tables(rows)
    lines = ["# lipdeploy bench: dense DIP vs deep decoder vs lottery image priors", ""]
    lines += ["## Preset", ""]
    if preset:
        lines.append("```json")
        lines.append(json.dumps(preset, indent=1))
        lines.append("```")
    lines += ["", "## Environment", ""]
    for e in envs.values():
        lines.append(
            f"- shard {e.get('shard')}: {e.get('cpu')} ({e.get('cpu_count')} CPUs, "
            f"{e.get('torch_threads')} torch threads, load average at start {e.get('loadavg_at_start')})"
            f", GPU {e.get('gpu') or 'none'}; torch {e.get('torch')}, onnxruntime {e.get('onnxruntime')}, "
            f"triton {e.get('triton')}, numpy {e.get('numpy')}, python {e.get('python')}"
        )
    kinds = defaultdict(int)
    for j in jobs.values():
        kinds[j.get("kind")] += 1
    lines.append(f"- finished jobs: {len(jobs)} ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))})")
    lines += threads_note(rows)
    lines += ["", "## Noise floor", "",
              "Every quality number below is a mean over fits (images x seeds) with its 95% interval: Student t "
              f"below {stats.BOOTSTRAP_MIN_N} fits, the percentile bootstrap ({stats.BOOTSTRAP_RESAMPLES} "
              f"resamples, seeded) from {stats.BOOTSTRAP_MIN_N}, none below {stats.MIN_N} (n too small). "
              "Differences are paired: same image, same seed. A verdict holds only when the interval clears its "
              "threshold; 'within noise' when it straddles it.", ""]  # fmt: skip
    lines += noise_floor_lines(rows, preset)
    table = comparison_table(rows) if preset.get("name") not in NO_VERDICT_PRESETS else []
    if table:
        lines += ["", "## Paired comparisons", "", "Each difference is paired by image and seed; n = pairs.", ""]
        lines += table
    lines += ["", "## Claims from the paper, checked against these measurements", ""]
    lines += claims(rows, preset)
    lines += [
        "",
        "## Quality (mean over images)",
        "",
        "PSNR/SSIM of the exponentially averaged output; *best* = best over iterations (oracle early stop, the "
        "paper's number), *final* = last iteration. Time to quality: fitting seconds until PSNR reaches the "
        f"dense DIP's best minus {TTQ_MARGIN_DB} dB on the same image (mean over images where reached; n/r = not "
        "reached).",
        "",
    ]
    lines += t1
    lines += ["", "## Quality per image", ""] + t2
    lines += [
        "",
        "## Latency and memory",
        "",
        "Latency: median ms after warm-up at the preset's crop size. Peak RSS step: growth of the resident-set "
        "high-water mark over two Adam fitting steps in a fresh process. Adam state: exp_avg + exp_avg_sq (fp32) "
        "for a masked dense fit (all parameters) and for a sparse backend (nonzeros + biases + BN).",
        "",
    ]
    lines += resource_table(rows)
    finds = [r for r in rows if r["metric"] in ("find_seconds", "finder")]
    if finds:
        lines += ["", "## Ticket finding", ""]
        agg = defaultdict(dict)
        for r in finds:
            agg[(r["image"], r.get("granularity"))][r["metric"]] = r["value"]
        lines += _table(
            ["image", "kind", "finder", "seconds"],
            [[i, str(g), str(v.get("finder")), _fmt(v.get("find_seconds"), 1)] for (i, g), v in sorted(agg.items())],
        )
    if pngs:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in pngs]
    lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- the frontier
# Issue 12 (structured LIPs: quality vs measured latency) and issue 16 (the paper's claims per task). Kept apart from
# the report above: build_report appends these sections and plots when the rows hold what they need.

NEAR_DENSE_DB = 0.5  # "within 0.5 dB of dense": the quality bar of issue 12's headline lines
REFERENCE_FAMILIES = ("dense", "dd", "dd-matched", "dip-narrow")
# the deployable form on each runtime: a structured ticket runs compacted (the masked "torch-cpu" network costs what
# dense costs whatever the mask, so it says nothing about a ticket's speed)
FRONTIER_RUNNERS = (("onnxruntime-cpu", "ONNX Runtime CPU"), ("torch-cpu-compact", "compacted PyTorch CPU"))


def family_label(family: str, rows: list[dict[str, Any]]) -> str:
    """A ticket family as the report names it. Channel tickets say which pruning rule made them: rows of tickets
    found by the earlier global rule carry no ``channel_rule`` (the committed cpu ``lip-channel-59``)."""
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
    return {m: ms / dense_ms for m, (ms, dense_ms) in _beside_dense(rows, runner).items()}


def _beside_dense(rows: list[dict[str, Any]], runner: str) -> dict[str, tuple[float, float]]:
    """Per method timed on ``runner`` in a run (rows' ``env``) that also timed the dense DIP: (its forward ms, the
    dense DIP's forward ms in that run)."""
    timed = [
        r
        for r in rows
        if r["metric"] == "forward_ms" and r.get("runner") == runner and isinstance(r.get("value"), (int, float))
    ]
    dense = {r.get("env"): r["value"] for r in timed if r["method"] == "dense" and r["value"] > 0}
    return {r["method"]: (r["value"], dense[r.get("env")]) for r in timed if r.get("env") in dense}


def _sparsity_of(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {r["method"]: r.get("sparsity") or 0.0 for r in rows if r["metric"] == "psnr_best" and r.get("method")}


def distinct_styles(names: list[str]) -> dict[str, dict[str, Any]]:
    """Family styles for plots with few series: the same colour and marker as in every other plot."""
    return series_styles(list(names))


def frontier_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per ticket granularity: the sparsest ticket whose mean PSNR is within 0.5 dB of the dense DIP's
    (paired by image and seed), with the verdict its 95% interval gives ("within noise" when the interval straddles
    -0.5 dB), and its forward latency ratio vs dense per runtime; then each channel ticket vs the narrow DIP of equal
    parameter count. Empty when the rows hold no dense DIP."""
    deltas = delta_vs_dense(rows)
    if not deltas.get("dense", (0, 0))[1]:
        return []
    ivs = delta_intervals(rows)
    q = _q(rows)
    sparsity = _sparsity_of(rows)
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
        v = _better(q, m, other)
        if v:
            lines.append(f"- {m} vs {other} (dense narrow DIP, equal parameters): {v}")
    return lines + target_lines(rows)


TARGET_SPEEDUP = 2.0  # issue 12: a structured LIP within 0.5 dB of dense, >= 2x the dense export's ORT CPU speed
BLOCK_TARGET_SPARSITY = 0.8  # issue 12: a block-16 LIP at >= 80% within 0.5 dB of dense


def target_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Issue 12's two targets as verdicts: (1) a structured ticket (any granularity but unstructured) within 0.5 dB of
    dense that runs >= 2x faster than the dense model in ONNX Runtime CPU; (2) a 16x16 block ticket at >= 80% within
    0.5 dB of dense. Each names the tickets that meet it, or the closest ones, with the number of images behind it."""
    deltas = delta_vs_dense(rows)
    if not deltas.get("dense", (0, 0))[1]:
        return []
    sparsity = _sparsity_of(rows)
    family = {r["method"]: r.get("family") or "" for r in rows if r["metric"] == "psnr_best" and r.get("method")}
    paired = {m: deltas[m] for m in family if m in deltas and deltas[m][1]}
    structured = sorted(m for m in paired if family[m].startswith("lip-"))
    ort = {m: 1.0 / r for m, r in latency_vs_dense(rows, "onnxruntime-cpu").items() if r > 0}  # speedups

    ivs = delta_intervals(rows)
    q = _q(rows)

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


PLOT_FLOOR_DB = -8.0  # quality-latency plot: points further below dense are listed in a note, not drawn


def quality_latency_plot(out: Path, rows: list[dict[str, Any]]) -> list[str]:
    """PSNR (minus the dense DIP's on the same image, averaged) vs forward latency over the dense DIP's timed in the
    same run (:func:`latency_vs_dense`), one panel per runtime (ONNX Runtime CPU, compacted PyTorch CPU): one marker
    shape and colour per family, a family's tickets joined in order of sparsity; the dense DIP, the deep decoders and
    the narrow DIPs are the reference points. Returns the PNG name."""
    deltas = delta_vs_dense(rows)
    ivs = delta_intervals(rows)
    lat = {b: latency_vs_dense(rows, b) for b, _ in FRONTIER_RUNNERS}
    if not deltas.get("dense", (0, 0))[1] or not any(lat.values()):
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fam_of = {r["method"]: r.get("family") for r in rows if r["metric"] == "psnr_best" and r.get("method")}
    sparsity = _sparsity_of(rows)
    fams = sorted({f for m, f in fam_of.items() if f and f not in ("transfer", "ticket") and deltas.get(m, (0, 0))[1]})
    styles = distinct_styles(fams)
    panels = [(b, name) for b, name in FRONTIER_RUNNERS if lat[b]]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.8), squeeze=False)
    for ax, (b, name) in zip(axes[0], panels, strict=True):
        off: list[str] = []
        for fam in fams:
            ms = sorted((m for m, f in fam_of.items() if f == fam and m in lat[b] and deltas[m][1]),
                        key=lambda m: sparsity.get(m, 0.0))  # fmt: skip
            if not ms:
                continue
            # a collapsed ticket (constant output: compaction removes nearly everything, so it also "runs" 1000x
            # faster) would squash the frontier near dense on both axes: it is listed in a note, not drawn
            off += [m for m in ms if deltas[m][0] < PLOT_FLOOR_DB]
            ms = [m for m in ms if deltas[m][0] >= PLOT_FLOOR_DB]
            st = styles[fam]
            ref = fam in REFERENCE_FAMILIES
            ax.errorbar([lat[b][m] for m in ms], [deltas[m][0] for m in ms], yerr=error_bars([ivs[m] for m in ms]),
                        linestyle=":" if ref else "-", marker=st["marker"], color=st["color"], capsize=2,
                        markersize=9 if fam == "dense" else 6, label=family_label(fam, rows))  # fmt: skip
        if off:
            note = f"not drawn (below {PLOT_FLOOR_DB:g} dB): "
            note += "; ".join(f"{m} {deltas[m][0]:+.1f} dB at {lat[b][m]:.2g}x" for m in off)
            ax.text(0.99, 0.03, note, transform=ax.transAxes, fontsize=7, ha="right", va="bottom", wrap=True)
        ax.axhline(-NEAR_DENSE_DB, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlapped on short ranges
        ax.set_xlabel("forward latency / dense DIP's, same run (log)")
        ax.set_ylabel("PSNR minus dense DIP's (dB, paired; bars: 95% interval)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8)
    fig.suptitle(f"Quality vs latency (dashed: {NEAR_DENSE_DB} dB below dense)")
    fig.tight_layout(rect=(0, 0.12, 1, 0.95))
    _save(fig, out / "quality_vs_latency.png")
    return ["quality_vs_latency.png"]


def _task_quality(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """task -> base method -> {psnr per (image, seed), family, nominal sparsity}, from rows of a multi-task preset."""
    out: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        if r["metric"] != "psnr_best" or r.get("image") in ("mean", "-") or not r.get("base_method"):
            continue
        e = out[r["task"]].setdefault(
            r["base_method"],
            {"family": r.get("family"), "sparsity": r.get("sparsity_nominal") or r.get("sparsity"), "psnr": {}},
        )
        e["psnr"][(r["image"], seed_of(r))] = r["value"]
        e.setdefault("source_task", r.get("source_task"))
        e.setdefault("source_image", r.get("source_image"))
    return out


def task_section(out: Path, rows: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Issue 16's report of a multi-task preset: per task, PSNR vs sparsity of LIP, random pruning and the matched
    deep decoder with the dense DIP as a line (mean over images; a plot with one panel per task), and the transfer
    rows next to the image's own ticket at the same round. The targets' verdicts are the claims table's
    (:mod:`.paper_claims`), which build_report puts above this section. Returns (Markdown lines, PNG names)."""
    tq = _task_quality(rows)
    if not tq:
        return [], []
    lines = ["", "## Per task: PSNR vs sparsity", "",
             "Best PSNR over iterations, mean over images and seeds (per fit in the rows files); the matched deep "
             "decoder is placed at its ticket's sparsity; Δ columns are paired by image and seed: mean [95% "
             "interval] (n)."]  # fmt: skip

    def paired(a: dict[Unit, float], b: dict[Unit, float]) -> str:
        units = sorted(set(a) & set(b))
        iv = stats.interval([a[u] - b[u] for u in units])
        return f"{iv.text()} ({iv.n})" if units else "-"

    for task in sorted(tq):
        ms = tq[task]
        dense = ms.get("dense", {}).get("psnr", {})
        body = []
        for m, e in sorted(ms.items(), key=lambda kv: (kv[1].get("sparsity") or 0, kv[0])):
            if e["family"] != "lip":
                continue
            tail = m.removeprefix("lip-unstructured-")
            rnd, dd = ms.get(f"random-{tail}", {}).get("psnr", {}), ms.get(f"dd-matched-{tail}", {}).get("psnr", {})
            body.append([
                f"{100 * (e['sparsity'] or 0):.1f}%", _fmt(_mean(list(e["psnr"].values()))),
                _fmt(_mean(list(rnd.values()))), _fmt(_mean(list(dd.values()))), _fmt(_mean(list(dense.values()))),
                paired(e["psnr"], rnd), paired(e["psnr"], dense), paired(e["psnr"], dd),
            ])  # fmt: skip
        lines += ["", f"### {task}", ""]
        lines += _table(["sparsity", "LIP", "random", "matched DD", "dense", "LIP - random", "LIP - dense",
                         "LIP - matched DD"], body)  # fmt: skip
        tr = []
        for m, e in sorted(ms.items()):
            if not (e["family"] or "").startswith("transfer"):
                continue
            tail = m.split("-")[1]
            own = ms.get(f"lip-unstructured-{tail}", {}).get("psnr", {})
            for img in sorted({i for i, _ in e["psnr"]}):
                mine = {u: v for u, v in e["psnr"].items() if u[0] == img}
                theirs = {u: v for u, v in own.items() if u[0] == img}
                src = e.get("source_image") or img
                tr.append([m, f"{src}, {e.get('source_task') or task}", img, _fmt(_mean(list(mine.values()))),
                           _fmt(_mean(list(theirs.values()))), paired(mine, theirs)])  # fmt: skip
        if tr:
            lines += ["", f"Transferred tickets fitted on {task} (found on: image, task; mean over seeds):", ""]
            lines += _table(["method", "found on", "fitted on", "PSNR", "own ticket", "Δ vs own [95%] (n)"], tr)
    return lines, _task_plot(out, tq)


def _rounds_of(sparsity: float) -> float:
    """The IMP round k whose nominal sparsity 1 - 0.8^k is ``sparsity`` (rounded to 0.1)."""
    return round(math.log(max(1e-12, 1 - sparsity)) / math.log(0.8), 1)


def _task_plot(out: Path, tq: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted(tq)
    fams = ["lip", "random", "dd-matched", "transfer", "transfer-task", "transfer-multi"]
    labels = {"lip": "LIP", "random": "random pruning", "dd-matched": "deep decoder (matched)",
              "transfer": "transfer (other image)", "transfer-task": "transfer (other task)",
              "transfer-multi": "transfer (multi-image)"}  # fmt: skip
    styles = distinct_styles(fams + ["dense"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 4.4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        ms = tq[task]
        ticks: set[float] = set()
        for fam in fams:
            # x = IMP rounds k (sparsity 1 - 0.8^k), labelled in sparsity: 95.6, 98.8 and 99.5% stay apart
            # one point per sparsity: the mean over images of the family's fits there, so that a transfer family
            # whose tickets each land on one image (astronaut's on coffee, coffee's on astronaut) is compared on
            # the same images as the LIP's mean, not as two single-image points
            per: dict[float, list[float]] = defaultdict(list)
            for e in ms.values():
                if e["family"] == fam and e["sparsity"] is not None and e["sparsity"] < 1:
                    per[_rounds_of(e["sparsity"])] += list(e["psnr"].values())
            pts = sorted((k, stats.interval(vs)) for k, vs in per.items())
            ticks |= {x for x, _ in pts}
            if pts:
                st = styles[fam]
                ls = "-" if fam in ("lip", "random", "dd-matched") else "none"
                ax.errorbar([k for k, _ in pts], [iv.mean for _, iv in pts], yerr=error_bars([iv for _, iv in pts]),
                            linestyle=ls, marker=st["marker"], color=st["color"], capsize=3,
                            label=labels[fam])  # fmt: skip
        if "dense" in ms:
            # over the images the LIPs were fitted on: PSNR levels differ by several dB between photographs
            shown = {u[0] for e in ms.values() if e["family"] == "lip" for u in e["psnr"]}
            dense = [v for u, v in ms["dense"]["psnr"].items() if not shown or u[0] in shown]
            ax.axhline(_mean(dense), color=styles["dense"]["color"], linestyle="--", label="dense DIP")
        ax.set_title(task)
        ax.set_xticks(sorted(ticks), [f"{100 * (1 - 0.8**k):.1f}" for k in sorted(ticks)], fontsize=7)
        ax.set_xlabel("sparsity % (spaced by IMP round k: 1 - 0.8^k)")
        ax.set_ylabel("PSNR dB (best, mean over fits; bars: 95%)")
        ax.grid(alpha=0.3)
    handles, lbls = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, lbls, loc="lower center", ncol=4, fontsize=8)
    fig.suptitle("PSNR vs sparsity per task: LIP vs random vs deep decoder vs dense")
    fig.tight_layout(rect=(0, 0.12, 1, 0.95))
    _save(fig, out / "psnr_vs_sparsity_per_task.png")
    return ["psnr_vs_sparsity_per_task.png"]

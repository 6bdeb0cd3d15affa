"""The report's PNG plots, one look per ticket family across all of them.

matplotlib is imported inside the plotting functions (:func:`_pyplot`): matplotlib and pyplot take 1.3 s + 2.7 s to
import on the shared 2-core VM (warm cache), which the text-only parts of the report need not pay; and selecting its
Agg backend is a process-wide side effect that belongs to drawing, not to importing this module.
"""

from __future__ import annotations

import math
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Any

from lipdeploy.fileio import atomic_output

from . import stats
from .derived import TTQ_MARGIN_DB, mean_of, read_curve, sparsity_of
from .frontier import FRONTIER_RUNNERS, REFERENCE_FAMILIES, family_label, latency_vs_dense
from .stats import Interval
from .verdicts import NEAR_DENSE_DB, delta_intervals, delta_vs_dense

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*", "h", "p")


# Every plot gives a series the same look: a family keeps its colour and marker whatever else a plot shows. Known
# families first (fixed order), names the report does not know after them (a stable hash of the name).
_FAMILY_ORDER = (
    "dense", "dd", "dd-matched", "unstructured", "random", "kernel", "channel", "channel-norm", "block",
    "random-block", "dip-narrow", "transfer",
)  # fmt: skip
_FAMILY_ALIASES = {"lip": "unstructured", "lip-unstructured": "unstructured", "lip-kernel": "kernel"}


def _palette() -> list[Any]:
    import matplotlib  # colormaps only; see the module docstring for why here

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


def _pyplot() -> Any:
    """matplotlib.pyplot drawing off-screen (see the module docstring for why it is imported here)."""
    import matplotlib  # seconds of import: only drawing pays it (module docstring)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): no display needed

    return plt


def plots(out: Path, rows: list[dict[str, Any]]) -> list[str]:
    """PSNR vs parameters (log x), latency vs sparsity, PSNR over fitting time (one facet per image). Every series
    has its own colour and marker (:func:`series_styles`). Returns the PNG file names."""
    plt = _pyplot()
    return [
        *_psnr_vs_params_plot(plt, out, rows),
        *_latency_vs_sparsity_plot(plt, out, rows),
        *_psnr_over_time_plot(plt, out),
    ]


def _psnr_vs_params_plot(plt: Any, out: Path, rows: list[dict[str, Any]]) -> list[str]:
    means = [r for r in rows if r.get("image") == "mean" and r["metric"] == "psnr_best"]
    deltas = delta_vs_dense(rows)
    if not (means and deltas.get("dense", (0, 0))[1]):
        return []
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
    return ["psnr_vs_params.png"]


def _latency_vs_sparsity_plot(plt: Any, out: Path, rows: list[dict[str, Any]]) -> list[str]:
    lat = [
        r
        for r in rows
        if r["metric"] == "forward_ms" and r.get("family") in ("dense", "lip", "random", "lip-kernel", "lip-channel")
    ]
    if not lat:
        return []
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
    return ["latency_vs_sparsity.png"]


def _psnr_over_time_plot(plt: Any, out: Path) -> list[str]:
    curves = sorted((out / "curves").glob("*.json")) if (out / "curves").exists() else []
    loaded = [read_curve(p) for p in curves]
    loaded = [c for c in loaded if c.get("curve")]
    if not loaded:
        return []
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
    return ["psnr_over_time.png"]


def error_bars(ivs: list[Interval]) -> list[list[float]]:
    """matplotlib's ``yerr`` (below, above) of intervals around their means; 0 where there is no interval."""
    below = [iv.mean - iv.lo if iv.known else 0.0 for iv in ivs]
    above = [iv.hi - iv.mean if iv.known else 0.0 for iv in ivs]
    return [below, above]


def _save(fig: Any, path: Path) -> None:
    plt = _pyplot()
    if not fig._suptitle:  # a faceted figure has laid itself out around its legend
        fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


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
    plt = _pyplot()
    import matplotlib.ticker  # with pyplot (see the module docstring)

    fam_of = {r["method"]: r.get("family") for r in rows if r["metric"] == "psnr_best" and r.get("method")}
    sparsity = sparsity_of(rows)
    fams = sorted({f for m, f in fam_of.items() if f and f not in ("transfer", "ticket") and deltas.get(m, (0, 0))[1]})
    styles = series_styles(fams)
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


def _rounds_of(sparsity: float) -> float:
    """The IMP round k whose nominal sparsity 1 - 0.8^k is ``sparsity`` (rounded to 0.1)."""
    return round(math.log(max(1e-12, 1 - sparsity)) / math.log(0.8), 1)


def task_plot(out: Path, tq: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    plt = _pyplot()

    tasks = sorted(tq)
    fams = ["lip", "random", "dd-matched", "transfer", "transfer-task", "transfer-multi"]
    labels = {"lip": "LIP", "random": "random pruning", "dd-matched": "deep decoder (matched)",
              "transfer": "transfer (other image)", "transfer-task": "transfer (other task)",
              "transfer-multi": "transfer (multi-image)"}  # fmt: skip
    styles = series_styles(fams + ["dense"])
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
            ax.axhline(mean_of(dense), color=styles["dense"]["color"], linestyle="--", label="dense DIP")
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

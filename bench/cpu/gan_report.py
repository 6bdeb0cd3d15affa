"""The ``gan`` benchmark's report: tables per task, the headline lines, the issue's targets, PSNR vs sparsity.

Built from the rows files alone (``python -m lipdeploy.bench.cpu.gan_report DIR`` rebuilds it), so the report always
says what the rows say. Every PSNR is a mean over the held-out faces with its 95% interval (``bench.stats.interval``),
every comparison a difference paired per face (the same faces, operators and noise for both methods) with its
interval, and every headline and target reads that interval (``bench.stats.verdict``): "holds" only when the interval
clears the threshold, "within noise" when it straddles it. The unit is one face, so the intervals cover the spread of
the faces measured and not the latent fits' seeds (one seed per fit, recorded in the rows' settings).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from lipdeploy.bench.rows import RowStore
from lipdeploy.bench.stats import HOLDS, NOISE, Interval, interval, verdict
from lipdeploy.fileio import atomic_write_text

WITHIN_DB = 0.5
BACK_PROJECTION_MARGIN_DB = 3.0  # the target: CS through the generator >= 3 dB above back-projection
Quality = dict[str, dict[str, dict[str, Any]]]
ENV_FILES = ("environment.json", "preset.json")


def _quality(rows: list[dict[str, Any]]) -> Quality:
    """task -> method -> row."""
    out: Quality = {}
    for r in rows:
        if r.get("kind") == "quality":
            out.setdefault(r["task"], {})[r["method"]] = r
    return out


def _family(method: str) -> tuple[str, int]:
    base, _, r = method.rpartition("-")
    return (base, int(r)) if r.isdigit() else (method, -1)


def psnr_interval(row: dict[str, Any]) -> Interval:
    """The mean PSNR over the row's faces with its 95% interval (a row without per-face values: its mean alone)."""
    return interval(row.get("psnr_per_image") or [row["psnr"]])


def paired(a: dict[str, Any], b: dict[str, Any]) -> Interval:
    """PSNR of ``a`` minus ``b``, paired per face, with its 95% interval (means alone when either row lacks the
    per-face values or they were measured on different faces)."""
    xs, ys = a.get("psnr_per_image") or [], b.get("psnr_per_image") or []
    if not xs or len(xs) != len(ys):
        return interval([a["psnr"] - b["psnr"]])
    return interval([x - y for x, y in zip(xs, ys, strict=True)])


def _said(iv: Interval, threshold: float, strict: bool = False) -> str:
    """``+0.12 [-0.05, +0.29] dB (within noise, n=20)``."""
    return f"{iv.text()} dB ({verdict(iv, threshold, strict)}, n={iv.n})"


def _sparsest_within(q: dict[str, dict[str, Any]], families: tuple[str, ...], min_sparsity: float = 0.0):
    """(verdict, method, paired difference to dense) of the sparsest ticket of ``families`` whose difference to dense
    clears -0.5 dB ("holds"), else the sparsest whose interval straddles it ("within noise"); None when neither."""
    dense = q["dense"]
    found: dict[str, tuple[float, str, Interval]] = {}
    for m, r in q.items():
        if _family(m)[0] not in families or r["sparsity"] < min_sparsity:
            continue
        d = paired(r, dense)
        v = verdict(d, -WITHIN_DB)
        if v in (HOLDS, NOISE) and (v not in found or r["sparsity"] > found[v][0]):
            found[v] = (r["sparsity"], m, d)
    for v in (HOLDS, NOISE):
        if v in found:
            return v, found[v][1], found[v][2]
    return None


def _within_text(q: dict[str, dict[str, Any]], hit) -> str:
    if hit is None:
        return "none"
    v, m, d = hit
    return f"{m} ({100 * q[m]['sparsity']:.1f}%, {d.text()} dB vs dense, {v}, n={d.n})"


def _closest(q: dict[str, dict[str, Any]], min_sparsity: float) -> str:
    """The ticket at >= ``min_sparsity`` nearest to dense (highest paired difference), with that difference."""
    tickets = [(paired(r, q["dense"]), m) for m, r in q.items()
               if _family(m)[0] in ("imp", "imp-init") and r["sparsity"] >= min_sparsity]  # fmt: skip
    if not tickets:
        return "no ticket measured"
    d, m = max(tickets, key=lambda t: t[0].mean)
    return f"{m} ({100 * q[m]['sparsity']:.1f}%, {_said(d, -WITHIN_DB)} vs dense)"


def cs_headlines(task: str, q: dict[str, dict[str, Any]]) -> list[str]:
    """One CS task's headline lines: dense with its interval, the sparsest ticket within 0.5 dB, the baselines,
    IMP vs random at 59-79%."""
    dense = psnr_interval(q["dense"])
    parts = [
        f"sparsest {label} within {WITHIN_DB} dB: {_within_text(q, _sparsest_within(q, (fam,)))}"
        for fam, label in (("imp", "IMP ticket (retrained)"), ("imp-init", "IMP mask on the pre-trained weights"))
    ]
    lines = [f"- {task}: dense {dense.text(signed=False)} dB ({dense.how()}); " + "; ".join(parts)]
    for base in ("back-projection", "least-squares"):
        if base in q:
            b, d = psnr_interval(q[base]), paired(q["dense"], q[base])
            lines.append(f"  - vs {base}: {b.text(signed=False)} dB, dense - {base} {_said(d, 0, True)}")
    pairs = []
    for r in (4, 5, 6, 7):
        a, b = q.get(f"imp-{r}"), q.get(f"random-{r}")
        if a and b:
            pairs.append(f"{100 * a['sparsity']:.0f}%: IMP - random {_said(paired(a, b), 0, True)}")
    if pairs:
        lines.append(f"  - IMP vs random at 59-79% (paired per face): {'; '.join(pairs)}")
    return lines


def headlines(quality: Quality) -> list[str]:
    """The sparsest IMP ticket within 0.5 dB of dense on CS; IMP vs random at 59-79%; MOM vs LS under outliers;
    the generator against back-projection / least squares."""
    lines = []
    for task in ("cs-200-ls", "cs-100-ls"):
        if "dense" in quality.get(task, {}):
            lines += cs_headlines(task, quality[task])
    ls, mom = quality.get("cs-200-ls-outliers", {}), quality.get("cs-200-mom-outliers", {})
    for m in ("dense", "imp-3", "imp-7"):
        if m in ls and m in mom:
            a, b = psnr_interval(mom[m]), psnr_interval(ls[m])
            lines.append(
                f"- 2% outliers, {m}: MOM {a.text(signed=False)} dB vs LS {b.text(signed=False)} dB, "
                f"MOM - LS {_said(paired(mom[m], ls[m]), 0, True)}"
            )
    return lines


def targets(quality: Quality) -> list[str]:
    """The issue's three targets, each with the verdict of its interval and the numbers behind it."""
    out = []
    q = quality.get("cs-200-ls", {})
    if "dense" in q and "back-projection" in q:
        d = paired(q["dense"], q["back-projection"])
        out.append(
            f"- CS >= {BACK_PROJECTION_MARGIN_DB:g} dB above back-projection at 26% measurements: "
            f"{_said(d, BACK_PROJECTION_MARGIN_DB)}"
        )
    if "dense" in q:
        hit = _sparsest_within(q, ("imp", "imp-init"), min_sparsity=0.488)
        said = f"{hit[0]}: {_within_text(q, hit)}" if hit else f"does not hold; closest: {_closest(q, 0.488)}"
        out.append(f"- a ticket >= 49% within {WITHIN_DB} dB of dense on CS: {said}")
    ls, mom = quality.get("cs-200-ls-outliers", {}), quality.get("cs-200-mom-outliers", {})
    if "dense" in ls and "dense" in mom:
        d = paired(mom["dense"], ls["dense"])
        out.append(f"- MOM ahead of LS under 2% outliers (dense): {_said(d, 0, True)}")
    return out


ORDER = {"dense": 0, "imp": 1, "imp-init": 2, "random": 3, "back-projection": 4, "least-squares": 5}


def quality_table(task: str, q: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        f"### {task}",
        "",
        "| method | sparsity | PSNR dB [95%] | vs dense dB [95%], paired | n | MSE [-1, 1] | SSIM |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m, r in sorted(q.items(), key=lambda kv: (ORDER.get(_family(kv[0])[0], 3), _family(kv[0]))):
        sp = "-" if r.get("sparsity") is None else f"{100 * r['sparsity']:.1f}%"
        iv = psnr_interval(r)
        vs = "-" if m == "dense" or "dense" not in q else paired(r, q["dense"]).text()
        lines.append(f"| {m} | {sp} | {iv.text(signed=False)} | {vs} | {iv.n} | {r['mse']:.5f} | {r['ssim']:.4f} |")
    return [*lines, ""]


def latency_table(rows: list[dict[str, Any]]) -> list[str]:
    """One line per method: its ``torch-cpu`` and ``ort-cpu`` rows (``gan-latency/<method>/<runner>`` jobs)."""
    by: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r.get("kind") == "latency":
            by.setdefault(r["method"], dict(r))[r["runner"]] = r["ms"]
    if not by:
        return []
    lines = ["### generator forward latency (batch 1, 1 thread)", "",
             "| method | sparsity | compacted PyTorch CPU ms | ONNX Runtime CPU ms | parameters | ONNX bytes |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for m, r in by.items():
        ms = [f"{r[k]:.3f}" if k in r else "-" for k in ("torch-cpu", "ort-cpu")]
        lines.append(
            f"| {m} | {100 * r['sparsity']:.1f}% | {ms[0]} | {ms[1]} | {r['compacted_parameters']:,} | "
            f"{r['onnx_bytes']:,} |"
        )
    return [*lines, ""]


def _errorbar(ax, rows: list[dict[str, Any]], style: str, color: str, label: str) -> None:
    pts = sorted((r["sparsity"], psnr_interval(r)) for r in rows)
    xs = [100 * s for s, _ in pts]
    ys = [iv.mean for _, iv in pts]
    err = [[iv.mean - iv.lo if iv.known else 0 for _, iv in pts], [iv.hi - iv.mean if iv.known else 0 for _, iv in pts]]
    ax.errorbar(xs, ys, yerr=err, fmt=style, color=color, label=label, markersize=3, capsize=2, lw=0.9)


def _reference(ax, row: dict[str, Any], color: str, ls: str, label: str) -> None:
    iv = psnr_interval(row)
    ax.axhline(iv.mean, color=color, lw=0.8, ls=ls, label=label)
    if iv.known and not math.isnan(iv.lo):
        ax.axhspan(iv.lo, iv.hi, color=color, alpha=0.12, lw=0)


def plot(out: Path, quality: Quality) -> Path | None:
    """PSNR vs sparsity per task (IMP and random chains, 95% intervals over the faces as error bars), dense as the
    reference line with its interval as a band."""
    import matplotlib  # function-level: matplotlib + pyplot cost 1.3 s + 2.7 s of import, only the plot needs them

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): no display needed

    tasks = list(quality)
    if not tasks:
        return None
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        q = quality[task]
        for fam, style, color in (("imp", "o-", "tab:blue"), ("imp-init", "^:", "tab:orange"),
                                  ("random", "s--", "tab:green")):  # fmt: skip
            rows = [r for m, r in q.items() if _family(m)[0] == fam]
            if rows:
                _errorbar(ax, rows, style, color, fam)
        for base, color, ls in (("dense", "k", "-"), ("back-projection", "tab:red", ":"),
                                ("least-squares", "tab:gray", ":")):  # fmt: skip
            if base in q:
                _reference(ax, q[base], color, ls, base)
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("sparsity %")
        ax.set_ylabel("PSNR dB (mean, 95% interval)")
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    path = out / "psnr_vs_sparsity.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(out: Path, rows: list[dict[str, Any]]) -> Path:
    quality = _quality(rows)
    env, preset = (json.loads((out / f).read_text()) if (out / f).is_file() else {} for f in ENV_FILES)
    settings = {k: preset.get(k) for k in ("name", "epochs", "iters", "rounds", "eval_images")}
    text = [
        "# gan benchmark: the demo generator's tickets as priors on held-out faces",
        "",
        f"Settings: {settings}; machine: {env.get('machine', env.get('platform', '?'))}; "
        f"commit {env.get('git_commit', env.get('commit', '?'))}. Seeds: operators 0, noise 1, latents 0, training 0.",
        "",
        "PSNR: mean over the held-out faces with its 95% interval (Student t below 20 faces, seeded percentile "
        "bootstrap from 20); differences paired per face. Verdicts read the interval: holds (it clears the "
        "threshold), within noise (it straddles it), does not hold. One latent-fit seed per face: the intervals "
        "cover the faces' spread, not the fits' seeds. MSE and SSIM: means over the faces.",
        "",
        "## Headlines",
        "",
        *headlines(quality),
        "",
        "## Targets",
        "",
        *targets(quality),
        "",
        "## Results",
        "",
    ]
    for task, q in quality.items():
        text += quality_table(task, q)
    text += latency_table(rows)
    if plot(out, quality):
        text += ["![PSNR vs sparsity](psnr_vs_sparsity.png)", ""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(text) + "\n")
    print(f"wrote {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    out = Path((argv or sys.argv[1:])[0])
    write_report(out, RowStore.read_all(out)[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The ``gan`` benchmark's report: tables per task, the headline lines, the issue's targets, PSNR vs sparsity.

Built from ``rows.jsonl`` alone (``python -m lipdeploy.bench.cpu.gan_report DIR`` rebuilds it), so the report always
says what the rows say.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from lipdeploy.fileio import atomic_write_text

WITHIN_DB = 0.5


def _quality(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """task -> method -> row."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        if r.get("kind") == "quality":
            out.setdefault(r["task"], {})[r["method"]] = r
    return out


def _family(method: str) -> tuple[str, int]:
    base, _, r = method.rpartition("-")
    return (base, int(r)) if r.isdigit() else (method, -1)


def headlines(quality: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """The sparsest IMP ticket within 0.5 dB of dense on CS; IMP vs random at 59-79%; MOM vs LS under outliers;
    the generator against back-projection / least squares."""
    lines = []
    for task in ("cs-200-ls", "cs-100-ls"):
        q = quality.get(task, {})
        if "dense" not in q:
            continue
        dense = q["dense"]["psnr"]
        parts = []
        for fam, label in (("imp", "IMP ticket (retrained)"), ("imp-init", "IMP mask on the pre-trained weights")):
            ok = [r for m, r in q.items() if _family(m)[0] == fam and r["psnr"] >= dense - WITHIN_DB]
            best = max(ok, key=lambda r: r["sparsity"], default=None)
            found = f"{best['method']} ({100 * best['sparsity']:.1f}%, {best['psnr']:.2f} dB)" if best else "none"
            parts.append(f"sparsest {label} within {WITHIN_DB} dB: {found}")
        lines.append(f"- {task}: dense {dense:.2f} dB; " + "; ".join(parts))
        for base in ("back-projection", "least-squares"):
            if base in q:
                lines.append(f"  - vs {base}: {q[base]['psnr']:.2f} dB, dense is {dense - q[base]['psnr']:+.2f} dB")
        pairs = []
        for r in (4, 5, 6, 7):
            a, b = q.get(f"imp-{r}"), q.get(f"random-{r}")
            if a and b:
                pairs.append(f"{100 * a['sparsity']:.0f}%: IMP {a['psnr']:.2f} vs random {b['psnr']:.2f} dB")
        if pairs:
            lines.append(f"  - IMP vs random at 59-79%: {'; '.join(pairs)}")
    ls, mom = quality.get("cs-200-ls-outliers", {}), quality.get("cs-200-mom-outliers", {})
    for m in ("dense", "imp-3", "imp-7"):
        if m in ls and m in mom:
            lines.append(
                f"- 2% outliers, {m}: MOM {mom[m]['psnr']:.2f} dB vs LS {ls[m]['psnr']:.2f} dB "
                f"({mom[m]['psnr'] - ls[m]['psnr']:+.2f} dB)"
            )
    return lines


def targets(quality: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """The issue's three targets, each met or not, with the numbers behind it."""
    out = []
    q = quality.get("cs-200-ls", {})
    if "dense" in q and "back-projection" in q:
        gap = q["dense"]["psnr"] - q["back-projection"]["psnr"]
        verdict = "met" if gap >= 3 else "not met"
        out.append(f"- CS >= 3 dB above back-projection at 26% measurements: {verdict} ({gap:+.2f} dB)")
    if "dense" in q:
        floor = q["dense"]["psnr"] - WITHIN_DB
        ok = [r for m, r in q.items() if _family(m)[0] in ("imp", "imp-init") and r["sparsity"] >= 0.488]
        best = max((r for r in ok if r["psnr"] >= floor), key=lambda r: r["sparsity"], default=None)
        out.append(
            "- a ticket >= 49% within 0.5 dB of dense on CS: "
            + (f"met ({best['method']}, {100 * best['sparsity']:.1f}%)" if best else "not met")
        )
    ls, mom = quality.get("cs-200-ls-outliers", {}), quality.get("cs-200-mom-outliers", {})
    if "dense" in ls and "dense" in mom:
        gap = mom["dense"]["psnr"] - ls["dense"]["psnr"]
        out.append(f"- MOM ahead of LS under 2% outliers (dense): {'met' if gap > 0 else 'not met'} ({gap:+.2f} dB)")
    return out


def tables(quality: dict[str, dict[str, dict[str, Any]]], rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for task, q in quality.items():
        lines += [
            f"### {task}",
            "",
            "| method | sparsity | PSNR dB | MSE [-1, 1] | SSIM |",
            "|---|---:|---:|---:|---:|",
        ]
        order = {"dense": 0, "imp": 1, "imp-init": 2, "random": 3, "back-projection": 4, "least-squares": 5}
        for m, r in sorted(q.items(), key=lambda kv: (order.get(_family(kv[0])[0], 3), _family(kv[0]))):
            sp = "-" if r.get("sparsity") is None else f"{100 * r['sparsity']:.1f}%"
            lines.append(f"| {m} | {sp} | {r['psnr']:.2f} | {r['mse']:.5f} | {r['ssim']:.4f} |")
        lines.append("")
    lat = [r for r in rows if r.get("kind") == "latency"]
    if lat:
        lines += ["### generator forward latency (batch 1, 1 thread)", "",
                  "| method | sparsity | compacted PyTorch CPU ms | ONNX Runtime CPU ms | parameters | ONNX bytes |",
                  "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
        for r in lat:
            lines.append(
                f"| {r['method']} | {100 * r['sparsity']:.1f}% | {r['torch_cpu_ms']:.3f} | {r['ort_cpu_ms']:.3f} | "
                f"{r['compacted_parameters']:,} | {r['onnx_bytes']:,} |"
            )
        lines.append("")
    return lines


def plot(out: Path, quality: dict[str, dict[str, dict[str, Any]]]) -> Path | None:
    """PSNR vs sparsity per task (IMP and random chains), dense as the reference line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(quality)
    if not tasks:
        return None
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        q = quality[task]
        for fam, style, color in (
            ("imp", "o-", "tab:blue"),
            ("imp-init", "^:", "tab:orange"),
            ("random", "s--", "tab:green"),
        ):  # noqa: E501
            pts = sorted((r["sparsity"], r["psnr"]) for m, r in q.items() if _family(m)[0] == fam)
            if pts:
                ax.plot([100 * s for s, _ in pts], [p for _, p in pts], style, color=color, label=fam, markersize=3)
        if "dense" in q:
            ax.axhline(q["dense"]["psnr"], color="k", lw=0.8, label="dense")
        for base, color in (("back-projection", "tab:red"), ("least-squares", "tab:gray")):
            if base in q:
                ax.axhline(q[base]["psnr"], color=color, lw=0.8, ls=":", label=base)
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("sparsity %")
        ax.set_ylabel("PSNR dB")
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    path = out / "psnr_vs_sparsity.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(out: Path, rows: list[dict[str, Any]]) -> Path:
    quality = _quality(rows)
    env = {}
    if (out / "environment.json").is_file():
        env = json.loads((out / "environment.json").read_text())
    settings = {k: env.get(k) for k in ("epochs", "iters", "rounds", "quick")}
    text = [
        "# gan benchmark: the demo generator's tickets as priors on held-out faces",
        "",
        f"Settings: {settings}; machine: {env.get('machine', env.get('platform', '?'))}; "
        f"commit {env.get('git_commit', env.get('commit', '?'))}. Seeds: operators 0, noise 1, latents 0, training 0.",
        "",
        "## Headlines",
        "",
        *headlines(quality),
        "",
        "## Targets (issue 24)",
        "",
        *targets(quality),
        "",
        "## Results",
        "",
        *tables(quality, rows),
    ]
    if plot(out, quality):
        text += ["![PSNR vs sparsity](psnr_vs_sparsity.png)", ""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(text) + "\n")
    print(f"wrote {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    out = Path((argv or sys.argv[1:])[0])
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines() if line.strip()]
    write_report(out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

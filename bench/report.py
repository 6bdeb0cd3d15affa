"""Build the report from every rows file in a results folder: CSV, JSON, Markdown and PNG plots.

Always rebuilt from all ``rows-*.jsonl`` files (never incrementally), so shards copied into one folder merge and a
resumed run's report covers everything finished. The parts: :mod:`.derived` (reading the folder, derived rows),
:mod:`.verdicts` (paired comparisons, the paper's claims, the noise floor), :mod:`.tables`, :mod:`.frontier`
(structured tickets), :mod:`.per_task` (multi-task presets), :mod:`.plots`, and :mod:`.paper_claims` (the per-task
claims table). The report never imports the harness.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from lipdeploy.fileio import atomic_write_text

from . import stats
from .derived import CSV_COLUMNS, ENV_COLUMNS, TTQ_MARGIN_DB, load, mean_rows, method_order, time_to_quality
from .formatting import fmt, md_table, mean_text
from .frontier import beside_dense, frontier_lines
from .paper_claims import claims_markdown
from .per_task import task_quality, task_section
from .plots import plots, quality_latency_plot
from .tables import quality_tables, resource_table
from .verdicts import NO_VERDICT_PRESETS, claims, comparison_table, delta_intervals, noise_floor_lines, threads_note

HEADLINE_FAMILIES = (
    "dense", "dd", "lip", "random", "dd-matched", "lip-kernel", "lip-channel", "transfer",
    "lip-block", "random-block", "lip-channel-norm", "dip-narrow",
)  # fmt: skip


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
    table = claims_markdown(task_quality(all_rows), claims_setting(preset))
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
    lat = {b: {m: ms for m, (ms, _) in beside_dense(rows, b).items()} for b in HEADLINE_LATENCY_RUNNERS}
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
                mean_text(pb),
                iv.text() if iv and iv.n and m != "dense" else ("+0.00" if m == "dense" else "-"),
                fmt(means.get((m, "ssim_best"), {}).get("value"), 3),
                *((fmt(lat[b].get(m), 1) for b in HEADLINE_LATENCY_RUNNERS) if timed else ()),
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
    lines += md_table(header, body)
    lines += [*threads_note(rows)]
    lines += ["", *[ln for ln in claims(rows, preset) if ln.startswith("- ")]]
    return "\n".join(lines) + "\n"


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
        lines += md_table(
            ["image", "kind", "finder", "seconds"],
            [[i, str(g), str(v.get("finder")), fmt(v.get("find_seconds"), 1)] for (i, g), v in sorted(agg.items())],
        )
    if pngs:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in pngs]
    lines.append("")
    return "\n".join(lines)

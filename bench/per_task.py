"""The report of a multi-task preset: per task, PSNR vs sparsity of LIP, random pruning, the matched deep decoder and
the dense DIP, and the transferred tickets next to the image's own."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from . import stats
from .derived import mean_of, seed_of
from .formatting import fmt, md_table
from .plots import task_plot
from .verdicts import Unit


def task_quality(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
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
    """The report of a multi-task preset: per task, PSNR vs sparsity of LIP, random pruning and the matched
    deep decoder with the dense DIP as a line (mean over images; a plot with one panel per task), and the transfer
    rows next to the image's own ticket at the same round. The targets' verdicts are the claims table's
    (:mod:`.paper_claims`), which build_report puts above this section. Returns (Markdown lines, PNG names)."""
    tq = task_quality(rows)
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
                f"{100 * (e['sparsity'] or 0):.1f}%", fmt(mean_of(list(e["psnr"].values()))),
                fmt(mean_of(list(rnd.values()))), fmt(mean_of(list(dd.values()))), fmt(mean_of(list(dense.values()))),
                paired(e["psnr"], rnd), paired(e["psnr"], dense), paired(e["psnr"], dd),
            ])  # fmt: skip
        lines += ["", f"### {task}", ""]
        lines += md_table(["sparsity", "LIP", "random", "matched DD", "dense", "LIP - random", "LIP - dense",
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
                tr.append([m, f"{src}, {e.get('source_task') or task}", img, fmt(mean_of(list(mine.values()))),
                           fmt(mean_of(list(theirs.values()))), paired(mine, theirs)])  # fmt: skip
        if tr:
            lines += ["", f"Transferred tickets fitted on {task} (found on: image, task; mean over seeds):", ""]
            lines += md_table(["method", "found on", "fitted on", "PSNR", "own ticket", "Δ vs own [95%] (n)"], tr)
    return lines, task_plot(out, tq)

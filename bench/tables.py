"""The report's quality and resource tables (Markdown lines)."""

from __future__ import annotations

from typing import Any

from .derived import mean_of, method_order, per_image
from .formatting import fmt, fmt_bytes, md_table, mean_text
from .verdicts import delta_intervals


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
        ttq_s = "n/r" if ttq and all(t is None for t in ttq) else fmt(mean_of([t for t in ttq if t is not None]), 1)
        if ttq and any(t is None for t in ttq) and not all(t is None for t in ttq):
            ttq_s += f" ({sum(t is None for t in ttq)} n/r)"
        iv = deltas.get(m)
        body.append(
            [
                m,
                fmt(100 * pb["sparsity"], 1) if pb.get("sparsity") is not None else "-",
                f"{pb.get('params', 0):,}",
                mean_text(pb),
                fmt(means.get((m, "psnr_final"), {}).get("value")),
                fmt(means.get((m, "ssim_best"), {}).get("value"), 4),
                fmt(means.get((m, "ssim_final"), {}).get("value"), 4),
                f"{iv.text()} ({iv.how()})" if iv and iv.n else "-",
                ttq_s,
                fmt(means.get((m, "fit_seconds"), {}).get("value"), 1),
                f"{pb.get('n_images', '')} x {pb.get('n_seeds', 1)}",
            ]
        )
    t1 = md_table(
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
            cells.append("-" if b is None else f"{b:.2f} / {fmt(f)}")
        body2.append([m, *cells])
    t2 = md_table(["method (PSNR best / final, dB; mean over seeds)", *images], body2)
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
            fmt(mem.get((m, "params"))),
            fmt(mem.get((m, "nonzeros"))),
            fmt_bytes(mem.get((m, "bytes_ticket"))),
            fmt_bytes(mem.get((m, "bytes_onnx_dense"))),
            fmt_bytes(mem.get((m, "bytes_onnx_sparse"))),
            fmt_bytes(mem.get((m, "peak_rss_step_bytes"))),
            fmt_bytes(mem.get((m, "optimizer_state_bytes_dense"))),
            fmt_bytes(mem.get((m, "optimizer_state_bytes_sparse"))),
        ]
        for b in runners:
            row.append(fmt(lat.get((m, b, "forward_ms")), 1) + ("*" if (m, b, "forward_ms") in loaded else ""))
            if any(k[1] == b and k[2] == "step_ms" for k in lat):
                row.append(fmt(lat.get((m, b, "step_ms")), 1) + ("*" if (m, b, "step_ms") in loaded else ""))
        body.append(row)
    table = md_table(header, body)
    if loaded:
        table += [
            "",
            "\\* measured while the load average exceeded the core count (other processes competed for the CPU): "
            "not comparable with the other latencies; the rows' min_ms / q1_ms / q3_ms / max_ms give the spread.",
        ]
    return table

"""The rows each kind of job produces: quality (a fit), latency (one runner), memory (sizes and peaks), find.

Every row has the same core fields (method, family, image, metric, value, unit, preset, task) plus the method's
fields (sparsity, parameters, nonzeros ...), so the report can group any metric by any of them.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from lipdeploy.fileio import atomic_write_text
from lipdeploy.ticket import Ticket, load_ticket

from ..rows import curve_path, slug
from . import engine
from .jobs import Job, Method
from .latency import measure, onnx_sizes
from .memprobe import probe
from .workspace import Workspace


def row(ws: Workspace, m: Method | None, image: str, metric: str, value: Any, unit: str, **extra: Any) -> dict:
    """One result row of method ``m`` (None for find rows) on ``image`` ("-" for image-independent metrics)."""
    r = {
        "method": m.name if m else None,
        "family": m.family if m else None,
        "image": image,
        "metric": metric,
        "value": value,
        "unit": unit,
        "preset": ws.preset.name,
        "task": (m.task if m else None) or ws.preset.task,
    }
    r.update(extra)
    return r


def method_fields(m: Method, t: Ticket) -> dict[str, Any]:
    """What every row of a method carries about its network."""
    dd_k = getattr(t.arch, "k", None) if t.arch.kind == "dd" else None
    f = {
        "sparsity": round(t.sparsity, 6),
        "params": engine.param_count(t),
        "nonzeros": t.kept_count,
        "granularity": m.granularity,
        "dd_k": dd_k,
        "source_image": m.source,
    }
    # fields the first presets' rows do not have (added only where they say something, so those rows stay as they
    # were): the IMP round a size-matched or ticket method stands for, the method across tasks, where a ticket came
    # from, a channel ticket's pruning rule (global mean |w| tickets record none) and a narrow DIP's width
    if m.rounds is not None and (m.find or m.match or m.task):
        f["rounds"] = m.rounds
        f["sparsity_nominal"] = round(m.sparsity_nominal or 0.0, 6)
    if m.task:
        f["base_method"] = m.base_name
        f["source_task"] = m.source_task or m.task
    rule = t.provenance.get("channel_rule") if isinstance(t.provenance, dict) else None
    if rule:
        f["channel_rule"] = rule
    if m.family == "dip-narrow":
        f["width"] = max(getattr(t.arch, "channels_down", (0,)))
    return f


def find_rows(ws: Workspace, image: str, kind: str, found: engine.FoundTickets) -> list[dict[str, Any]]:
    """Per round: the ticket's sparsity, and IMP's best PSNR and seconds; then the find's time and finder."""
    rows = []
    task = kind.partition("@")[2] or ws.preset.task
    for r, path in sorted(found.paths.items()):
        t = load_ticket(path)
        prov = t.provenance
        extra = {"granularity": kind, "rounds": r, "sparsity": round(t.sparsity, 6), "task": task}
        rows.append(row(ws, None, image, "ticket_sparsity", round(t.sparsity, 6), "fraction", **extra))
        if prov.get("psnr_best") is not None:
            rows.append(row(ws, None, image, "imp_round_psnr_best", prov["psnr_best"], "dB", **extra))
            rows.append(row(ws, None, image, "imp_round_seconds", prov.get("fit_seconds"), "s", **extra))
    rows.append(row(ws, None, image, "find_seconds", round(found.seconds, 3), "s", granularity=kind, task=task))
    rows.append(row(ws, None, image, "finder", found.finder, "", granularity=kind, task=task))
    return rows


def quality_rows(ws: Workspace, job: Job) -> list[dict[str, Any]]:
    """Fit the method on the job's image; PSNR/SSIM (best and final), time; the curve goes to ``curves/``."""
    m, image = job.method, job.image
    p = ws.preset
    seed = job.fit_seed(p)
    clean, obs = ws.image(image, m.task)  # the observation's seed is the image's: the same for every fit seed
    t = ws.method_ticket(m, image, seed)
    out = engine.run_fit(t, obs, clean, ws.task_of(m.task), p.iters, p.lr, seed, p.log_every)
    curve = {"method": m.name, "image": image, "preset": p.name, "seed": seed, "curve": out.curve}
    atomic_write_text(curve_path(ws.out, m.name, image, None if seed == p.seed else seed), json.dumps(curve) + "\n")
    # the seed, and the torch threads the fit ran with: the same seed gives the same PSNR only with the same threads
    # (a dense fit at 96 px, seed 0: 27.18 dB on one thread, 27.09 dB on two)
    f = {**method_fields(m, t), "seed": seed, "threads": torch.get_num_threads()}
    return [
        row(ws, m, image, "psnr_best", round(out.psnr_best, 4), "dB", **f),
        row(ws, m, image, "psnr_final", round(out.psnr_final, 4), "dB", **f),
        row(ws, m, image, "ssim_best", round(out.ssim_best, 5), "", **f),
        row(ws, m, image, "ssim_final", round(out.ssim_final, 5), "", **f),
        row(ws, m, image, "fit_seconds", round(out.seconds, 3), "s", iterations=out.iterations, **f),
        row(ws, m, image, "fit_step_ms", round(out.step_ms_median, 3), "ms", **f),
    ]


_burned_in = False  # has this process timed a model yet (latency_rows)


def latency_rows(ws: Workspace, job: Job) -> list[dict[str, Any]]:
    """Median forward (and fitting-step) ms of the method on the job's latency runner, at the first image's size."""
    m, runner = job.method, job.runner
    t = ws.method_ticket(m, ws.preset.images[0])
    h, w = ws.size()
    if h % t.arch.stride or w % t.arch.stride:
        h, w = h - h % t.arch.stride, w - w % t.arch.stride
    f = method_fields(m, t)
    p = ws.preset
    global _burned_in
    if not _burned_in:
        # The first model a process times runs slow through its whole measurement, whatever the warm-up: the dense
        # paper network (PyTorch CPU, 1 thread, 128 px) timed 83-97 ms first and 75 ms when timed again in the same
        # process (2.5 s of warm-up calls did not help, a second measurement did). So a process's first
        # timing is made twice and the first one thrown away.
        measure(t, runner, h, w, p.latency_warmup, p.latency_repeats, ws.out / "onnx", m.name)
        _burned_in = True
    res = measure(t, runner, h, w, p.latency_warmup, p.latency_repeats, ws.out / "onnx", m.name)
    rows = []
    load = _load()
    cores = os.cpu_count() or 1
    spread = res.get("_spread", {})
    for metric, value in res.items():
        if metric.startswith("_"):
            continue
        extra = {f"{k}_ms": round(v, 4) for k, v in spread.get(metric, {}).items()}
        # a row timed while more processes wanted the CPU than it has cores is flagged: its median is suspect
        loaded = load is not None and load > cores
        rows.append(
            row(ws, m, "-", metric, value, "ms", runner=runner, size=f"{w}x{h}", loadavg=load, loaded=loaded,
                **extra, **f)
        )  # fmt: skip
    if res.get("_note"):
        rows.append(row(ws, m, "-", "note", res["_note"], "", runner=runner, **f))
    return rows


def memory_rows(ws: Workspace, job: Job) -> list[dict[str, Any]]:
    """Parameters, stored bytes (ticket, ONNX), optimizer state and the peak memory of a fitting step."""
    m = job.method
    t = ws.method_ticket(m, ws.preset.images[0])
    h, w = ws.size()
    f = method_fields(m, t)
    path = ws.out / "tickets" / "methods" / f"{slug(m.name)}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    # stored bytes of what a user ships: masks + initial weights (IMP round files also carry the fitted weights)
    t.replace(fitted=None).save(path)
    dense_params = engine.dense_param_count(t)
    rows = [
        row(ws, m, "-", "params", f["params"], "count", **f),
        row(ws, m, "-", "dense_params", dense_params, "count", **f),
        row(ws, m, "-", "nonzeros", t.kept_count, "count", **f),
        row(ws, m, "-", "bytes_ticket", path.stat().st_size, "B", **f),
        # Adam keeps exp_avg and exp_avg_sq (fp32) per optimised parameter: a masked dense fit optimises every
        # parameter; a sparse backend only the nonzeros (plus biases and BatchNorm affine).
        row(ws, m, "-", "optimizer_state_bytes_dense", 8 * dense_params, "B", **f),
        row(ws, m, "-", "optimizer_state_bytes_sparse", 8 * f["params"], "B", **f),
    ]
    for fmt, size in (onnx_sizes(t, ws.out / "onnx", m.name) if ws.preset.onnx_sizes else {}).items():
        rows.append(row(ws, m, "-", f"bytes_onnx_{fmt}", size, "B", **f))
    if ws.preset.memory_probe:
        size = f"{w}x{h}"
        for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
            got = probe(path, h, w, device, torch.get_num_threads())
            if device == "cpu":
                step = got["peak_rss_bytes"] - got["baseline_rss_bytes"]
                rows.append(row(ws, m, "-", "peak_rss_step_bytes", step, "B", runner="torch-cpu", size=size, **f))
                total = got["peak_rss_bytes"]
                rows.append(row(ws, m, "-", "peak_rss_total_bytes", total, "B", runner="torch-cpu", size=size, **f))
            else:
                peak = got["cuda_peak_bytes"]
                rows.append(row(ws, m, "-", "cuda_peak_step_bytes", peak, "B", runner="torch-cuda", size=size, **f))
    return rows


def _load() -> float | None:
    """1-minute load average: timings taken while other processes compete for the CPU are flagged by it."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None

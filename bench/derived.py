"""A results folder as the report reads it, and the rows the report derives from it.

The folder is read through :mod:`.rows` only (never the harness), so a copied results folder rebuilds its report
without the fitting engine. Derived numbers are computed here, not in the jobs, because they combine jobs that may
have run on different machines: means over images and seeds, time to quality (needs the dense DIP's best PSNR on the
same image).
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from lipdeploy.errors import InputError
from lipdeploy.fileio import read_json_file

from . import stats
from .rows import RowStore, curve_path

TTQ_MARGIN_DB = 0.5  # time to quality: seconds until PSNR >= dense DIP best - this


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


def mean_of(xs: list[float]) -> float:
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
        r.update(image="mean", value=round(mean_of([x["value"] for x in rs]), 5), n=len(rs),
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
        out[k] = mean_of(nums) if nums else None
    return out


def sparsity_of(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {r["method"]: r.get("sparsity") or 0.0 for r in rows if r["metric"] == "psnr_best" and r.get("method")}

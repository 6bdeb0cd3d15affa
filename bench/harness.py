"""The benchmark harness: plan work units (jobs), run this shard's share, append rows, resume, rebuild the report.

Jobs have stable keys (``find/astronaut/unstructured``, ``quality/lip-unstructured-89/astronaut``,
``latency/dense/torch-cpu``, ``memory/dd-k64`` ...) and a fixed order, so ``--shard i/n`` (jobs whose index % n == i)
splits the same plan the same way on every machine. A job's rows are appended to ``DIR/rows-<i>-<n>.jsonl`` in one
write followed by a ``job`` record and an fsync: a job is finished exactly when its record is in some rows file, so an
interrupted run resumes where it stopped and shards copied into one folder merge. Tickets a job needs are files under
``DIR/tickets``; when one is missing the job runs its find in the same shard (deterministic, seeded: any shard that
computes it computes the same ticket), so shards never wait on each other.

Why jobs and not one loop: the cpu and paper presets take hours; a crash, a pre-empted cluster node or a laptop lid
must cost one job, not the run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lipdeploy.errors import InputError
from lipdeploy.fileio import atomic_write_text
from lipdeploy.images import crop_to_multiple, standard_image
from lipdeploy.tasks import Observation, Task, make_task
from lipdeploy.ticket import Ticket, load_ticket

from . import engine
from .presets import Preset, pct, round_sparsity

# --------------------------------------------------------------------------------------------------- environment


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(mod: str) -> str | None:
    try:
        return __import__(mod).__version__
    except Exception:  # noqa: BLE001 - any import problem means "not available"
        return None


def environment(preset: Preset, shard: tuple[int, int]) -> dict[str, Any]:
    """Where and with what the numbers were measured; stored per shard and joined into every CSV row."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    env = {
        "host": platform.node(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": _version("onnxruntime"),
        "triton": _version("triton"),
        "numpy": _version("numpy"),
        "torch_threads": torch.get_num_threads(),
        # other processes on the machine distort timings: the load when the run started says how much
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "preset": preset.name,
        "shard": f"{shard[0]}/{shard[1]}",
    }
    env["env_id"] = hashlib.sha1(json.dumps(env, sort_keys=True).encode()).hexdigest()[:10]
    return env


# --------------------------------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class Method:
    """One compared network. ``rounds`` is the IMP round of ticket-based methods; ``source`` the find image of a
    transferred ticket; ``path`` a user-given ticket file."""

    name: str
    family: str
    granularity: str | None = None
    rounds: int | None = None
    dd_k: int | None = None
    source: str | None = None
    path: str | None = None

    @property
    def sparsity_nominal(self) -> float | None:
        return round_sparsity(self.rounds) if self.rounds else None

    @property
    def find_kind(self) -> str | None:
        """Which find (granularity or 'random') produces this method's ticket."""
        if self.family in ("lip", "lip-kernel", "lip-channel", "dd-matched", "transfer"):
            return self.granularity or "unstructured"
        if self.family == "random":
            return "random"
        return None


@dataclass(frozen=True)
class Job:
    key: str
    kind: str  # find | quality | transfer | latency | memory
    method: Method | None = None
    image: str | None = None
    backend: str | None = None
    find: str | None = None  # granularity for find jobs


def methods_for(preset: Preset, tickets: tuple[str, ...] = ()) -> list[Method]:
    """Every method of the comparison, in report order."""
    ms = [Method("dense", "dense")]
    ms += [Method(f"dd-k{k}", "dd", dd_k=k) for k in preset.dd_ks]
    for r in preset.rounds:
        p = pct(round_sparsity(r))
        ms.append(Method(f"lip-unstructured-{p}", "lip", "unstructured", r))
        ms.append(Method(f"random-{p}", "random", "random", r))
        ms.append(Method(f"dd-matched-{p}", "dd-matched", "unstructured", r))
    for g in preset.granularities:
        if g == "unstructured":
            continue
        for r in preset.structured_rounds:
            ms.append(Method(f"lip-{g}-{pct(round_sparsity(r))}", f"lip-{g}", g, r))
    for t in tickets:
        ms.append(Method(f"ticket-{_slug(Path(t).stem)}", "ticket", path=str(t)))
    return ms


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def available_backends() -> list[str]:
    """Latency backends present here: PyTorch CPU always; compacted PyTorch, ONNX Runtime, CUDA, Triton if there."""
    out = ["torch-cpu"]
    try:
        import lipdeploy.compact  # noqa: F401

        out.append("torch-cpu-compact")
    except ImportError:
        pass
    try:
        import onnxruntime  # noqa: F401

        from lipdeploy.export import onnx_export  # noqa: F401

        out.append("onnxruntime-cpu")
    except ImportError:
        pass
    if torch.cuda.is_available():
        out.append("torch-cuda")
        try:
            import triton  # noqa: F401

            from lipdeploy import sparse  # noqa: F401

            out.append("triton-cuda")
        except ImportError:
            pass
    return out


def plan(preset: Preset, tickets: tuple[str, ...] = (), backends: list[str] | None = None) -> list[Job]:
    """The full, ordered job list. Order = priority for a run that may be cut short: the first image's core
    comparison (dense and deep decoders first, as they need no ticket; then its IMP, LIP, random, matched deep
    decoders) and the latency/memory jobs come first, then the other images, transfer, structured tickets, user
    tickets."""
    backends = backends if backends is not None else available_backends()
    methods = methods_for(preset, tickets)
    core = [m for m in methods if m.family in ("dense", "dd", "lip", "random", "dd-matched")]
    structured = [m for m in methods if m.family in ("lip-kernel", "lip-channel")]
    given = [m for m in methods if m.family == "ticket"]
    jobs: list[Job] = []

    def finds(img: str, kinds: list[str]) -> None:
        for k in kinds:
            jobs.append(Job(f"find/{img}/{k}", "find", image=img, find=k))

    def quality(ms: list[Method], img: str) -> None:
        jobs.extend(Job(f"quality/{m.name}/{img}", "quality", m, img) for m in ms)

    def lat_mem(ms: list[Method]) -> None:
        for m in ms:
            if preset.latency_methods is not None and m.name not in preset.latency_methods:
                continue
            jobs.append(Job(f"memory/{m.name}", "memory", m))
            for b in backends:
                if b == "triton-cuda" and m.family in ("dense", "dd"):
                    continue  # nothing sparse to run
                jobs.append(Job(f"latency/{m.name}/{b}", "latency", m, backend=b))

    first, rest = preset.images[0], preset.images[1:]
    free = [m for m in core if m.family in ("dense", "dd")]  # need no ticket: results before the first IMP ends
    for i, img in enumerate(preset.images):
        quality(free, img)
        finds(img, ["unstructured", "random"])
        quality([m for m in core if m not in free], img)
        if i == 0:
            lat_mem(core)
    if preset.transfer and rest:
        r = max(preset.rounds)
        for img in rest:
            m = Method(f"transfer-{pct(round_sparsity(r))}-from-{first}", "transfer", "unstructured", r, source=first)
            jobs.append(Job(f"transfer/{m.name}/{img}", "transfer", m, img))
    if structured:
        # structured tickets on the preset's structured images that this run has (else its first image)
        wanted = preset.structured_images
        simgs = [i for i in preset.images if wanted is None or i in wanted] or [first]
        for img in simgs:
            finds(img, [g for g in preset.granularities if g != "unstructured"])
            quality(structured, img)
        lat_mem(structured)
    for img in preset.images:
        quality(given, img)
    lat_mem(given)
    keys = [j.key for j in jobs]
    assert len(keys) == len(set(keys)), "job keys must be unique"
    return jobs


def shard_jobs(jobs: list[Job], shard: tuple[int, int]) -> list[Job]:
    i, n = shard
    return [j for idx, j in enumerate(jobs) if idx % n == i]


def parse_shard(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise InputError(None, f"--shard must be i/n with 0 <= i < n, got {text!r}")
    return int(m.group(1)), int(m.group(2))


# --------------------------------------------------------------------------------------------------- row store


class RowStore:
    """Rows of every shard in ``DIR/rows-*.jsonl``; appends go to this shard's file only."""

    def __init__(self, out: Path, shard: tuple[int, int]) -> None:
        self.out = out
        self.path = out / f"rows-{shard[0]}-{shard[1]}.jsonl"

    @staticmethod
    def read_all(out: Path) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
        """(rows of finished jobs, job records by key). A torn last line (crash mid-write) is ignored, and so are the
        rows of a job without its record; a job recorded by two shards counts once (the first file's)."""
        rows: list[dict[str, Any]] = []
        jobs: dict[str, dict[str, Any]] = {}
        for path in sorted(out.glob("rows-*.jsonl")):
            pending: list[dict[str, Any]] = []
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if rec.get("type") == "row":
                    pending.append(rec)
                elif rec.get("type") == "job":
                    key = rec["job"]
                    mine = [r for r in pending if r.get("job") == key]
                    pending = [r for r in pending if r.get("job") != key]
                    if key not in jobs:
                        jobs[key] = rec
                        rows.extend(mine)
        return rows, jobs

    def done(self) -> set[str]:
        return set(self.read_all(self.out)[1])

    def append(self, job: Job, rows: list[dict[str, Any]], seconds: float, env_id: str) -> None:
        recs = [{"type": "row", "job": job.key, "env": env_id, **r} for r in rows]
        recs.append({"type": "job", "job": job.key, "kind": job.kind, "seconds": round(seconds, 3), "rows": len(rows)})
        data = "".join(json.dumps(r, allow_nan=True) + "\n" for r in recs)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


# --------------------------------------------------------------------------------------------------- runner


@dataclass
class RunStats:
    planned: int = 0
    in_shard: int = 0
    skipped: int = 0
    ran: int = 0
    failed: list[str] = field(default_factory=list)
    fits: int = 0
    seconds: float = 0.0


class Bench:
    """One benchmark run (or shard of one) into ``out``."""

    def __init__(
        self,
        preset: Preset,
        out: str | Path,
        shard: tuple[int, int] = (0, 1),
        tickets: tuple[str, ...] = (),
        backends: list[str] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.preset = preset
        self.out = Path(out)
        self.shard = shard
        self.tickets = tuple(tickets)
        self.backends = backends if backends is not None else available_backends()
        self.task: Task = make_task(preset.task)
        self.store = RowStore(self.out, shard)
        self.env = environment(preset, shard)
        self.log = log or (lambda msg: None)
        self._images: dict[str, tuple[torch.Tensor, Observation]] = {}
        self._tickets: dict[tuple[str, str, int], Ticket] = {}
        self._dense: Ticket | None = None

    # ---- setup
    def prepare(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for sub in ("tickets", "curves", "onnx"):
            (self.out / sub).mkdir(exist_ok=True)
        # tickets and ONNX files are large (the paper network's: ~9 MB each) and rebuildable: keep them out of git;
        # rows, curves, the environment and the report are what a results folder commits.
        if not (self.out / ".gitignore").exists():
            atomic_write_text(self.out / ".gitignore", "tickets/\nonnx/\n")
        atomic_write_text(
            self.out / f"environment-{self.shard[0]}-{self.shard[1]}-{self.env['env_id']}.json",
            json.dumps(self.env, indent=2) + "\n",
        )
        atomic_write_text(self.out / "preset.json", json.dumps(self.preset.to_dict(), indent=2) + "\n")
        atomic_write_text(self.out / "environment.json", json.dumps(self.env, indent=2) + "\n")

    def jobs(self) -> list[Job]:
        return plan(self.preset, self.tickets, self.backends)

    # ---- data
    def image(self, name: str) -> tuple[torch.Tensor, Observation]:
        """(clean crop, seeded observation) of a scikit-image photograph."""
        if name not in self._images:
            img = standard_image(name)
            c = self.preset.crop
            if c:
                h, w = img.shape[2:]
                if h < c or w < c:
                    raise InputError(None, f"image {name} is smaller than the {c}x{c} crop")
                t, left = (h - c) // 2, (w - c) // 2
                img = img[:, :, t : t + c, left : left + c].contiguous()
            else:
                img, _ = crop_to_multiple(img, self.task.clean_multiple(self.preset.net.stride))
            obs = self.task.degrade(img, torch.Generator().manual_seed(self.image_seed(name)))
            self._images[name] = (img, obs)
        return self._images[name]

    def dense(self) -> Ticket:
        if self._dense is None:
            self._dense = engine.dense_ticket(self.preset.net, self.preset.seed, method="dense")
        return self._dense

    def _find_dir(self, image: str, kind: str) -> Path:
        return self.out / "tickets" / _slug(image) / kind

    def _ticket_path(self, image: str, kind: str, r: int) -> Path:
        return self._find_dir(image, kind) / f"round_{r:02d}.pt"

    def image_seed(self, name: str) -> int:
        """Seed of an image's simulated observation (the same in quality fits and in IMP)."""
        return self.preset.seed + int(hashlib.sha1(name.encode()).hexdigest()[:6], 16)

    def found_ticket(self, image: str, kind: str, r: int) -> Ticket:
        """The ticket of IMP round ``r`` (``kind`` = granularity or 'random') found on ``image`` (found if missing)."""
        key = (image, kind, r)
        if key not in self._tickets:
            path = self._ticket_path(image, kind, r)
            if not path.exists() or f"find/{image}/{kind}" not in self.store.done():
                self.run_find(image, kind, dependency=True)
            self._tickets[key] = load_ticket(path)
        return self._tickets[key]

    def max_rounds(self, kind: str) -> int:
        if kind in ("unstructured", "random"):
            return max(self.preset.rounds)
        return max(self.preset.structured_rounds)

    def method_ticket(self, m: Method, image: str) -> Ticket:
        """The network of method ``m`` as a ticket (initial weights; masks)."""
        if m.family == "dense":
            return self.dense()
        if m.family == "dd":
            return engine.dd_ticket(m.dd_k, self.preset.dd_depth, self.preset.seed)
        if m.family == "dd-matched":
            k = engine.matched_dd_k(engine.param_count(self.found_ticket(image, "unstructured", m.rounds)))
            return engine.dd_ticket(k, self.preset.dd_depth, self.preset.seed)
        if m.family == "ticket":
            return load_ticket(m.path)
        src = m.source or image
        return self.found_ticket(src, m.find_kind, m.rounds)

    # ---- rows
    def _row(self, m: Method | None, image: str, metric: str, value: Any, unit: str, **extra: Any) -> dict[str, Any]:
        r = {
            "method": m.name if m else None,
            "family": m.family if m else None,
            "image": image,
            "metric": metric,
            "value": value,
            "unit": unit,
            "preset": self.preset.name,
            "task": self.preset.task,
        }
        r.update(extra)
        return r

    def _method_fields(self, m: Method, t: Ticket) -> dict[str, Any]:
        dd_k = getattr(t.arch, "k", None) if t.arch.kind == "dd" else None
        return {
            "sparsity": round(t.sparsity, 6),
            "params": engine.param_count(t),
            "nonzeros": t.kept_count,
            "granularity": m.granularity,
            "dd_k": dd_k,
            "source_image": m.source,
        }

    # ---- running
    def run(self, progress: bool = True, only: Callable[[Job], bool] | None = None) -> RunStats:
        """Run this shard's unfinished jobs, then rebuild the report from all rows in the folder."""
        t0 = time.perf_counter()
        self.prepare()
        fits0 = engine.COUNTERS["fits"]
        all_jobs = self.jobs()
        mine = shard_jobs(all_jobs, self.shard)
        if only:
            mine = [j for j in mine if only(j)]
        done = self.store.done()
        todo = [j for j in mine if j.key not in done]
        stats = RunStats(planned=len(all_jobs), in_shard=len(mine), skipped=len(mine) - len(todo))
        bar = _progress_bar(progress)
        with bar:
            task_id = bar.add_task("bench", total=len(todo), job="")
            for job in todo:
                bar.update(task_id, job=job.key)
                if job.key in self.store.done():  # a dependency run inside this shard may have finished it
                    bar.advance(task_id)
                    stats.skipped += 1
                    continue
                try:
                    tj = time.perf_counter()
                    self.run_job(job)
                    stats.ran += 1
                    if not progress:
                        self.log(f"done {job.key} ({time.perf_counter() - tj:.1f} s)")
                except InputError:
                    raise
                except Exception as exc:  # noqa: BLE001 - one failed job must not lose the others' results
                    stats.failed.append(f"{job.key}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                    self.log(f"job {job.key} failed: {exc}")
                bar.advance(task_id)
        stats.fits = engine.COUNTERS["fits"] - fits0
        stats.seconds = time.perf_counter() - t0
        from .report import build_report

        build_report(self.out)
        return stats

    def run_job(self, job: Job) -> None:
        t0 = time.perf_counter()
        if job.kind == "find":
            self.run_find(job.image, job.find)
            return
        if job.kind in ("quality", "transfer"):
            rows = self._quality(job)
        elif job.kind == "latency":
            rows = self._latency(job)
        elif job.kind == "memory":
            rows = self._memory(job)
        else:
            raise ValueError(job.kind)
        self.store.append(job, rows, time.perf_counter() - t0, self.env["env_id"])

    def run_find(self, image: str, kind: str, dependency: bool = False) -> None:
        """Find the tickets of every needed round for (image, kind) and store them; record the find job's rows.

        Runs as its own job or, when a job of this shard needs a ticket another shard has not delivered, as that
        job's dependency; either way the find job's rows are recorded once (resumable: finished round files are
        kept, and IMP continues after the last one)."""
        t0 = time.perf_counter()
        clean, _ = self.image(image)
        rounds = self.max_rounds(kind)
        p = self.preset
        # two processes sharing a results folder (shards, or --jobs filters) may need the same tickets: the second
        # waits here, then finds every round file and the find's record done, and only reads them
        with _exclusive(self._find_dir(image, kind)):
            found = engine.find_tickets(
                self.dense(),
                clean,
                self.task,
                self._find_dir(image, kind),
                rounds,
                "unstructured" if kind == "random" else kind,
                kind == "random",
                p.imp_iters,
                p.lr,
                p.seed,
                p.log_every,
                image,
                self.image_seed(image),
            )
            rows = []
            for r, path in sorted(found.paths.items()):
                t = load_ticket(path)
                prov = t.provenance
                extra = {"granularity": kind, "rounds": r, "sparsity": round(t.sparsity, 6)}
                rows.append(self._row(None, image, "ticket_sparsity", round(t.sparsity, 6), "fraction", **extra))
                if prov.get("psnr_best") is not None:
                    rows.append(self._row(None, image, "imp_round_psnr_best", prov["psnr_best"], "dB", **extra))
                    rows.append(self._row(None, image, "imp_round_seconds", prov.get("fit_seconds"), "s", **extra))
            rows.append(self._row(None, image, "find_seconds", round(found.seconds, 3), "s", granularity=kind))
            rows.append(self._row(None, image, "finder", found.finder, "", granularity=kind))
            key = f"find/{image}/{kind}"
            if key not in self.store.done():
                self.store.append(
                    Job(key, "find", image=image, find=kind), rows, time.perf_counter() - t0, self.env["env_id"]
                )

    def _quality(self, job: Job) -> list[dict[str, Any]]:
        m, image = job.method, job.image
        clean, obs = self.image(image)
        t = self.method_ticket(m, image)
        p = self.preset
        out = engine.run_fit(t, obs, clean, self.task, p.iters, p.lr, p.seed, p.log_every)
        curve_path = self.out / "curves" / f"{_slug(m.name)}__{_slug(image)}.json"
        curve = {"method": m.name, "image": image, "preset": p.name, "curve": out.curve}
        atomic_write_text(curve_path, json.dumps(curve) + "\n")
        f = self._method_fields(m, t)
        rows = [
            self._row(m, image, "psnr_best", round(out.psnr_best, 4), "dB", **f),
            self._row(m, image, "psnr_final", round(out.psnr_final, 4), "dB", **f),
            self._row(m, image, "ssim_best", round(out.ssim_best, 5), "", **f),
            self._row(m, image, "ssim_final", round(out.ssim_final, 5), "", **f),
            self._row(m, image, "fit_seconds", round(out.seconds, 3), "s", iterations=out.iterations, **f),
            self._row(m, image, "fit_step_ms", round(out.step_ms_median, 3), "ms", **f),
        ]
        return rows

    def _size(self) -> tuple[int, int]:
        first = self.preset.images[0]
        clean, _ = self.image(first)
        return int(clean.shape[2]), int(clean.shape[3])

    def _latency(self, job: Job) -> list[dict[str, Any]]:
        m, backend = job.method, job.backend
        t = self.method_ticket(m, self.preset.images[0])
        h, w = self._size()
        if h % t.arch.stride or w % t.arch.stride:
            h, w = h - h % t.arch.stride, w - w % t.arch.stride
        f = self._method_fields(m, t)
        from .latency import measure

        res = measure(
            t, backend, h, w, self.preset.latency_warmup, self.preset.latency_repeats, self.out / "onnx", m.name
        )
        rows = []
        for metric, value in res.items():
            if metric.startswith("_"):
                continue
            rows.append(self._row(m, "-", metric, value, "ms", backend=backend, size=f"{w}x{h}", loadavg=_load(), **f))
        if res.get("_note"):
            rows.append(self._row(m, "-", "note", res["_note"], "", backend=backend, **f))
        return rows

    def _memory(self, job: Job) -> list[dict[str, Any]]:
        m = job.method
        t = self.method_ticket(m, self.preset.images[0])
        h, w = self._size()
        f = self._method_fields(m, t)
        path = self.out / "tickets" / "methods" / f"{_slug(m.name)}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        # stored bytes of what a user ships: masks + initial weights (IMP round files also carry the fitted weights)
        t.replace(fitted=None).save(path)
        dense_params = engine.dense_param_count(t)
        rows = [
            self._row(m, "-", "params", f["params"], "count", **f),
            self._row(m, "-", "dense_params", dense_params, "count", **f),
            self._row(m, "-", "nonzeros", t.kept_count, "count", **f),
            self._row(m, "-", "bytes_ticket", path.stat().st_size, "B", **f),
            # Adam keeps exp_avg and exp_avg_sq (fp32) per optimised parameter: a masked dense fit optimises every
            # parameter; a sparse backend only the nonzeros (plus biases and BatchNorm affine).
            self._row(m, "-", "optimizer_state_bytes_dense", 8 * dense_params, "B", **f),
            self._row(m, "-", "optimizer_state_bytes_sparse", 8 * f["params"], "B", **f),
        ]
        from .latency import onnx_sizes

        for fmt, size in (onnx_sizes(t, self.out / "onnx", m.name) if self.preset.onnx_sizes else {}).items():
            rows.append(self._row(m, "-", f"bytes_onnx_{fmt}", size, "B", **f))
        if self.preset.memory_probe:
            for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
                probe = _memprobe(path, h, w, device)
                if device == "cpu":
                    rows.append(
                        self._row(
                            m,
                            "-",
                            "peak_rss_step_bytes",
                            probe["peak_rss_bytes"] - probe["baseline_rss_bytes"],
                            "B",
                            backend="torch-cpu",
                            size=f"{w}x{h}",
                            **f,
                        )
                    )
                    rows.append(
                        self._row(
                            m,
                            "-",
                            "peak_rss_total_bytes",
                            probe["peak_rss_bytes"],
                            "B",
                            backend="torch-cpu",
                            size=f"{w}x{h}",
                            **f,
                        )
                    )
                else:
                    rows.append(
                        self._row(
                            m,
                            "-",
                            "cuda_peak_step_bytes",
                            probe["cuda_peak_bytes"],
                            "B",
                            backend="torch-cuda",
                            size=f"{w}x{h}",
                            **f,
                        )
                    )
        return rows


@contextlib.contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (created if missing) for the block; a no-op where flock is missing."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: one process per results folder
        yield
        return
    with open(folder / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _load() -> float | None:
    """1-minute load average: timings taken while other processes compete for the CPU are flagged by it."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def _memprobe(ticket_path: Path, h: int, w: int, device: str) -> dict[str, int]:
    """Run :mod:`lipdeploy.bench.memprobe` in a fresh interpreter (see its docstring for why)."""
    cmd = [
        sys.executable,
        "-m",
        "lipdeploy.bench.memprobe",
        str(ticket_path),
        str(h),
        str(w),
        "--device",
        device,
        "--threads",
        str(torch.get_num_threads()),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"memprobe failed: {res.stderr.strip().splitlines()[-1:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _progress_bar(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[job]}"),
        console=console,
        disable=not enabled,
        transient=False,
    )

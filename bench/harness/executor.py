"""Executors: who runs a benchmark's jobs. ``serial`` (the default) is :class:`~.bench.Bench`'s own in-process
loop; ``ray`` runs every job as a task on a Ray cluster (or on a local Ray instance started for the run).

Why Ray and not more ``--shard`` processes: the paper's protocol is one to two orders of magnitude more work than the
cpu preset's 6.7 core-hours, and researchers run such sweeps on clusters whose nodes share no file system. So a Ray
task never touches the results folder: the driver ships each job what it reads (the IMP round file of a LIP fit, a
user's ticket file, the round files of an interrupted IMP run to resume), the task runs the job in a private
temporary folder with the ordinary job code (:meth:`Bench.run_job`), and returns the job's rows and every file it
wrote (tickets, curves, ONNX files). The driver alone writes into the results folder: the files atomically first, then
the job's record (:class:`lipdeploy.bench.rows.RowStore`), so a job is finished exactly when it is in a rows file,
as in a serial run, and a resumed run (serial or Ray) skips it.

Dependencies: a fit of a LIP, random or matched-deep-decoder method reads the ticket of a find job (an IMP chain).
The driver submits a job once the finds it needs are recorded (a needed find that is neither done nor planned is
added); a job whose find failed is reported as failed and not run. Faults: a task whose worker process dies is
resubmitted by Ray up to ``max_retries`` times (jobs are deterministic and write nothing outside their temporary
folder, so a retry is safe); a job that raises is reported once, with its key, and the other jobs go on.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lipdeploy.errors import InputError
from lipdeploy.fileio import atomic_write_bytes, atomic_write_text

from ..rows import RowStore
from .bench import Bench, RunStats, job_line, run_environment
from .execution import Executor
from .gan import GanBench, GanPreset
from .jobs import Job
from .runners import LATENCY_RUNNERS

EXECUTORS = ("serial", "ray")

# A job runner: what runs one job inside a worker's Bench (default Bench.run_job). A seam for custom job kinds and for
# fault-injection tests; it must be picklable (Ray ships it to the workers).
JobRunner = Callable[["Bench", Job], None]

# bookkeeping files of a worker's temporary results folder, never shipped back
_INPUT_ROWS = "rows-inputs.jsonl"


class SerialExecutor(Executor):
    """Today's loop: every job in this process, in plan order (:meth:`Bench.run`). Needs nothing beyond the
    harness."""

    name = "serial"
    in_process = True


@dataclass
class RayExecutor(Executor):
    """Every job a Ray task: ``cpus_per_job`` CPUs (the worker's torch threads), one GPU for a job that uses CUDA.

    ``address``: a running cluster (``"auto"``: the one ``ray start`` made on this machine; ``"HOST:PORT"``: its
    head); None starts a local Ray instance with ``local_cpus`` CPUs (None: all) and stops it after the run. When
    Ray is already initialised in this process (a notebook, the tests) that instance is used and left running.
    ``max_retries``: resubmissions of a task whose worker process died (a real exception is not retried).
    """

    address: str | None = None
    cpus_per_job: int = 1
    max_retries: int = 3
    local_cpus: int | None = None
    job_runner: JobRunner | None = None
    name: str = field(default="ray", init=False)

    def run(self, bench: Bench, jobs: list[Job], stats: RunStats) -> None:
        import ray  # optional (the [ray] extra): the serial executor runs without it

        started = False
        if not ray.is_initialized():
            if self.address:
                ray.init(address=self.address)
            else:  # "local": a fresh instance, never a cluster someone else started on this machine
                ray.init(address="local", num_cpus=self.local_cpus, include_dashboard=False)
            started = True
        try:
            self._run(ray, bench, jobs, stats)
        finally:
            if started:
                ray.shutdown()

    def _run(self, ray: Any, bench: Bench, jobs: list[Job], stats: RunStats) -> None:
        done = bench.store.done()
        wanted = {j.key for j in jobs}
        queue = list(jobs)
        # a needed find neither done nor planned (a --jobs filter left it out) runs first, as serial runs it inside
        # the job that needs it; it is recorded but not counted as one of this run's jobs
        for job in jobs:
            for dep in _needs(bench, job):
                if dep not in done and dep not in {j.key for j in queue}:
                    queue.insert(0, _find_job(bench, dep))
        has_gpu = ray.cluster_resources().get("GPU", 0) > 0
        task = ray.remote(run_job_on_worker)
        shipped: dict[Path, Any] = {}  # file -> object ref: each input file is put into the object store once
        running: dict[Any, Job] = {}
        shipped_as: dict[str, tuple[str, str]] = {}  # job key -> (worker's path, user's path) of a user ticket
        failed: dict[str, str] = {}
        seconds: list[float] = []
        finished = 0

        def submit(job: Job) -> None:
            inputs, remap = _inputs(bench, job)
            # a find recorded done whose round file is not here (rows copied without tickets): the worker runs it
            deps = [d for d in _needs(bench, job) if d in done] if inputs else []
            refs = {}
            for rel, path in inputs.items():
                if path not in shipped:
                    shipped[path] = ray.put(path.read_bytes())
                refs[rel] = shipped[path]
            opts = {
                "num_cpus": self.cpus_per_job,
                "num_gpus": 1 if _uses_cuda(job, has_gpu) else 0,
                "max_retries": self.max_retries,
                "retry_exceptions": False,
            }
            ref = task.options(**opts).remote(bench.preset, remap, refs, deps, self.cpus_per_job, self.job_runner)
            running[ref] = job
            shipped_as[job.key] = (remap.method.path, job.method.path) if remap is not job else ("", "")

        while queue or running:
            for job in list(queue):
                deps = _needs(bench, job)
                bad = next((d for d in deps if d in failed), None)
                if bad is not None:
                    queue.remove(job)
                    failed[job.key] = f"its ticket's find {bad} failed"
                    if job.key in wanted:
                        stats.failed.append(f"{job.key}: not run: {failed[job.key]}")
                    bench.log(f"job {job.key} not run: {failed[job.key]}")
                elif all(d in done for d in deps):
                    queue.remove(job)
                    submit(job)
            if not running:  # every queued job waits for a find that is not coming (cannot happen: finds are queued)
                for job in queue:
                    stats.failed.append(f"{job.key}: not run: its ticket's find was not run")
                break
            (ref,), _ = ray.wait(list(running), num_returns=1)
            job = running.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - one failed job must not lose the others' results
                worker_path, user_path = shipped_as.get(job.key, ("", ""))
                reason = _failure(exc, self.max_retries)
                reason = reason.replace(worker_path, user_path) if worker_path else reason
                failed[job.key] = reason
                stats.failed.append(f"{job.key}: {reason}")
                bench.log(f"job {job.key} failed: {reason}")
                continue
            record(bench, job, result)
            done.add(job.key)
            stats.fits += result["fits"]
            if job.key in wanted:
                stats.ran += 1
                finished += 1
                seconds.append(result["seconds"])
                bench.log(job_line(finished, len(jobs), f"{job.key} on {result['env'].get('host', '?')}", seconds))


def make_executor(name: str, address: str | None = None, cpus_per_job: int = 1) -> Executor:
    """The executor called ``name`` (:data:`EXECUTORS`); InputError when Ray is asked for and not installed."""
    if name == "serial":
        return SerialExecutor()
    if name == "ray":
        if importlib.util.find_spec("ray") is None:
            raise InputError(None, "the ray executor needs Ray, which is not installed: pip install 'lipdeploy[ray]'")
        if cpus_per_job < 1:
            raise InputError(None, f"CPUs per job must be >= 1, got {cpus_per_job}")
        return RayExecutor(address=address or None, cpus_per_job=cpus_per_job)
    raise InputError(None, f"unknown executor {name!r} (known: {', '.join(EXECUTORS)})")


# ------------------------------------------------------------------------------------------------ what a job needs


def _needs(bench: Bench, job: Job) -> list[str]:
    """Keys of the find jobs whose tickets ``job`` reads (none for finds, dense and deep-decoder methods)."""
    if isinstance(bench, GanBench):
        return bench.needs(job)
    m = job.method
    if job.kind == "find" or m is None or m.find_kind is None or m.rounds is None:
        return []
    image = m.source or job.image or bench.preset.images[0]
    return [f"find/{image}/{m.find_kind}"]


def _inputs(bench: Bench, job: Job) -> tuple[dict[str, Path], Job]:
    """(files the job reads, by path relative to the results folder; the job as the worker runs it).

    A find gets the round files already in its folder (IMP resumes after the last complete round); a ticket-based
    method the one round file it fits; a user's ticket file is shipped too and the job renamed to read it."""
    if isinstance(bench, GanBench):
        return bench.inputs(job)
    ws = bench.workspace
    files: dict[str, Path] = {}
    if job.kind == "find":
        folder = ws.find_dir(job.image, job.find)
        if folder.is_dir():
            for p in sorted(folder.iterdir()):
                if p.is_file() and not _bookkeeping(p.name):
                    files[p.relative_to(bench.out).as_posix()] = p
        return files, job
    m = job.method
    if m is not None and m.path is not None:
        src = Path(m.path)
        rel = f"inputs/{hashlib.sha1(str(src.resolve()).encode()).hexdigest()[:10]}/{src.name}"
        files[rel] = src
        return files, replace(job, method=replace(m, path=rel))
    if _needs(bench, job):
        image = m.source or job.image or bench.preset.images[0]
        path = ws.ticket_path(image, m.find_kind, m.rounds)
        if path.is_file():
            files[path.relative_to(bench.out).as_posix()] = path
    return files, job


def _find_job(bench: Bench, key: str) -> Job:
    """The find job called ``key`` (``find/<image>/<kind>``, or the gan preset's ``gan-find/<kind>``)."""
    if isinstance(bench, GanBench):
        return bench.find_job(key)
    _, image, kind = key.split("/", 2)
    return Job(key, "find", image=image, find=kind)


def _uses_cuda(job: Job, cluster_has_gpu: bool) -> bool:
    """A latency job on a CUDA runner; a memory job on a cluster with GPUs (it probes the CUDA peak where it can)."""
    if job.kind == "latency":
        spec = LATENCY_RUNNERS.get(job.runner or "")
        return spec is not None and spec.device == "cuda"
    return job.kind == "memory" and cluster_has_gpu


def _bookkeeping(name: str) -> bool:
    """Lock files and temporaries: never shipped either way."""
    return name.endswith(".lock") or name.startswith(".")


class JobError(Exception):
    """A job raised on a worker: ``"<exception type>: <first line>"``. Sent instead of the job's own exception,
    which the driver may be unable to rebuild (an exception class whose constructor takes other arguments)."""


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"


def _failure(exc: BaseException, retries: int) -> str:
    """One line saying why a task failed: the job's own exception, or its worker's death after the retries."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, JobError):
        return str(cause)
    if isinstance(cause, BaseException):
        return _one_line(cause)
    name = type(exc).__name__
    if "WorkerCrashed" in name or "ActorDied" in name or "NodeDied" in name or "ObjectLost" in name:
        return f"{name}: the worker running it died ({retries} retries)"
    return _one_line(exc)


# ------------------------------------------------------------------------------------------------- driver's side


def record(bench: Bench, job: Job, result: dict[str, Any]) -> None:
    """Write a finished task's files into the results folder (atomically, files first), its environment, then its
    rows and record: from the record on, the job is done for every later run."""
    for rel, data in sorted(result["files"].items()):
        target = bench.out / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise ValueError(f"job {job.key} returned a file outside the results folder: {rel}")
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() or target.read_bytes() != data:
            atomic_write_bytes(target, data)
    env = result["env"]
    env_file = bench.out / f"environment-ray-{env['env_id']}.json"
    if not env_file.exists():
        atomic_write_text(env_file, json.dumps(env, indent=2) + "\n")
    bench.store.append(job.key, job.kind, result["rows"], result["seconds"], env["env_id"])


# ------------------------------------------------------------------------------------------------- worker's side


# this worker process's environment, by preset name: measured at its first job (a worker runs many jobs, and one
# environment file per worker process, not per job, lands in the results folder)
_WORKER_ENV: dict[str, dict[str, Any]] = {}


def _worker_environment(preset: Any) -> dict[str, Any]:
    """:func:`run_environment` of this worker process (shard ``ray``), with its own ``env_id``."""
    if preset.name not in _WORKER_ENV:
        env = run_environment(preset, (0, 1))
        env.pop("env_id")
        env["shard"] = "ray"
        env["pid"] = os.getpid()
        env["env_id"] = hashlib.sha1(json.dumps(env, sort_keys=True).encode()).hexdigest()[:10]
        _WORKER_ENV[preset.name] = env
    return dict(_WORKER_ENV[preset.name])


def run_job_on_worker(
    preset: Any,
    job: Job,
    inputs: dict[str, Any],
    deps: list[str],
    threads: int,
    job_runner: JobRunner | None = None,
) -> dict[str, Any]:
    """Run one job in a private temporary results folder and return what the driver records.

    ``inputs``: files (bytes, or object refs of bytes) by path relative to the results folder; ``deps``: find jobs
    whose tickets are among them (recorded as done here, so the job reads them instead of running IMP again).
    Returns ``rows`` (without bookkeeping fields), ``seconds``, ``fits``, ``env`` (this worker's environment) and
    ``files`` (every file the job wrote or changed under a subfolder, by relative path)."""
    # in a Ray worker: the job's imports are paid by the worker that runs it, not by the driver importing this module
    import torch

    from . import engine  # the fitting engine, with torch (above)

    torch.set_num_threads(max(1, threads))
    with tempfile.TemporaryDirectory(prefix="lipdeploy-job-") as tmp:
        out = Path(tmp)
        given: dict[str, bytes] = {}
        for rel, data in inputs.items():
            if not isinstance(data, bytes):
                import ray  # an object ref: only in a Ray worker

                data = ray.get(data)
            path = out / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            given[rel] = data
        if deps:
            recs = [{"type": "job", "job": d, "kind": "find", "seconds": 0.0, "rows": 0} for d in deps]
            (out / _INPUT_ROWS).write_text("".join(json.dumps(r) + "\n" for r in recs))
        if job.method is not None and job.method.path is not None:  # a shipped user ticket: read the worker's copy
            job = replace(job, method=replace(job.method, path=str(out / job.method.path)))
        if isinstance(preset, GanPreset):
            bench: Bench = GanBench(preset, out)
        else:
            bench = Bench(preset, out, runners=[job.runner] if job.runner else [])
        bench.env = env = _worker_environment(preset)
        bench.prepare()
        fits0 = engine.COUNTERS["fits"]
        try:
            (job_runner or type(bench).run_job)(bench, job)
        except Exception as exc:  # noqa: BLE001 - reported by the driver; the exception itself may not unpickle there
            # paths in the message as the driver knows them: relative to the results folder
            raise JobError(_one_line(exc).replace(str(out) + os.sep, "")) from None
        rows, records = RowStore.read_all(out)
        if job.key not in records:
            raise RuntimeError(f"job {job.key} finished without recording its rows")
        mine = [{k: v for k, v in r.items() if k not in ("type", "job", "env")} for r in rows if r["job"] == job.key]
        files = {}
        for path in sorted(out.rglob("*")):
            rel = path.relative_to(out).as_posix()
            if not path.is_file() or len(path.relative_to(out).parts) < 2 or _bookkeeping(path.name):
                continue
            data = path.read_bytes()
            if given.get(rel) != data:
                files[rel] = data
        return {
            "rows": mine,
            "seconds": float(records[job.key]["seconds"]),
            "fits": engine.COUNTERS["fits"] - fits0,
            "env": env,
            "files": files,
            "pid": os.getpid(),
            "finished": time.time(),
        }

"""The bench: run this shard's unfinished jobs into a results folder, record each one, rebuild the report.

A job's rows are appended to ``DIR/rows-<i>-<n>.jsonl`` in one write followed by a ``job`` record and an fsync
(:class:`lipdeploy.bench.rows.RowStore`): a job is finished exactly when its record is in some rows file, so an
interrupted run resumes where it stopped and shards copied into one folder merge.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lipdeploy.environment import environment
from lipdeploy.errors import InputError
from lipdeploy.fileio import atomic_write_text
from lipdeploy.tasks import Task, make_task

from ..report import build_report
from ..rows import RowStore
from . import engine, measure
from .execution import Executor
from .jobs import Job, plan, shard_jobs
from .presets import Preset
from .runners import available_runners
from .workspace import Workspace


def run_environment(preset: Preset, shard: tuple[int, int]) -> dict[str, Any]:
    """Where and with what the numbers were measured; stored per shard and joined into every CSV row by ``env_id``."""
    env = environment()
    # other processes on the machine distort timings: the load when the run started says how much
    env["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    env["preset"] = preset.name
    env["shard"] = f"{shard[0]}/{shard[1]}"
    env["env_id"] = hashlib.sha1(json.dumps(env, sort_keys=True).encode()).hexdigest()[:10]
    return env


@dataclass
class RunStats:
    """What :meth:`Bench.run` did: jobs planned, in this shard, skipped (already done), ran, failed; fits; seconds."""

    planned: int = 0
    in_shard: int = 0
    skipped: int = 0
    ran: int = 0
    failed: list[str] = field(default_factory=list)
    fits: int = 0
    seconds: float = 0.0


class Bench:
    """One benchmark run (or shard of one) into ``out``.

    ``runners``: the latency runners to time (default: every one this machine has, see
    :func:`lipdeploy.bench.harness.runners.available_runners`); ``tickets``: user ticket files compared as methods.
    """

    def __init__(
        self,
        preset: Preset,
        out: str | Path,
        shard: tuple[int, int] = (0, 1),
        tickets: tuple[str, ...] = (),
        runners: list[str] | None = None,
        log: Callable[[str], None] | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.preset = preset
        self.executor = executor  # None or in-process: the loop of run(); else it runs the jobs (.executor)
        self.out = Path(out)
        self.shard = shard
        self.tickets = tuple(tickets)
        self.runners = runners if runners is not None else available_runners()
        self.task: Task = make_task(preset.task)
        self.store = RowStore(self.out, shard)
        self.env = run_environment(preset, shard)
        self.log = log or (lambda msg: None)
        self.workspace = Workspace(preset, self.out, self.task, self.store, self.run_find)

    def prepare(self) -> None:
        """Create the folder layout and write the preset and this shard's environment."""
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
        """Every job of the run (all shards), in plan order."""
        return plan(self.preset, self.tickets, self.runners)

    def run(
        self,
        progress: bool = True,
        only: Callable[[Job], bool] | None = None,
        redo: Callable[[Job], bool] | None = None,
    ) -> RunStats:
        """Run this shard's unfinished jobs, and its finished ones that ``redo`` selects again (their new record
        replaces the old: :meth:`RowStore.read_all`), then rebuild the report from all rows in the folder."""
        t0 = time.perf_counter()
        self.prepare()
        fits0 = engine.COUNTERS["fits"]
        all_jobs = self.jobs()
        mine = shard_jobs(all_jobs, self.shard)
        if only:
            mine = [j for j in mine if only(j)]
        again = {j.key for j in mine if redo and redo(j)}
        done = self.store.done() - again
        todo = [j for j in mine if j.key not in done]
        stats = RunStats(planned=len(all_jobs), in_shard=len(mine), skipped=len(mine) - len(todo))
        if self.executor is not None and not self.executor.in_process:
            self.executor.run(self, todo, stats)  # e.g. Ray tasks; the driver records every finished job
            stats.seconds = time.perf_counter() - t0
            self.report()
            return stats
        bar = _progress_bar(progress)
        # a log that is not a terminal (redirected, CI) gets one line per job with an ETA instead of a live bar
        per_job_lines = not progress or not bar.console.is_terminal
        job_seconds: list[float] = []
        with bar:
            task_id = bar.add_task("bench", total=len(todo), job="")
            for index, job in enumerate(todo):
                bar.update(task_id, job=job.key)
                if job.key not in again and job.key in self.store.done():  # a dependency run may have finished it
                    bar.advance(task_id)
                    stats.skipped += 1
                    continue
                try:
                    tj = time.perf_counter()
                    self.run_job(job)
                    stats.ran += 1
                    job_seconds.append(time.perf_counter() - tj)
                    if per_job_lines:
                        self.log(job_line(index + 1, len(todo), job.key, job_seconds))
                except InputError:
                    raise
                except Exception as exc:  # noqa: BLE001 - one failed job must not lose the others' results
                    stats.failed.append(f"{job.key}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                    self.log(f"job {job.key} failed: {exc}")
                bar.advance(task_id)
        stats.fits = engine.COUNTERS["fits"] - fits0
        stats.seconds = time.perf_counter() - t0
        self.report()
        return stats

    def report(self) -> None:
        """Rebuild the report from every rows file in the folder."""
        build_report(self.out)

    def run_job(self, job: Job) -> None:
        """Run one job and record its rows (find jobs record their own, see :meth:`run_find`)."""
        t0 = time.perf_counter()
        if job.kind == "find":
            self.run_find(job.image, job.find)
            return
        rows_of = _ROWS.get(job.kind)
        if rows_of is None:
            raise ValueError(job.kind)
        rows = rows_of(self.workspace, job)
        self.store.append(job.key, job.kind, rows, time.perf_counter() - t0, self.env["env_id"])

    def run_find(self, image: str, kind: str) -> None:
        """Find the tickets of every needed round for (image, kind) and store them; record the find job's rows.

        Runs as its own job or, when a job of this shard needs a ticket another shard has not delivered, as that
        job's dependency; either way the find job's rows are recorded once (resumable: finished round files are
        kept, and IMP continues after the last one)."""
        t0 = time.perf_counter()
        ws = self.workspace
        # two processes sharing a results folder (shards, or --jobs filters) may need the same tickets: the second
        # waits here, then finds every round file and the find's record done, and only reads them
        with _exclusive(ws.find_dir(image, kind)):
            found = ws.find_tickets(image, kind)  # the kind names pattern, random or not, and task (workspace)
            rows = measure.find_rows(ws, image, kind, found)
            key = f"find/{image}/{kind}"
            if key not in self.store.done():
                self.store.append(key, "find", rows, time.perf_counter() - t0, self.env["env_id"])


# job kind -> what computes its rows (find jobs are special: they record themselves, see Bench.run_find)
_ROWS: dict[str, Callable[[Workspace, Job], list[dict[str, Any]]]] = {
    "quality": measure.quality_rows,
    "transfer": measure.quality_rows,
    "latency": measure.latency_rows,
    "memory": measure.memory_rows,
}


def job_line(done: int, total: int, key: str, seconds: list[float]) -> str:
    """``[3/40] done quality/dense/coffee (12.3 s); ETA 7 min``: the remaining jobs at the mean time per job so far
    (jobs differ in cost, so it is a rough figure; it sharpens as jobs finish)."""
    left = total - done
    eta = sum(seconds) / len(seconds) * left if seconds else 0.0
    when = f"{eta:.0f} s" if eta < 90 else (f"{eta / 60:.0f} min" if eta < 5400 else f"{eta / 3600:.1f} h")
    return f"[{done}/{total}] done {key} ({seconds[-1]:.1f} s)" + (f"; ETA {when}" if left else "")


@contextlib.contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (created if missing) for the block: ``filelock`` works on every OS
    (``fcntl.flock`` only on POSIX)."""
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / ".lock")):
        yield


def _progress_bar(enabled: bool) -> Progress:
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

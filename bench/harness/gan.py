"""The ``gan`` preset of ``lipdeploy bench``: the demo generator, its GAN IMP tickets and random tickets as
compressive-sensing and inpainting priors on faces held out from its training, and the generator's forward latency.

The same harness as the DIP presets (:class:`~.bench.Bench`: resumable rows files, ``--shard i/n``, ``--jobs``,
``--executor ray``), with its own jobs. Keys:

- ``gan-find/imp``, ``gan-find/random``: the GAN IMP chain and the random chain at the same per-round counts
  (``lipdeploy find --generator`` folders under ``tickets/``; they continue after the last complete round);
- ``gan-cs/baseline/<m>-<objective>[-outliers]``: back-projection and least squares of a CS task;
- ``gan-cs/<method>/<m>-<objective>[-outliers]``, ``gan-inpaint/<method>``: one generator's latent fits of every
  held-out face (one batch, each face with its own measurements and restarts), the per-face PSNRs in the row;
- ``gan-latency/<method>/<runner>``: batch-1 forward latency of the compacted module (``torch-cpu``) or its ONNX
  export in ONNX Runtime (``ort-cpu``), with its parameter count and ONNX bytes.

Methods: ``dense`` (the pre-trained generator), ``imp-R`` (round R's ticket, R = 0..rounds; ``imp-0`` is the dense
generator after one round of retraining), ``imp-init-R`` (round R's mask on the pre-trained weights, not retrained),
``random-R``. A fit of a ticket reads its chain: run as its own job or, in a shard that lacks it, as that job's
dependency (locked, so two shards never find the same chain twice). The report is
:mod:`lipdeploy.bench.cpu.gan_report` (means with 95% intervals over the faces, paired differences).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from lipdeploy.errors import InputError
from lipdeploy.fileio import atomic_write_text

from ..rows import RowStore
from .bench import Bench, run_environment
from .execution import Executor
from .jobs import Job


@dataclass(frozen=True)
class GanTask:
    """One restoration setting: CS (``measurements`` rows, ``outliers`` of them corrupted, ``objective``) or
    inpainting (``drop`` of the pixels missing)."""

    name: str
    measurements: int = 0
    outliers: int = 0
    objective: str = "ls"
    drop: float = 0.0


TASKS = (
    GanTask("cs-200-ls", 200),
    GanTask("cs-100-ls", 100),
    GanTask("inpaint-50", drop=0.5),
    GanTask("cs-200-mom", 200, objective="mom"),
    GanTask("cs-200-ls-outliers", 200, outliers=4),
    GanTask("cs-200-mom-outliers", 200, outliers=4, objective="mom"),
)
PAPER_TASKS = (
    GanTask("cs-1000-mom-outliers", 1000, outliers=20, objective="mom"),
    GanTask("cs-1000-ls-outliers", 1000, outliers=20),
    GanTask("cs-1000-ls", 1000),
    GanTask("inpaint-50", drop=0.5),
)
# The objective comparisons (mom, outliers) run on these methods only: median of means costs two latents per face,
# and the shared 2-core machine measured ~0.1 s per step of a 20-face batch.
OBJECTIVE_METHODS = ("dense", "imp-1", "imp-3", "imp-5", "imp-7", "random-3", "random-7")
# IMP's masks on the pre-trained weights without retraining: whether a loss comes from pruning or from the WGAN-GP
# retraining of a generator that was not trained adversarially; measured on these tasks.
INIT_TASKS = ("cs-200-ls", "cs-100-ls", "inpaint-50")
LATENCY_METHODS = ("dense", "imp-3", "imp-7", "random-7")
RUNNERS = ("torch-cpu", "ort-cpu")


@dataclass(frozen=True)
class GanPreset:
    """All settings of a ``gan`` run (printed in the report's environment; every row carries the fit settings).

    ``objective_methods`` / ``init_tasks``: None = every method on every task (the paper's protocol)."""

    name: str
    description: str
    epochs: int = 20  # WGAN-GP epochs per GAN IMP round
    iters: int = 200  # Adam steps of each latent fit
    rounds: int = 7  # sparsity 20 / 36 / 49 / 59 / 67 / 74 / 79%
    lr: float = 0.05
    restarts: int = 2
    eval_images: int = 20
    train_images: int | None = None  # None: every training image
    repeats: int = 50  # timed forward passes per latency
    generator: str | None = None  # None: the demo generator
    train_data: str = "skimage:lfw_faces:train"
    eval_data: str = "skimage:lfw_faces:test"
    device: str = "cpu"
    tasks: tuple[GanTask, ...] = TASKS
    objective_methods: tuple[str, ...] | None = OBJECTIVE_METHODS
    init_tasks: tuple[str, ...] | None = INIT_TASKS
    latency_methods: tuple[str, ...] = LATENCY_METHODS
    seed: int = 0

    def replace(self, **changes: Any) -> GanPreset:
        """A copy with some settings changed (the name gets a ``+custom`` suffix unless given)."""
        if "name" not in changes and changes:
            changes["name"] = self.name if self.name.endswith("+custom") else f"{self.name}+custom"
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def methods(self) -> list[str]:
        """Every compared generator, in report order."""
        r = range(1, self.rounds + 1)
        return ["dense", "imp-0", *(f"imp-{i}" for i in r), *(f"imp-init-{i}" for i in r), *(f"random-{i}" for i in r)]

    def measured(self, method: str, task: GanTask) -> bool:
        if self.objective_methods is not None and (task.objective == "mom" or task.outliers):
            if method not in self.objective_methods:
                return False
        return not (method.startswith("imp-init-") and self.init_tasks is not None and task.name not in self.init_tasks)


GAN_PRESETS: dict[str, GanPreset] = {
    "gan": GanPreset("gan", "the demo generator's tickets as CS / inpainting priors on 20 held-out LFW faces"),
    # the paper's protocol on a checkpoint and image folders of one's own (generator, train_data, eval_data)
    "gan-paper": GanPreset(
        "gan-paper",
        "the paper's protocol: 30 WGAN-GP epochs per round, 1500-step latent fits (GPU)",
        epochs=30,
        iters=1500,
        lr=0.01,
        restarts=1,
        repeats=5,
        tasks=PAPER_TASKS,
        objective_methods=None,
        init_tasks=None,
        device="cuda",
    ),  # fmt: skip
}


def task_key(task: GanTask, method: str) -> str:
    """``gan-cs/<method>/200-ls-outliers`` or ``gan-inpaint/<method>``."""
    if task.drop:
        return f"gan-inpaint/{method}"
    return f"gan-cs/{method}/{task.measurements}-{task.objective}" + ("-outliers" if task.outliers else "")


def gan_plan(preset: GanPreset) -> list[Job]:
    """The ordered job list: the chains first, then per task the baselines and every method's fit, then latency."""
    jobs = [Job("gan-find/imp", "gan-find", find="imp"), Job("gan-find/random", "gan-find", find="random")]
    for task in preset.tasks:
        if task.measurements:
            jobs.append(Job(task_key(task, "baseline"), "gan-baseline", image=task.name))
        for m in preset.methods():
            if preset.measured(m, task):
                jobs.append(Job(task_key(task, m), "gan-quality", image=task.name, find=m))
    for m in preset.latency_methods:
        if m in preset.methods():
            jobs += [Job(f"gan-latency/{m}/{r}", "gan-latency", runner=r, find=m) for r in RUNNERS]
    return jobs


def chain_of(method: str) -> str | None:
    """The find kind a method's ticket comes from (None for the dense generator)."""
    if method == "dense":
        return None
    return "random" if method.startswith("random-") else "imp"


class GanBench(Bench):
    """A ``gan`` run (or shard of one) into ``out``: :class:`Bench`'s loop, rows files and executors, these jobs."""

    def __init__(
        self,
        preset: GanPreset,
        out: str | Path,
        shard: tuple[int, int] = (0, 1),
        tickets: tuple[str, ...] = (),
        runners: list[str] | None = None,
        log: Callable[[str], None] | None = None,
        executor: Executor | None = None,
    ) -> None:
        """:class:`Bench`'s signature (an executor's worker builds either); ``tickets`` and ``runners`` (the DIP
        presets' user tickets and latency runners) have no meaning here and must be empty."""
        if tickets or runners:
            raise InputError(None, "the gan preset takes no --ticket and no latency runners")
        self.preset = preset  # type: ignore[assignment]
        self.executor = executor
        self.out = Path(out)
        self.shard = shard
        self.tickets = ()
        self.runners = []
        self.store = RowStore(self.out, shard)
        self.env = run_environment(preset, shard)  # type: ignore[arg-type]
        self.log = log or (lambda msg: None)
        self.cache: dict[str, Any] = {}

    def prepare(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        if not (self.out / ".gitignore").exists():
            atomic_write_text(self.out / ".gitignore", "tickets/\n")  # rebuildable chains: out of git
        atomic_write_text(self.out / "preset.json", json.dumps(self.preset.to_dict(), indent=2) + "\n")
        atomic_write_text(self.out / "environment.json", json.dumps(self.env, indent=2) + "\n")

    def jobs(self) -> list[Job]:
        return gan_plan(self.preset)

    def report(self) -> None:
        from lipdeploy.bench.cpu.gan_report import write_report  # with matplotlib: only once the jobs have run

        write_report(self.out, RowStore.read_all(self.out)[0])

    def run_job(self, job: Job) -> None:
        from . import gan_measure  # torch-heavy job code, loaded once a job runs

        t0 = time.perf_counter()
        if job.kind == "gan-find":
            self.run_chain(job.find)
            return
        if job.kind == "gan-baseline":
            rows = gan_measure.baseline_rows(self, _task(self.preset, job.image))
        elif job.kind == "gan-quality":
            rows = [gan_measure.quality_row(self, job.find, _task(self.preset, job.image))]
        elif job.kind == "gan-latency":
            rows = [gan_measure.latency_row(self, job.find, job.runner)]
        else:
            raise ValueError(job.kind)
        self.store.append(job.key, job.kind, rows, time.perf_counter() - t0, self.env["env_id"])

    def run_chain(self, kind: str) -> list[Path]:
        """The round tickets of chain ``kind`` (found, or continued, if missing); records ``gan-find/<kind>``."""
        from . import gan_measure  # torch-heavy job code, loaded once a job runs (as in run_job)

        if kind in self.cache:
            return self.cache[kind]
        t0 = time.perf_counter()
        folder = self.chain_dir(kind)
        folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder / ".lock")):  # two shards needing one chain: the second waits, then reads it
            paths = gan_measure.find_chain(self, kind, folder)
            key = f"gan-find/{kind}"
            if key not in self.store.done():
                rows = [{"metric": "rounds", "method": kind, "value": len(paths) - 1}]
                self.store.append(key, "gan-find", rows, time.perf_counter() - t0, self.env["env_id"])
        self.cache[kind] = paths
        return paths

    def chain_dir(self, kind: str) -> Path:
        return self.out / "tickets" / kind

    # what an executor ships (lipdeploy.bench.harness.executor): a job's chain, found first by its own job

    def needs(self, job: Job) -> list[str]:
        """Keys of the find jobs whose tickets ``job`` reads."""
        chain = chain_of(job.find) if job.kind in ("gan-quality", "gan-latency") else None
        return [f"gan-find/{chain}"] if chain else []

    def find_job(self, key: str) -> Job:
        """The find job called ``key`` (``gan-find/<kind>``)."""
        kind = key.split("/", 1)[1]
        return Job(key, "gan-find", find=kind)

    def inputs(self, job: Job) -> tuple[dict[str, Path], Job]:
        """(files the job reads, by path relative to the results folder; the job unchanged): its chain's folder (a
        find: what is there, to resume; a fit: the round files and the discriminators that mark them complete)."""
        kinds = [job.find] if job.kind == "gan-find" else [k.split("/", 1)[1] for k in self.needs(job)]
        files: dict[str, Path] = {}
        for kind in kinds:
            folder = self.chain_dir(kind)
            if folder.is_dir():
                for p in sorted(folder.iterdir()):
                    if p.is_file() and not (p.name.endswith(".lock") or p.name.startswith(".")):
                        files[p.relative_to(self.out).as_posix()] = p
        return files, job


def _task(preset: GanPreset, name: str | None) -> GanTask:
    for t in preset.tasks:
        if t.name == name:
            return t
    raise InputError(None, f"no task {name!r} in the {preset.name} preset")

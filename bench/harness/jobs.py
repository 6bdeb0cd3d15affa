"""The plan: which methods a preset compares, and the ordered list of jobs that measure them.

Jobs have stable keys (``find/astronaut/unstructured``, ``quality/lip-unstructured-89/astronaut``,
``latency/dense/torch-cpu``, ``memory/dd-k64`` ...) and a fixed order, so ``shard_jobs(jobs, (i, n))`` (jobs whose
index % n == i) splits the same plan the same way on every machine.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from lipdeploy.errors import InputError

from ..rows import slug
from .presets import FIND_KINDS, Preset, pct, round_sparsity
from .runners import LATENCY_RUNNERS, available_runners


@dataclass(frozen=True)
class Method:
    """One compared network. ``rounds`` is the IMP round of ticket-based methods; ``source`` the find image of a
    transferred ticket; ``path`` a user-given ticket file. ``find``: the find kind of its ticket chain (a key of
    :data:`~.presets.FIND_KINDS`; None = derived from the family, as the first presets did); ``task``: the task it is
    fitted on (None = the preset's); ``source_task``: the task its ticket was found on (None = ``task``); ``match``:
    the find kind whose ticket a size-matched dense network (``dd-matched``, ``dip-narrow``) copies its size from."""

    name: str
    family: str
    granularity: str | None = None
    rounds: int | None = None
    dd_k: int | None = None
    source: str | None = None
    path: str | None = None
    find: str | None = None
    task: str | None = None
    source_task: str | None = None
    match: str | None = None

    @property
    def sparsity_nominal(self) -> float | None:
        return round_sparsity(self.rounds) if self.rounds else None

    @property
    def base_name(self) -> str:
        """The name without its ``@task`` suffix (multi-task presets): the same method across tasks."""
        return self.name.split("@", 1)[0]

    @property
    def find_kind(self) -> str | None:
        """Which find (granularity or 'random') produces this method's ticket."""
        if self.find:
            return self.find
        if self.family in ("lip", "lip-kernel", "lip-channel", "dd-matched", "transfer"):
            return self.granularity or "unstructured"
        if self.family == "random":
            return "random"
        return None


@dataclass(frozen=True)
class Job:
    """One resumable unit of work; ``key`` names it in the rows files."""

    key: str
    kind: str  # find | quality | transfer | latency | memory
    method: Method | None = None
    image: str | None = None
    runner: str | None = None  # latency runner (lipdeploy.bench.harness.runners)
    find: str | None = None  # find kind for find jobs (FIND_KINDS key, with "@task" in multi-task presets)
    seed: int | None = None  # fit seed of a quality / transfer job (None = the preset's ``seed``)

    def fit_seed(self, preset: Preset) -> int:
        """The seed this job's fit runs with."""
        return preset.seed if self.seed is None else self.seed


def task_kind(kind: str, task: str | None, preset: Preset) -> str:
    """The find kind of a chain found on ``task``: ``kind`` itself in a one-task preset (so the cpu preset's keys and
    folders stay as they were), ``kind@task`` otherwise."""
    return f"{kind}@{task or preset.task}" if preset.multi_task else kind


def split_kind(kind: str) -> tuple[str, str | None]:
    """``"unstructured@sr"`` -> ``("unstructured", "sr")``; a kind without a task -> ``(kind, None)``."""
    base, _, task = kind.partition("@")
    return base, (task or None)


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
    ms += frontier_methods(preset)
    for t in tickets:
        ms.append(Method(f"ticket-{slug(Path(t).stem)}", "ticket", path=str(t)))
    if preset.multi_task:
        ms = [
            dataclasses.replace(m, name=f"{m.name}@{task}", task=task) for task in preset.task_list for m in ms
        ] + transfer_methods(preset)
    return ms


def frontier_methods(preset: Preset) -> list[Method]:
    """The structured frontier: per find kind of ``preset.frontier`` and ``frontier_random``, a method per
    round of ``frontier_rounds`` (``lip-block-89``, ``lip-channel-norm-95``, ``random-block-83``), and per channel
    kind a dense narrow DIP with the ticket's parameter count (``dip-narrow-89``)."""
    ms: list[Method] = []
    channel_kinds = [k for k in preset.frontier if FIND_KINDS[k] == ("channel", False)]
    for r in preset.frontier_rounds:
        p = pct(round_sparsity(r))
        for k in preset.frontier:
            ms.append(Method(f"lip-{k}-{p}", f"lip-{k}", FIND_KINDS[k][0], r, find=k))
        for k in preset.frontier_random:
            ms.append(Method(f"{k}-{p}", k, FIND_KINDS[k][0], r, find=k))
        if preset.narrow_dip and channel_kinds:
            ms.append(Method(f"dip-narrow-{p}", "dip-narrow", None, r, match=channel_kinds[0]))
    return ms


def transfer_methods(preset: Preset) -> list[Method]:
    """Tickets fitted where they were not found (multi-task presets): on another task of the same image
    (``xtask-89-from-denoise@sr``), on another image of the same task (``transfer-89-from-coffee@sr``), and the
    multi-image ticket on held-out images (``multi-89-from-chelsea+camera@denoise``)."""
    rounds = preset.transfer_rounds or (max(preset.rounds),)
    ms: list[Method] = []
    for r in rounds:
        p = pct(round_sparsity(r))
        for a, b in preset.transfer_tasks:
            ms.append(Method(f"xtask-{p}-from-{a}@{b}", "transfer-task", "unstructured", r, find="unstructured",
                             task=b, source_task=a))  # fmt: skip
        if preset.transfer_images:
            for task in preset.task_list:
                for src in preset.images:
                    ms.append(Method(f"transfer-{p}-from-{src}@{task}", "transfer", "unstructured", r, source=src,
                                     task=task))  # fmt: skip
        if preset.multi_image:
            src, task = "+".join(preset.multi_image), preset.task_list[0]
            ms.append(Method(f"multi-{p}-from-{src}@{task}", "transfer-multi", "unstructured", r, source=src,
                             find="unstructured", task=task))  # fmt: skip
    return ms


def _sparse_only(runner: str) -> bool:
    spec = LATENCY_RUNNERS.get(runner)
    return spec is not None and spec.sparse_only


def plan(preset: Preset, tickets: tuple[str, ...] = (), runners: list[str] | None = None) -> list[Job]:
    """The full, ordered job list: :func:`base_plan` with every fit repeated per seed of the preset (each replica
    right after its job, keyed ``<job>/seed<s>``; the preset's own seed keeps the key without it, so folders
    measured before seeds existed resume), kept to the preset's ``keep_jobs`` globs in their order."""
    jobs = with_seeds(preset, base_plan(preset, tickets, runners))
    if not preset.keep_jobs:
        return jobs
    kept: list[Job] = []
    seen: set[str] = set()
    for pattern in preset.keep_jobs:
        for job in jobs:
            if job.key not in seen and fnmatchcase(job.key, pattern):
                kept.append(job)
                seen.add(job.key)
    return kept


def seed_key(key: str, seed: int, preset: Preset) -> str:
    """The key of ``key``'s fit with ``seed``: unchanged for the preset's own seed, else ``<key>/seed<seed>``."""
    return key if seed == preset.seed else f"{key}/seed{seed}"


def with_seeds(preset: Preset, jobs: list[Job]) -> list[Job]:
    """Every quality and transfer job followed by its replicas with the preset's other seeds."""
    out: list[Job] = []
    for job in jobs:
        if job.kind not in ("quality", "transfer"):
            out.append(job)
            continue
        out += [dataclasses.replace(job, key=seed_key(job.key, s, preset), seed=s) for s in preset.seed_list]
    return out


def base_plan(preset: Preset, tickets: tuple[str, ...] = (), runners: list[str] | None = None) -> list[Job]:
    """The ordered job list of one seed. Order = priority for a run that may be cut short: the first image's core
    comparison (dense and deep decoders first, as they need no ticket; then its IMP, LIP, random, matched deep
    decoders) and the latency/memory jobs come first, then the other images, transfer, structured tickets, user
    tickets."""
    runners = runners if runners is not None else available_runners()
    if preset.multi_task:
        return _plan_tasks(preset, tickets, runners)
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
            for b in runners:
                if _sparse_only(b) and m.family in ("dense", "dd", "dip-narrow"):
                    continue  # nothing sparse to run
                jobs.append(Job(f"latency/{m.name}/{b}", "latency", m, runner=b))

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
    front = frontier_methods(preset)
    if front:
        # the frontier after every earlier job (their keys and order stay), image by image: the first image's chains
        # and fits first, its latency and memory with them, so a partial run already draws the whole frontier once
        wanted = preset.frontier_images
        fimgs = [i for i in preset.images if wanted is None or i in wanted] or [first]
        for i, img in enumerate(fimgs):
            finds(img, [*preset.frontier, *preset.frontier_random])
            quality(front, img)
            if i == 0:
                lat_mem(front)
    for img in preset.images:
        quality(given, img)
    lat_mem(given)
    keys = [j.key for j in jobs]
    assert len(keys) == len(set(keys)), "job keys must be unique"
    return jobs


def _plan_tasks(preset: Preset, tickets: tuple[str, ...], runners: list[str]) -> list[Job]:
    """The plan of a multi-task preset: per image (the first image first, so a partial run has every task's curve on
    it), per task, the ticket-free fits, the LIP and random chains, then their fits, then the structured frontier's
    chains and fits (if the preset has one); latency and memory of the first
    task's methods (if the preset asks for any); then tickets moved across tasks, across images, and the
    multi-image ticket on held-out images."""
    methods = methods_for(preset, tickets)
    jobs: list[Job] = []
    first_task = preset.task_list[0]
    frontier_families = {m.family for m in frontier_methods(preset)}

    def add(job: Job) -> None:
        jobs.append(job)

    for img in preset.images:
        for task in preset.task_list:
            own = [m for m in methods if m.task == task and m.family in ("dense", "dd", "lip", "random", "dd-matched")]
            for m in own:
                if m.family in ("dense", "dd"):
                    add(Job(f"quality/{m.name}/{img}", "quality", m, img))
            for kind in ("unstructured", "random"):
                k = task_kind(kind, task, preset)
                add(Job(f"find/{img}/{k}", "find", image=img, find=k))
            for m in own:
                if m.family not in ("dense", "dd"):
                    add(Job(f"quality/{m.name}/{img}", "quality", m, img))
            front = [m for m in methods if m.task == task and m.family in frontier_families]
            if front and (preset.frontier_images is None or img in preset.frontier_images):
                for kind in (*preset.frontier, *preset.frontier_random):
                    k = task_kind(kind, task, preset)
                    add(Job(f"find/{img}/{k}", "find", image=img, find=k))
                for m in front:
                    add(Job(f"quality/{m.name}/{img}", "quality", m, img))
    for m in methods:
        if m.task != first_task or (preset.latency_methods is not None and m.name not in preset.latency_methods):
            continue
        if m.family in ("dense", "dd", "lip", "random", "dd-matched"):
            add(Job(f"memory/{m.name}", "memory", m))
            for b in runners:
                if not (_sparse_only(b) and m.family in ("dense", "dd")):
                    add(Job(f"latency/{m.name}/{b}", "latency", m, runner=b))
    for m in methods:
        if m.family == "transfer-task":
            for img in preset.images:
                add(Job(f"transfer/{m.name}/{img}", "transfer", m, img))
        elif m.family == "transfer":
            for img in preset.images:
                if img != m.source:
                    add(Job(f"transfer/{m.name}/{img}", "transfer", m, img))
    multi = [m for m in methods if m.family == "transfer-multi"]
    if multi:
        src = multi[0].source
        k = task_kind("unstructured", multi[0].task, preset)
        add(Job(f"find/{src}/{k}", "find", image=src, find=k))
        for m in multi:
            for img in preset.images:
                if img not in preset.multi_image:
                    add(Job(f"transfer/{m.name}/{img}", "transfer", m, img))
    given = [m for m in methods if m.family == "ticket"]
    for img in preset.images:
        for m in given:
            add(Job(f"quality/{m.name}/{img}", "quality", m, img))
    keys = [j.key for j in jobs]
    assert len(keys) == len(set(keys)), "job keys must be unique"
    return jobs


def shard_jobs(jobs: list[Job], shard: tuple[int, int]) -> list[Job]:
    """Shard ``i`` of ``n``: the jobs whose index in the plan is ``i`` modulo ``n``."""
    i, n = shard
    return [j for idx, j in enumerate(jobs) if idx % n == i]


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise InputError(None, f"--shard must be i/n with 0 <= i < n, got {text!r}")
    return int(m.group(1)), int(m.group(2))

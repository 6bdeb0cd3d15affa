"""What the jobs of one results folder measure: the images and every method's network, made or loaded once.

Tickets a job needs are files under ``DIR/tickets``; when one is missing, :meth:`Workspace.found_ticket` runs its
find through the callback of :class:`~.bench.Bench`, in the same shard (deterministic, seeded: any shard that
computes it computes the same ticket), so shards never wait on each other.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path

import torch

from lipdeploy.errors import InputError
from lipdeploy.images import crop_to_multiple, standard_image
from lipdeploy.networks import SkipSpec
from lipdeploy.tasks import Observation, Task, make_task
from lipdeploy.ticket import Ticket, load_ticket

from ..rows import RowStore, slug
from . import engine
from .jobs import Method, plan, split_kind, task_kind
from .presets import FIND_KINDS, Preset


class Workspace:
    """Images, tickets and their paths in the results folder ``out``, cached for the process.

    ``find(image, kind)`` is called when a ticket of the find ``kind`` (granularity or "random") on ``image`` is
    missing or its find job has no record in ``store``; it must leave every round file in :meth:`find_dir`.
    """

    def __init__(
        self, preset: Preset, out: Path, task: Task, store: RowStore, find: Callable[[str, str], None]
    ) -> None:
        self.preset = preset
        self.out = out
        self.task = task
        self.store = store
        self._find = find
        self._images: dict[tuple[str, str], tuple[torch.Tensor, Observation]] = {}
        self._tickets: dict[tuple[str, str, int], Ticket] = {}
        self._dense: dict[int, Ticket] = {}
        self._tasks: dict[str, Task] = {task.name: task}
        self._narrow: dict[tuple[int, int], Ticket] = {}

    def task_of(self, name: str | None) -> Task:
        """The task called ``name`` (None = the run's task), made once."""
        if name is None:
            return self.task
        if name not in self._tasks:
            self._tasks[name] = make_task(name)
        return self._tasks[name]

    def image(self, name: str, task: str | None = None) -> tuple[torch.Tensor, Observation]:
        """(clean crop, seeded observation under ``task``, default the run's) of a scikit-image photograph. The
        observation's seed depends on the image only, so every method of a task sees the same noise / pixel mask."""
        tk = self.task_of(task)
        if (name, tk.name) not in self._images:
            img = standard_image(name)
            c = self.preset.crop
            if c:
                h, w = img.shape[2:]
                if h < c or w < c:
                    raise InputError(None, f"image {name} is smaller than the {c}x{c} crop")
                t, left = (h - c) // 2, (w - c) // 2
                img = img[:, :, t : t + c, left : left + c].contiguous()
            else:
                img, _ = crop_to_multiple(img, tk.clean_multiple(self.preset.net.stride))
            obs = tk.degrade(img, torch.Generator().manual_seed(self.image_seed(name)))
            self._images[(name, tk.name)] = (img, obs)
        return self._images[(name, tk.name)]

    def image_seed(self, name: str) -> int:
        """Seed of an image's simulated observation (the same in quality fits and in IMP)."""
        return self.preset.seed + int(hashlib.sha1(name.encode()).hexdigest()[:6], 16)

    def size(self) -> tuple[int, int]:
        """(height, width) of the first image's crop: the size latency and memory are measured at."""
        clean, _ = self.image(self.preset.images[0])
        return int(clean.shape[2]), int(clean.shape[3])

    def dense(self, seed: int | None = None) -> Ticket:
        """The preset's network initialised with ``seed`` (None = the preset's, the one IMP rewinds to), all weights
        kept."""
        seed = self.preset.seed if seed is None else seed
        if seed not in self._dense:
            self._dense[seed] = engine.dense_ticket(self.preset.net, seed, method="dense")
        return self._dense[seed]

    def find_dir(self, image: str, kind: str) -> Path:
        """Folder of the round files of find ``kind`` on ``image``."""
        return self.out / "tickets" / slug(image) / slug(kind)

    def ticket_path(self, image: str, kind: str, r: int) -> Path:
        return self.find_dir(image, kind) / f"round_{r:02d}.pt"

    def max_rounds(self, kind: str) -> int:
        """IMP rounds a find of ``kind`` runs: the most any planned fit needs (a preset with ``keep_jobs`` plans
        fewer fits, so its chains stop where its last kept ticket is)."""
        need = [0]
        for job in plan(self.preset, runners=[]):
            m = job.method
            if m is None or m.rounds is None or job.kind not in ("quality", "transfer", "latency", "memory"):
                continue
            if m.family in ("dd-matched", "dip-narrow"):
                used = task_kind(m.match or ("channel" if m.family == "dip-narrow" else "unstructured"), m.task,
                                 self.preset)  # fmt: skip
            elif m.find_kind is not None:
                used = task_kind(m.find_kind, m.source_task or m.task, self.preset)
            else:
                continue
            if used == kind:
                need.append(m.rounds)
        if max(need) == 0:
            raise ValueError(f"the preset has no method needing {kind!r} tickets")
        return max(need)

    def find_tickets(self, image: str, kind: str) -> engine.FoundTickets:
        """Run (or resume) the find ``kind`` on ``image`` into :meth:`find_dir`. ``kind`` names the pattern and
        whether pruning is random (:data:`~.presets.FIND_KINDS`) and, after ``@``, the task; ``image`` may join
        several images with ``+`` (one multi-image ticket, when the engine offers multi-image IMP)."""
        base, task_name = split_kind(kind)
        if base not in FIND_KINDS:
            raise ValueError(f"unknown find kind {base!r} ({', '.join(FIND_KINDS)})")
        granularity, random = FIND_KINDS[base]
        task = self.task_of(task_name)
        p = self.preset
        names = image.split("+")
        if len(names) > 1:
            return self._find_multi(names, kind, granularity, random, task)
        clean, _ = self.image(image, task.name)
        return engine.find_tickets(
            self.dense(),
            clean,
            task,
            self.find_dir(image, kind),
            self.max_rounds(kind),
            granularity,
            random,
            p.imp_iters,
            p.lr,
            p.seed,
            p.log_every,
            image,
            self.image_seed(image),
        )

    def _find_multi(
        self, names: list[str], kind: str, granularity: str, random: bool, task: Task
    ) -> engine.FoundTickets:
        """One ticket found on several images at once: the paper's multi-image IMP, which
        :func:`lipdeploy.imp.find_ticket` runs when given a list of images of one size (the preset's crops are):
        one network and one noise input fit them all, the loss summing the per-image MSEs. Image i's observation
        is simulated with the first image's seed + i (the engine's rule)."""
        p = self.preset
        cleans = [self.image(n, task.name)[0] for n in names]
        return engine.find_tickets(
            self.dense(),
            cleans,  # type: ignore[arg-type]  # the engine forwards a list to imp.find_ticket's multi-image IMP
            task,
            self.find_dir("+".join(names), kind),
            self.max_rounds(kind),
            granularity,
            random,
            p.imp_iters,
            p.lr,
            p.seed,
            p.log_every,
            names,  # type: ignore[arg-type]
            self.image_seed(names[0]),
        )

    def found_ticket(self, image: str, kind: str, r: int) -> Ticket:
        """The ticket of IMP round ``r`` (``kind`` = granularity or 'random') found on ``image`` (found if missing)."""
        key = (image, kind, r)
        if key not in self._tickets:
            path = self.ticket_path(image, kind, r)
            if not path.exists() or f"find/{image}/{kind}" not in self.store.done():
                self._find(image, kind)
            self._tickets[key] = load_ticket(path)
        return self._tickets[key]

    def narrow_dip(self, params: int, seed: int | None = None) -> Ticket:
        """The preset's DIP with every level's width reduced uniformly (skip channels kept) to the parameter count
        closest to ``params``: the dense baseline a channel ticket must beat (a channel ticket compacts to a narrower
        dense network; if a plain narrow one is as good, the search bought nothing)."""
        width = matched_width(self.preset.net, params)
        seed = self.preset.seed if seed is None else seed
        if (width, seed) not in self._narrow:
            net = self.preset.net
            arch = dataclasses.replace(
                net, channels_down=(width,) * len(net.channels_down), channels_up=(width,) * len(net.channels_up)
            )
            self._narrow[(width, seed)] = engine.dense_ticket(arch, seed, method="dip-narrow")
        return self._narrow[(width, seed)]

    def method_ticket(self, m: Method, image: str, seed: int | None = None) -> Ticket:
        """The network of method ``m`` as a ticket (initial weights; masks) for a fit on ``image``. ``seed`` (None =
        the preset's) initialises the networks that have no ticket (dense DIP, deep decoders, narrow DIPs); a ticket
        keeps the initial weights it was found from."""
        seed = self.preset.seed if seed is None else seed
        if m.family == "dense":
            return self.dense(seed)
        if m.family == "dd":
            return engine.dd_ticket(m.dd_k, self.preset.dd_depth, seed)
        if m.family == "dd-matched":
            kind = task_kind(m.match or "unstructured", m.task, self.preset)
            k = engine.matched_dd_k(engine.param_count(self.found_ticket(image, kind, m.rounds)))
            return engine.dd_ticket(k, self.preset.dd_depth, seed)
        if m.family == "dip-narrow":
            kind = task_kind(m.match or "channel", m.task, self.preset)
            return self.narrow_dip(engine.param_count(self.found_ticket(image, kind, m.rounds)), seed)
        if m.family == "ticket":
            return load_ticket(m.path)
        src = m.source or image
        return self.found_ticket(src, task_kind(m.find_kind, m.source_task or m.task, self.preset), m.rounds)


def skip_params(net: SkipSpec) -> int:
    """Parameters of a DIP skip network (conv weights and biases, BatchNorm affine), counted without building it."""
    total, d = 0, net.in_channels
    bias = 1 if net.bias else 0
    levels = len(net.channels_down)
    for i in range(levels):
        down, up, skip = net.channels_down[i], net.channels_up[i], net.channels_skip[i]
        k_d, k_u, k_s = net.filter_size_down, net.filter_size_up, net.filter_skip_size
        deeper_out = net.channels_up[i + 1] if i + 1 < levels else down
        if skip:
            total += skip * d * k_s * k_s + bias * skip + 2 * skip
        total += down * d * k_d * k_d + bias * down + 2 * down  # stride-2 conv
        total += down * down * k_d * k_d + bias * down + 2 * down
        cat = skip + deeper_out
        total += 2 * cat  # BN of the concatenation
        total += up * cat * k_u * k_u + bias * up + 2 * up
        if net.need1x1_up:
            total += up * up + bias * up + 2 * up
        d = down
    total += net.out_channels * net.channels_up[0] + bias * net.out_channels
    return total


def matched_width(net: SkipSpec, params: int) -> int:
    """The uniform width whose narrowed ``net`` has the parameter count closest to ``params``."""

    def count(w: int) -> int:
        levels = len(net.channels_down)
        return skip_params(dataclasses.replace(net, channels_down=(w,) * levels, channels_up=(w,) * levels))

    lo, hi = 1, max(max(net.channels_down), max(net.channels_up))
    while lo < hi:  # smallest width with at least ``params``
        mid = (lo + hi) // 2
        if count(mid) < params:
            lo = mid + 1
        else:
            hi = mid
    return min({max(1, lo - 1), lo}, key=lambda w: (abs(count(w) - params), w))

"""Which deep image prior to fit: a ticket file, or a dense network (the DIP skip net or the deep decoder).

``restore``, ``find`` and the API describe a prior the same way, with a :class:`PriorSpec`, and turn it into a
:class:`~lipdeploy.ticket.Ticket` here, so a dense network and a ticket go through one fitting engine (a dense network
is a ticket whose masks are all ones). Messages name the :class:`PriorSpec` fields; a caller that shows the fields
under other names (the CLI shows its flags) passes ``names`` and the messages use those instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import InputError
from .limits import MAX_CHANNELS, check_work
from .masks import Mask
from .networks import ArchSpec, DeepDecoderSpec, SkipSpec
from .ticket import Ticket, load_ticket, ticket_from_model

DD_K_RANGE = (1, MAX_CHANNELS)  # deep decoder channels
# Dense priors built from options are held tighter than file headers (lipdeploy.limits: 16): 8 levels already need
# images of at least 2 * 2^8 = 512 px a side, the largest DIP/deep decoder configurations in use have 5-6.
DD_DEPTH_RANGE = (0, 8)  # deep decoder upsampling blocks
MAX_LEVELS = 8  # DIP skip net levels


@dataclass(frozen=True)
class PriorSpec:
    """A prior as a user describes it: a ticket file (with the overrides its shapes cannot tell), or a dense
    architecture. All fields optional: no ticket and no ``arch`` is the paper's dense DIP.

    ``ticket``: ticket file (any format); ``weights``: initial weights for a mask-only ticket (the paper's mask + init
    pair); ``net``: which generator of a progressive-GAN checkpoint (``netG`` by default, or ``avgG``); ``upsample``
    / ``act``: upsampling mode and activation (ticket or dense DIP; ``upsample`` also for the deep decoder); ``arch``:
    ``"dip"`` or ``"dd"`` when there is no ticket; ``channels``: DIP channels per level (skip channels stay 4); ``dd_k``
    / ``dd_depth``: the deep decoder's channels and upsampling blocks.
    """

    ticket: Path | None = None
    weights: Path | None = None
    net: str | None = None
    upsample: str | None = None
    act: str | None = None
    arch: str | None = None
    channels: tuple[int, ...] | None = None
    dd_k: int | None = None
    dd_depth: int | None = None

    @property
    def has_arch(self) -> bool:
        """Whether any dense-architecture field is set (they exclude a ticket)."""
        return any(v is not None for v in (self.arch, self.channels, self.dd_k, self.dd_depth))


def open_ticket(spec: PriorSpec) -> Ticket:
    """Load ``spec.ticket`` with its weights and overrides (:class:`InputError` for any bad file)."""
    if spec.ticket is None:
        raise InputError(None, "no ticket given")
    return load_ticket(spec.ticket, weights=spec.weights, net=spec.net, upsample_mode=spec.upsample, act=spec.act)


def dense_arch(spec: PriorSpec, names: Mapping[str, str] | None = None) -> ArchSpec:
    """The dense architecture ``spec`` describes (the paper's DIP skip net by default), checked."""
    n = _names(names)
    if spec.arch == "dd":
        if spec.channels is not None:
            raise InputError(
                None, f"{n['channels']} is for {n['arch']} dip; the deep decoder takes {n['dd_k']} and {n['dd_depth']}"
            )
        k = 128 if spec.dd_k is None else spec.dd_k
        depth = 5 if spec.dd_depth is None else spec.dd_depth
        if not DD_K_RANGE[0] <= k <= DD_K_RANGE[1]:
            raise InputError(None, f"{n['dd_k']} must be between {DD_K_RANGE[0]} and {DD_K_RANGE[1]}, got {k}")
        if not DD_DEPTH_RANGE[0] <= depth <= DD_DEPTH_RANGE[1]:
            raise InputError(
                None, f"{n['dd_depth']} must be between {DD_DEPTH_RANGE[0]} and {DD_DEPTH_RANGE[1]}, got {depth}"
            )
        return DeepDecoderSpec(k=k, depth=depth, **({"upsample_mode": spec.upsample} if spec.upsample else {}))
    if spec.dd_k is not None or spec.dd_depth is not None:
        raise InputError(None, f"{n['dd_k']} and {n['dd_depth']} are for {n['arch']} dd")
    extra: dict[str, Any] = {}
    if spec.upsample:
        extra["upsample_mode"] = spec.upsample
    if spec.act:
        extra["act"] = spec.act
    if spec.channels is not None:
        ch = tuple(spec.channels)
        if not ch or len(ch) > MAX_LEVELS or any(c < 1 or c > MAX_CHANNELS for c in ch):
            raise InputError(
                None,
                f"{n['channels']}: 1 to {MAX_LEVELS} levels of 1 to {MAX_CHANNELS} channels, "
                f"got {','.join(map(str, ch))!r}",
            )
        extra.update(channels_down=ch, channels_up=ch, channels_skip=(4,) * len(ch))
    return SkipSpec(**extra)


def dense_prior(spec: PriorSpec, seed: int, names: Mapping[str, str] | None = None) -> Ticket:
    """The dense network ``spec`` describes as a ticket: all-ones masks, weights initialised from ``seed`` (PyTorch's
    default initialisation, as DIP uses), so it fits through the same engine as any ticket."""
    arch = dense_arch(spec, names)
    check_work(arch, 0, 0, training=True, what=f"fitting {arch.describe()}")  # before its weights are allocated
    torch.manual_seed(seed)
    model = arch.build()
    return ticket_from_model(model, arch, Mask.ones_like(model), source_format="dense", seed=seed)


def make_prior(spec: PriorSpec, seed: int, names: Mapping[str, str] | None = None) -> tuple[Ticket, str]:
    """The prior ``spec`` describes as a ticket, and a one-line label for logs and records.

    A ticket excludes the architecture fields, and ``weights`` goes only with a ticket (:class:`InputError`).
    ``names`` maps :class:`PriorSpec` field names to what the caller calls them in messages.
    """
    n = _names(names)
    if spec.ticket is not None:
        if spec.has_arch:
            raise InputError(
                None,
                f"give either {n['ticket']} or {n['arch']}/{n['channels']}/{n['dd_k']}/{n['dd_depth']}, not both",
            )
        t = open_ticket(spec)
        return t, f"ticket {spec.ticket.name} ({t.arch.describe()}, density {t.density:.4f})"
    if spec.weights is not None:
        raise InputError(spec.weights, f"{n['weights']} goes with {n['ticket']}")
    if spec.net is not None:
        raise InputError(None, f"{n['net']} goes with {n['ticket']} (a progressive-GAN checkpoint)")
    t = dense_prior(spec, seed, names)
    return t, f"dense {t.arch.describe()}"


def _names(names: Mapping[str, str] | None) -> dict[str, str]:
    fields = ("ticket", "weights", "net", "upsample", "act", "arch", "channels", "dd_k", "dd_depth")
    return {f: f for f in fields} | dict(names or {})

"""Networks from the user's own code: ``--arch-factory module:callable`` plus a state dict (or mask + weights pair).

The factory is *imported by name* (``importlib``; the current directory first, as ``python -m`` would) and called
with no arguments; it returns the ``nn.Module`` whose state dict the file holds. Nothing is unpickled: the file is read
with ``torch.load(weights_only=True)`` (:func:`lipdeploy.ticket.read_tensor_file`). The network must be made of layers
the compaction rules table knows (:mod:`lipdeploy.compaction.rules`); its forward is traced with torch.fx.

A :class:`FactorySpec` stands where the toolkit's own architectures (``SkipSpec``, ``PGANSpec``) stand in a
:class:`~lipdeploy.ticket.Ticket`, so compaction, ``inspect`` and ``export`` work unchanged. A map-input network
(``[1, C, H, W]``, e.g. a DIP-like decoder) is fed a noise code as the DIP is; a vector-input one (``[N, L]``) is a
generator (``latent_dim``, ``resolution``). Its tickets are not written as ticket files: a file naming code to import
would run that code on loading, so a factory is only ever the one the user names on the command line.
"""

from __future__ import annotations

import functools
import importlib
import math
import os
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .compaction.build import model_input
from .compaction.graph import Node
from .compaction.trace import trace
from .errors import InputError, first_line
from .masks import Mask
from .networks import prunable_names
from .ticket import Ticket, as_state_dict, read_tensor_file

FORMAT_HINT = "module:callable, e.g. mynets:make_decoder"


def import_factory(text: str):
    """The callable named by ``text`` (``"package.module:function"``), imported by name."""
    module_name, sep, attr = text.partition(":")
    if not sep or not module_name or not attr:
        raise InputError(None, f"--arch-factory {text!r} is not {FORMAT_HINT}")
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:  # a console script does not put the current directory on the path; `python -m` would
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module may fail in any way: one line about it
        raise InputError(None, f"--arch-factory {text}: cannot import {module_name!r} ({first_line(exc)})") from None
    finally:
        if added:
            sys.path.remove(cwd)
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise InputError(None, f"--arch-factory {text}: module {module_name!r} has no {attr!r}")
    if not callable(obj):
        raise InputError(None, f"--arch-factory {text}: {attr!r} is not callable")
    return obj


@dataclass(frozen=True)
class FactorySpec:
    """The architecture of a network built by the user's factory (``"module:callable"``)."""

    factory: str

    kind = "factory"

    def build(self) -> nn.Module:
        fn = import_factory(self.factory)
        try:
            model = fn()
        except Exception as exc:  # the user's code
            raise InputError(None, f"--arch-factory {self.factory}: the factory failed ({first_line(exc)})") from None
        if not isinstance(model, nn.Module):
            raise InputError(None, f"--arch-factory {self.factory}: returned a {type(model).__name__}, not a module")
        return model

    @functools.cached_property
    def graph(self) -> list[Node]:
        """The traced network (shapes only; on the meta device)."""
        model = self.build().to("meta")
        try:
            channels, rank = model_input(model)
            return trace(model, channels, rank)
        except ValueError as exc:
            raise InputError(None, f"--arch-factory {self.factory}: {exc}") from None

    @property
    def input_channels(self) -> int:
        return self.graph[0].channels

    @property
    def latent_dim(self) -> int:
        """The latent's size, for a vector-input network (a generator); AttributeError for a map-input one."""
        if self.graph[0].rank != 2:
            raise AttributeError("latent_dim: the network's input is a map, not a latent vector")
        return self.graph[0].channels

    @property
    def resolution(self) -> int:
        """A generator's image side (its output's absolute size); AttributeError for a map-input network."""
        out = self.graph[-1]
        if self.graph[0].rank != 2 or out.size is None or out.size[0] != out.size[1]:
            raise AttributeError("resolution: not a generator of square images")
        return out.size[0]

    @property
    def dim_output(self) -> int:
        return self.graph[-1].channels

    @property
    def output_scale(self) -> Fraction:
        """The output's resolution relative to the input (a decoder that upsamples 4x: 4)."""
        return self.graph[-1].scale or Fraction(1)

    @property
    def stride(self) -> int:
        """Output sides must be multiples of it: every layer's resolution is then a whole number of pixels."""
        out = self.output_scale
        return math.lcm(1, *((n.scale / out).denominator for n in self.graph if n.scale is not None))

    @property
    def min_side(self) -> int:
        return self.stride

    def input_shape(self, height: int, width: int) -> tuple[int, ...]:
        if self.graph[0].rank == 2:
            return (1, self.graph[0].channels)
        s = self.output_scale
        return (1, self.input_channels, int(height / s), int(width / s))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "factory": self.factory}

    def describe(self) -> str:
        return f"network from {self.factory}"


def factory_ticket(path: str | Path, factory: str, weights: str | Path | None = None) -> Ticket:
    """A ticket of the network ``factory`` builds, from a state dict: its exact zeros are the mask, or
    ``torch.nn.utils.prune``'s ``weight_orig`` + ``weight_mask``, or a mask-only file (``<layer>.weight_mask``) with
    the weights in ``weights``. Prunable: every Conv2d weight. InputError (one line) for anything that does not fit."""
    path = Path(path)
    spec = FactorySpec(factory)
    model = spec.build()
    spec.graph  # noqa: B018 -- trace it now: a network with unsupported layers is refused before reading files
    sd = _state(path)
    if any(k == "format" for k in sd):
        raise InputError(path, "a lipdeploy ticket file names its own architecture: drop --arch-factory")
    masks = {k[: -len("_mask")]: v for k, v in sd.items() if k.endswith(".weight_mask")}
    if masks and len(masks) == len(sd):
        if weights is None:
            raise InputError(path, "mask-only file: pass the network's weights with --weights")
        init = _state(Path(weights))
        source = "paper-masks"
    else:
        init = {k.replace(".weight_orig", ".weight"): v for k, v in sd.items() if not k.endswith(".weight_mask")}
        source = "torch-prune" if masks else "state-dict-zeros"
    try:
        model.load_state_dict(init)
    except RuntimeError as exc:
        where = weights if source == "paper-masks" else path
        raise InputError(where, f"does not fit {factory}: {_mismatch(exc)}") from None
    for key, value in init.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise InputError(path, f"{key!r} holds NaN or Inf")
    shapes = {name: p.shape for name, p in model.named_parameters() if name in set(prunable_names(model))}
    if not masks:
        masks = {name: (init[name] != 0).float() for name in shapes}
    provenance = {"source_format": source, "source_file": path.name, "arch_factory": factory}
    checked = Mask.validated(masks, shapes, str(path))
    return Ticket(arch=spec, init=init, masks=checked, provenance=provenance, source=str(path))


def _state(path: Path) -> dict[str, torch.Tensor]:
    obj, _ = read_tensor_file(path)
    if "format" in obj:  # a lipdeploy ticket file: the caller refuses it in one line
        return {"format": torch.zeros(0)}
    return as_state_dict(path, obj)


def _mismatch(exc: RuntimeError) -> str:
    """load_state_dict's message, first problem only."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[1] if len(lines) > 1 else lines[0] if lines else "key mismatch")[:200]

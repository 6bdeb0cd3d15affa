"""Progressive-GAN generator files as pytorch_GAN_zoo and the LIP paper's GAN code write them, read as plain data.

Layouts (every one read with ``torch.load(weights_only=True)`` by :func:`lipdeploy.ticket.read_tensor_file`; a
``config`` pickled as an object rather than a dict is refused there, never executed):

- the zoo's checkpoint ``{'config', 'netG', 'netD', 'avgG'}``: ``config`` (a dict) gives the architecture
  (:meth:`PGANSpec.from_config`); ``net`` picks ``netG`` (the paper's) or ``avgG`` (the moving average);
- inside it or as a bare dict, the generator's state dict in any of the layouts the zoo's ``loadStateDictCompatible``
  accepts: the zoo's keys (``formatLayer.module.weight``), old-style keys without ``.module.``
  (``formatLayer.weight``), and a DataParallel ``module.`` prefix;
- the paper's pruned generator, as ``torch.nn.utils.prune`` holds it: ``<layer>.module.weight_orig`` +
  ``<layer>.module.weight_mask`` + bias;
- a mask-only dict (``<layer>.module.weight_mask``), whose weights come from a checkpoint given as ``weights``.

This module only parses: it finds the network, normalises its keys and reads the architecture. Checking the tensors
against the architecture and assembling the :class:`~lipdeploy.ticket.Ticket` is :func:`lipdeploy.ticket.load_ticket`'s
work (shared with every other ticket layout). ``netD`` stays available through :class:`GeneratorCheckpoint` for GAN
retraining, which needs the discriminator.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from .errors import InputError
from .generator import PGANSpec

StateDict = dict[str, torch.Tensor]
GeneratorNet = Literal["netG", "avgG"]
GENERATOR_NETS: tuple[str, ...] = ("netG", "avgG")
CHECKPOINT_NETS: tuple[str, ...] = ("netG", "avgG", "netD")

# First key components of a generator's state dict (the zoo's GNet attributes that hold parameters).
GENERATOR_ROOTS = frozenset({"formatLayer", "groupScale0", "scaleLayers", "toRGBLayers"})
# Parameter names an old-style key ends in, before which the zoo's loader inserts ``module.``.
PARAMETER_LEAVES = frozenset({"weight", "bias", "weight_orig", "weight_mask"})

Layout = Literal["pgan-checkpoint", "pgan-state-dict", "pgan-prune", "pgan-masks"]


def is_checkpoint_content(content: Mapping[str, Any]) -> bool:
    """Whether a loaded file is a zoo checkpoint: it has a generator entry (``netG`` or ``avgG``). A ``config`` alone
    does not make one (other tools save ``{'config', 'state_dict'}``)."""
    return any(key in content for key in GENERATOR_NETS)


def is_generator_content(content: Mapping[str, Any]) -> bool:
    """Whether a loaded file is a generator file of any layout above: a zoo checkpoint, or a dict whose keys (after
    the DataParallel prefix) start with the generator's layer names."""
    if is_checkpoint_content(content):
        return True
    for key in content:
        if isinstance(key, str):
            root = key.removeprefix("module.").split(".", 1)[0]
            if root in GENERATOR_ROOTS:
                return True
    return False


def zoo_keys(path: str | Path | None, state: Mapping[str, torch.Tensor]) -> StateDict:
    """``state`` with the zoo's key layout: a ``module.`` prefix (DataParallel) on every key removed, and old-style
    keys mapped as the zoo's ``loadStateDictCompatible`` maps them (``formatLayer.weight`` ->
    ``formatLayer.module.weight``). The tensors are the same objects (no copy)."""
    strip = bool(state) and all(isinstance(k, str) and k.startswith("module.") for k in state)
    out: StateDict = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise InputError(path, f"key {key!r} is not a parameter name")
        if not isinstance(value, torch.Tensor):
            raise InputError(path, f"entry {key!r} is a {type(value).__name__}, not a tensor")
        name = key[len("module.") :] if strip else key
        parent, _, leaf = name.rpartition(".")
        if parent and leaf in PARAMETER_LEAVES and not parent.endswith(".module") and parent != "module":
            name = f"{parent}.module.{leaf}"
        if name in out:
            raise InputError(path, f"holds {name!r} twice (in the zoo's layout and in the old one)")
        out[name] = value
    return out


@dataclass(frozen=True)
class GeneratorCheckpoint:
    """A zoo checkpoint's plain contents: ``config`` and the networks it holds (``netG``, ``avgG``, ``netD``; state
    dicts in the zoo's key layout, tensors as stored, not copied)."""

    config: dict[str, Any]
    nets: dict[str, StateDict]

    @property
    def spec(self) -> PGANSpec:
        """The generator's architecture (ValueError for a bad config)."""
        return PGANSpec.from_config(self.config)

    @classmethod
    def from_content(cls, path: str | Path | None, content: Mapping[str, Any]) -> GeneratorCheckpoint:
        """Parse a loaded zoo checkpoint (:class:`InputError` naming ``path`` for a missing or malformed part)."""
        config = content.get("config")
        if config is None:
            raise InputError(path, "progressive-GAN checkpoint without 'config' (its architecture)")
        if not isinstance(config, dict):
            raise InputError(path, f"'config' is a {type(config).__name__}, not a mapping")
        nets: dict[str, StateDict] = {}
        for name in CHECKPOINT_NETS:
            if name in content:
                state = content[name]
                if not isinstance(state, Mapping):
                    raise InputError(path, f"{name!r} is a {type(state).__name__}, not a state dict")
                nets[name] = zoo_keys(f"{path} [{name}]", state)
        if not any(name in nets for name in GENERATOR_NETS):
            raise InputError(path, "progressive-GAN checkpoint without a generator ('netG' or 'avgG')")
        return cls(config=dict(config), nets=nets)


@dataclass(frozen=True)
class GeneratorFile:
    """What one generator file holds: the architecture when it has a config, the generator's tensors in the zoo's key
    layout (``weight_orig`` / ``weight_mask`` as stored), and which network of a checkpoint they are."""

    spec: PGANSpec | None
    state: StateDict
    net: str | None

    @property
    def layout(self) -> Layout:
        """The file's layout: its masks only, a pruned network, a checkpoint's network, or a bare state dict."""
        masks = [k for k in self.state if k.endswith(".weight_mask")]
        if masks and len(masks) == len(self.state):
            return "pgan-masks"
        if masks or any(k.endswith(".weight_orig") for k in self.state):
            return "pgan-prune"
        return "pgan-checkpoint" if self.net is not None else "pgan-state-dict"


def read_generator_file(path: str | Path, content: Mapping[str, Any], net: str = "netG") -> GeneratorFile:
    """Parse a loaded generator file (any layout above); ``net`` picks a checkpoint's generator.

    :class:`InputError` naming ``path``: a checkpoint without config or without the requested network, a config
    that describes no valid generator, entries that are not tensors.
    """
    if net not in GENERATOR_NETS:
        raise InputError(None, f"net must be one of {', '.join(GENERATOR_NETS)}, got {net!r}")
    if not is_checkpoint_content(content):
        return GeneratorFile(spec=None, state=zoo_keys(path, content), net=None)
    checkpoint = GeneratorCheckpoint.from_content(path, content)
    if net not in checkpoint.nets:
        raise InputError(path, f"checkpoint has no {net!r} (it holds {', '.join(checkpoint.nets)})")
    try:
        spec = checkpoint.spec
    except ValueError as exc:
        raise InputError(path, f"config describes no supported generator: {exc}") from None
    return GeneratorFile(spec=spec, state=checkpoint.nets[net], net=net)

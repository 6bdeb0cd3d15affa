"""Tickets from other layouts: the LIP paper's mask-only pair, ``torch.nn.utils.prune``'s state dict, a plain state
dict whose exact zeros define the mask, a progressive-GAN generator file (:mod:`lipdeploy.generator_files`), and a
model in memory."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..generator_files import GeneratorFile, is_checkpoint_content, is_generator_content, read_generator_file
from ..masks import Mask
from ..networks import ArchSpec
from .architecture import check_state, infer_or_fail, prunable_shapes
from .files import StateDict, as_state_dict, check_finite, read_tensor_file
from .model import Ticket


def state_dict_ticket(
    path: Path, obj: Mapping[str, Any], weights: str | Path | None, arch_overrides: Mapping[str, Any]
) -> Ticket:
    """A ticket from a state-dict file's content ``obj``: the paper's masks (``weights`` then required), a pruned
    model's ``weight_orig`` + ``weight_mask``, or a plain state dict (its exact zeros the mask). With ``weights`` for
    the last two, those become the initial weights and the file's own the fitted ones."""
    sd = as_state_dict(path, obj)
    mask_keys = [k for k in sd if k.endswith(".weight_mask")]
    orig_keys = [k for k in sd if k.endswith(".weight_orig")]
    if mask_keys and not orig_keys and len(mask_keys) == len(sd):
        source_format = "paper-masks"
        if weights is None:
            raise InputError(path, "mask-only file (the paper's masks): pass the network's weights with --weights")
        raw_masks = {k[: -len("_mask")]: v for k, v in sd.items()}
        wpath = Path(weights)
        wsd = _plain_state(wpath, as_state_dict(wpath, read_tensor_file(wpath)[0]))
        arch = infer_or_fail(wpath, wsd, arch_overrides)
        check_state(wpath, arch, wsd)
        init, fitted = wsd, None
    elif mask_keys or orig_keys:
        source_format = "torch-prune"
        raw_masks = {k[: -len("_mask")]: v for k, v in sd.items() if k.endswith(".weight_mask")}
        check_finite(path, sd)
        file_sd = _plain_state(path, sd)
        arch = infer_or_fail(path, file_sd, arch_overrides)
        check_state(path, arch, file_sd)
        init, fitted = file_sd, None
    else:
        source_format = "state-dict-zeros"
        check_finite(path, sd)
        arch = infer_or_fail(path, sd, arch_overrides)
        check_state(path, arch, sd)
        raw_masks = {name: (sd[name] != 0).float() for name in prunable_shapes(arch)}
        init, fitted = sd, None
    masks = Mask.validated(raw_masks, prunable_shapes(arch), str(path))
    if weights is not None and source_format != "paper-masks":
        init, fitted = load_weights(Path(weights), arch), init
    provenance = {"source_format": source_format, "source_file": path.name}
    if weights is not None:
        provenance["weights_file"] = Path(weights).name
    return Ticket(arch=arch, init=init, masks=masks, fitted=fitted, provenance=provenance, source=str(path))


def _plain_state(path: Path, sd: StateDict) -> StateDict:
    """Fold torch.nn.utils.prune's reparametrisation: ``weight = weight_orig * weight_mask``."""
    out: StateDict = {}
    for key, value in sd.items():
        if key.endswith(".weight_orig"):
            base = key[: -len("_orig")]
            mask = sd.get(base + "_mask")
            if mask is None:
                raise InputError(path, f"{key!r} has no matching {base + '_mask'!r}")
            if mask.shape != value.shape:
                raise InputError(
                    path, f"mask {base + '_mask'!r} has shape {list(mask.shape)} but the weight has {list(value.shape)}"
                )
            out[base] = value * mask
        elif key.endswith(".weight_mask"):
            continue
        else:
            out[key] = value
    return out


def load_weights(path: Path, arch: ArchSpec, net: str | None = None) -> StateDict:
    """The initial weights from a state-dict or generator file, checked against ``arch``."""
    content = read_tensor_file(path)[0]
    if is_generator_content(content):
        sd = _generator_weights(path, read_generator_file(path, content, net or "netG"))
    elif net is not None:
        raise InputError(path, f"net={net!r} picks a network of a progressive-GAN checkpoint; this file is not one")
    else:
        sd = _plain_state(path, as_state_dict(path, content))
    check_state(path, arch, sd)
    return sd


def generator_ticket(
    path: Path, content: Mapping[str, Any], weights: str | Path | None, net: str | None, overrides: Mapping[str, Any]
) -> Ticket:
    """A ticket from a progressive-GAN generator file, with ``weights`` (a checkpoint) as the initial weights for a
    mask-only or bare file; the architecture comes from the file's config, else from the weights' config."""
    given = sorted(k for k, v in overrides.items() if v is not None)
    if given:
        raise InputError(path, f"{', '.join(given)} do not apply to a progressive-GAN generator (its config says all)")
    source = read_generator_file(path, content, net or "netG")
    base = None
    if weights is not None:
        wpath = Path(weights)
        base = read_generator_file(wpath, read_tensor_file(wpath)[0], net or "netG")
    elif net is not None and not is_checkpoint_content(content):
        raise InputError(path, f"net={net!r} picks a network of a progressive-GAN checkpoint; this file is not one")
    masks_only = source.layout == "pgan-masks"
    if masks_only and base is None:
        raise InputError(path, "mask-only file (the generator's masks): pass the generator's checkpoint as weights")
    arch = source.spec or (base.spec if base is not None else None)
    if arch is None:
        hint = "pass the generator's checkpoint as weights" if base is None else f"{Path(weights).name} has none either"
        raise InputError(path, f"no 'config' to tell the generator's architecture: {hint}")
    state = {} if masks_only else _generator_weights(path, source)
    raw_masks = {k[: -len("_mask")]: v for k, v in source.state.items() if k.endswith(".weight_mask")}
    if state:
        check_state(path, arch, state)
    init, fitted = state, None
    if base is not None:
        init, fitted = _generator_weights(Path(weights), base), (state or None)
        check_state(Path(weights), arch, init)
    shapes = prunable_shapes(arch)
    if not raw_masks:  # a plain network: its exact zeros are the mask (none in a dense pre-trained generator)
        raw_masks = {name: (state[name] != 0).float() for name in shapes}
    provenance: dict[str, Any] = {"source_format": source.layout, "source_file": path.name}
    if source.net is not None or (base is not None and base.net is not None):
        provenance["net"] = net or "netG"
    if weights is not None:
        provenance["weights_file"] = Path(weights).name
    masks = Mask.validated(raw_masks, shapes, str(path))
    return Ticket(arch=arch, init=init, masks=masks, fitted=fitted, provenance=provenance, source=str(path))


def _generator_weights(path: Path, source: GeneratorFile) -> StateDict:
    """A generator file's weights, ``weight_orig`` folded with its mask; a mask-only file holds none."""
    if source.layout == "pgan-masks":
        raise InputError(path, "holds masks only, no weights")
    return _plain_state(path, source.state)


def ticket_from_model(
    model: nn.Module, arch: ArchSpec, masks: Mapping[str, torch.Tensor] | None = None, **provenance: Any
) -> Ticket:
    """A ticket from a reference-layout model's current weights (masks default to its exact nonzeros)."""
    sd = _plain_state(Path("<model>"), {k: v.detach().clone() for k, v in model.state_dict().items()})
    shapes = prunable_shapes(arch)
    if masks is None:  # a model pruned with torch.nn.utils.prune carries its masks; otherwise exact zeros define them
        state = model.state_dict()
        masks = {n: state[n + "_mask"] if n + "_mask" in state else (sd[n] != 0).float() for n in shapes}
    raw = dict(masks)
    return Ticket(arch=arch, init=sd, masks=Mask.validated(raw, shapes), provenance=dict(provenance))

"""The toolkit's own ticket file (version 1): a ticket's parts to file content and back.

Conv weights are stored only at kept positions, so a 90%-sparse ticket is ~7x smaller than the dense state dict:

- ``format`` = ``"lipdeploy.ticket"``, ``version`` = 1, ``arch`` (``ArchSpec.to_dict()``), ``provenance`` (plain data);
- ``shapes``: prunable weight name -> shape (list of ints), in forward order;
- ``tensors``: flat name -> tensor, with names
  ``mask/<name>`` (uint8, ``numpy.packbits`` of the flattened 0/1 mask, big-endian bit order),
  ``init/<name>`` (prunable weights: 1-D float values at kept positions, row-major; other tensors: as in the state
  dict) and, for a fitted network, ``fitted/<name>`` likewise.

The ``.safetensors`` variant holds the same ``tensors``; ``format``, ``version``, ``arch``, ``provenance`` and
``shapes`` are JSON strings in its metadata.

This module knows the parts (architecture, weights, masks, provenance), not the :class:`~lipdeploy.ticket.Ticket`
type, which writes itself through :func:`encode`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from ..errors import InputError, first_line
from ..limits import check_memory, parameter_count
from ..masks import Mask, Masks
from ..networks import ArchSpec, arch_from_dict
from .architecture import check_state, prunable_shapes
from .files import StateDict

FORMAT = "lipdeploy.ticket"
VERSION = 1


class TicketParts(NamedTuple):
    """What a ticket file holds: the fields of a :class:`~lipdeploy.ticket.Ticket` but its ``source``."""

    arch: ArchSpec
    init: StateDict
    masks: Masks
    fitted: StateDict | None
    provenance: dict[str, Any]


def is_ticket_content(content: Mapping[str, Any], meta: Mapping[str, str]) -> bool:
    """Whether a file read by :func:`~lipdeploy.ticket.read_tensor_file` is a ticket file (by its format entry)."""
    return meta.get("format") == json.dumps(FORMAT) or content.get("format") == FORMAT


def encode(parts: TicketParts) -> tuple[StateDict, dict[str, Any]]:
    """A ticket's (tensors, header) as the file stores them."""
    tensors: StateDict = {}
    for name, mask in parts.masks.items():
        bits = np.packbits(mask.reshape(-1).numpy().astype(bool))
        tensors[f"mask/{name}"] = torch.from_numpy(bits)
    for group, sd in (("init", parts.init), ("fitted", parts.fitted)):
        if sd is None:
            continue
        for name, value in sd.items():
            if name in parts.masks:
                value = value.reshape(-1)[parts.masks[name].reshape(-1).bool()]
            tensors[f"{group}/{name}"] = value.detach().contiguous().clone()
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "arch": parts.arch.to_dict(),
        "provenance": _plain(parts.provenance),
        "shapes": {name: list(m.shape) for name, m in parts.masks.items()},
    }
    return tensors, meta


def _plain(value: Any) -> Any:
    """Provenance as plain data only (what weights_only loading and JSON both accept)."""
    return json.loads(json.dumps(value, default=str))


def decode_content(path: Path, content: Mapping[str, Any], meta: Mapping[str, str]) -> TicketParts:
    """The parts of a ticket file read by :func:`~lipdeploy.ticket.read_tensor_file` (``.pt``: the header in
    ``content``; ``.safetensors``: in ``meta``), every part checked: :class:`InputError` naming ``path`` otherwise."""
    if meta:
        try:
            header = {k: json.loads(v) for k, v in meta.items()}
        except json.JSONDecodeError as exc:
            raise InputError(path, f"malformed safetensors metadata ({exc})") from None
        return decode(path, header, content)
    tensors = content.get("tensors")
    if not isinstance(tensors, dict):
        raise InputError(path, "malformed ticket: no 'tensors' dict")
    return decode(path, content, tensors)


def decode(path: Path, meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> TicketParts:
    """A ticket's parts from its header ``meta`` and its ``tensors``."""
    arch, shapes, provenance = _read_header(path, meta)
    for key, value in tensors.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise InputError(path, f"malformed ticket: entry {key!r} of 'tensors' is not a named tensor")
    masks = _unpack_masks(path, shapes, tensors)
    groups = _unpack_weights(path, masks, tensors)
    if not groups["init"]:
        raise InputError(path, "ticket holds no initial weights")
    fitted = groups["fitted"] or None
    check_state(path, arch, groups["init"])
    if fitted is not None:
        check_state(path, arch, fitted)
    validated = Mask.validated(masks, prunable_shapes(arch), str(path))
    parts = TicketParts(arch, groups["init"], validated, fitted, provenance)
    _check_block_structure(path, parts)
    return parts


def _read_header(path: Path, meta: Mapping[str, Any]) -> tuple[ArchSpec, dict[str, torch.Size], dict[str, Any]]:
    """The header's architecture, mask shapes and provenance, checked against each other."""
    if meta.get("version") != VERSION:
        raise InputError(path, f"unsupported ticket version {meta.get('version')!r} (this lipdeploy reads {VERSION})")
    try:
        arch = arch_from_dict(meta["arch"])
        shapes = {name: torch.Size(_header_shape(name, s)) for name, s in _header_mapping("shapes", meta["shapes"])}
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise InputError(path, f"malformed ticket header: {first_line(exc)}") from None
    provenance = meta.get("provenance") or {}
    if not isinstance(provenance, dict):
        raise InputError(
            path, f"malformed ticket header: provenance must be a mapping, not a {type(provenance).__name__}"
        )
    # the header's network is what gets materialised (dense initial and fitted weights, float masks): 3 W, checked
    # before allocating it (a 4096-channel header in a small sparse file would unpack to tens of GB)
    check_memory(3 * 4 * parameter_count(arch), f"loading {path.name} ({arch.describe()})")
    expected = prunable_shapes(arch)
    if list(shapes) != list(expected) or any(tuple(shapes[k]) != tuple(v) for k, v in expected.items()):
        bad = next((k for k in shapes if k not in expected or tuple(shapes[k]) != tuple(expected[k])), None)
        where = f" ({bad!r}: {list(shapes[bad])})" if bad is not None else ""
        raise InputError(path, f"malformed ticket header: the shapes do not match {arch.describe()}{where}")
    return arch, shapes, dict(provenance)


def _header_mapping(what: str, value: Any) -> list[tuple[str, Any]]:
    if not isinstance(value, dict):
        raise TypeError(f"{what} must be a mapping, not a {type(value).__name__}")
    return list(value.items())


def _header_shape(name: Any, shape: Any) -> list[int]:
    """A shape from a ticket header: a list of non-negative integers (ValueError otherwise)."""
    if not isinstance(shape, (list, tuple)) or len(shape) > 8:
        raise ValueError(f"shape of {name!r} must be a list of at most 8 sizes, got {shape!r}"[:200])
    if any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape):
        raise ValueError(f"shape of {name!r} must hold non-negative integers, got {shape!r}"[:200])
    return list(shape)


def _unpack_masks(path: Path, shapes: Mapping[str, torch.Size], tensors: Mapping[str, torch.Tensor]) -> StateDict:
    """The 0/1 float masks from their packed bits."""
    masks: StateDict = {}
    for name, shape in shapes.items():
        bits = tensors.get(f"mask/{name}")
        if bits is None:
            raise InputError(path, f"ticket has no mask for {name!r}")
        n = shape.numel()
        flat = np.unpackbits(bits.numpy().astype(np.uint8), count=n) if bits.numel() * 8 >= n else None
        if flat is None:
            raise InputError(path, f"mask for {name!r} is shorter than its shape {list(shape)}")
        masks[name] = torch.from_numpy(flat.astype(np.float32)).reshape(shape)
    return masks


def _unpack_weights(path: Path, masks: StateDict, tensors: Mapping[str, torch.Tensor]) -> dict[str, StateDict]:
    """The ``init`` and ``fitted`` state dicts, prunable weights scattered back to their dense shape."""
    groups: dict[str, StateDict] = {"init": {}, "fitted": {}}
    for key, value in tensors.items():
        group, _, name = key.partition("/")
        if group in groups:
            if name in masks:
                mask = masks[name].reshape(-1).bool()
                if value.dim() != 1 or value.numel() != int(mask.sum()):
                    raise InputError(path, f"{key!r} holds {value.numel()} values but its mask keeps {int(mask.sum())}")
                full = torch.zeros(mask.numel(), dtype=value.dtype)
                full[mask] = value
                value = full.reshape(masks[name].shape)
            groups[group][name] = value
        elif group != "mask":
            raise InputError(path, f"unexpected tensor {key!r} in ticket")
    return groups


def _check_block_structure(path: Path, parts: TicketParts) -> None:
    """A ticket whose provenance says it was found at a block granularity must hold block masks (the bsr kernels
    and the block storage of the export rely on it): :class:`InputError` naming the file and the first bad layer."""
    # the patterns registry (~0.1 s to import): loaded only for a ticket found at a block granularity
    from ..patterns import PATTERNS, Block, block_pattern
    from ..patterns.block import BLOCK_SIZES

    gran = parts.provenance.get("granularity")
    pattern = PATTERNS.get(gran) if isinstance(gran, str) else None
    block = parts.provenance.get("block")
    if block is not None:
        if not (
            isinstance(block, (list, tuple))
            and len(block) == 2
            and all(isinstance(b, int) and not isinstance(b, bool) and b in BLOCK_SIZES for b in block)
        ):
            raise InputError(path, f"provenance has an invalid block size {block!r} (sides in {BLOCK_SIZES})"[:200])
        if pattern is None or isinstance(pattern, Block):
            pattern = block_pattern(int(block[0]), int(block[1]))
    if not isinstance(pattern, Block):
        return
    last = list(parts.masks)[-1] if parts.masks else None
    for name, mask in parts.masks.items():
        reason = pattern.check(mask, name, name == last)
        if reason is not None:
            raise InputError(path, f"provenance says granularity {gran!r} but layer {reason}")

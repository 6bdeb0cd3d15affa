"""Masks: one 0/1 tensor per prunable weight, keyed by reference-layout parameter name ('1.1.4.1.weight').

Like open_lth's Mask, :func:`validate_masks` refuses anything but 0/1 values, for known layers, with the right shapes.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .errors import InputError

Masks = dict[str, torch.Tensor]


def validate_masks(
    masks: Mapping[str, torch.Tensor], shapes: Mapping[str, torch.Size], source: str | None = None
) -> Masks:
    """Check masks against the prunable weights' ``shapes`` and return them as float32 0/1 tensors.

    Layers without a mask are dense (all ones). Raises :class:`InputError` naming ``source`` for a mask of an unknown
    layer, a shape mismatch, or a value other than 0 and 1.
    """
    out: Masks = {}
    for name, mask in masks.items():
        if name not in shapes:
            raise InputError(source, f"mask for unknown layer {name!r} (prunable layers: {_preview(shapes)})")
        if not isinstance(mask, torch.Tensor):
            raise InputError(source, f"mask {name!r} is not a tensor")
        if tuple(mask.shape) != tuple(shapes[name]):
            raise InputError(
                source, f"mask {name!r} has shape {list(mask.shape)} but the weight has shape {list(shapes[name])}"
            )
        m = mask.detach().to(torch.float32)
        if not bool(((m == 0) | (m == 1)).all()):
            raise InputError(source, f"mask {name!r} has values other than 0 and 1")
        out[name] = m.contiguous()
    for name, shape in shapes.items():
        if name not in out:
            out[name] = torch.ones(shape)
    return {name: out[name] for name in shapes}  # reference order


def _preview(names: Mapping[str, object]) -> str:
    keys = list(names)
    return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")


def density(masks: Mapping[str, torch.Tensor]) -> float:
    """Kept fraction of all masked weights."""
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.count_nonzero()) for m in masks.values())
    return kept / total if total else 1.0


@torch.no_grad()
def apply_masks_(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the pruned weights of ``model`` in place."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].mul_(mask.to(params[name].device, params[name].dtype))


def freeze_pruned(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> list[torch.utils.hooks.RemovableHandle]:
    """Make pruned weights get exactly zero gradient, so optimisers (Adam included) never move them off zero."""
    params = dict(model.named_parameters())
    handles = []
    for name, mask in masks.items():
        m = mask.to(params[name].device, params[name].dtype)
        handles.append(params[name].register_hook(lambda grad, m=m: grad * m))
    return handles

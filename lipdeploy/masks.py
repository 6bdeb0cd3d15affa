"""Masks: one 0/1 tensor per prunable weight, keyed by reference-layout parameter name ('1.1.4.1.weight').

:class:`Mask` is modelled on open_lth's ``pruning/mask.py``: a dict that only ever holds float32 0/1 tensors, so code
that receives one never has to re-check it. :meth:`Mask.validated` also checks the masks against the network's
prunable weights (known layers, right shapes) and fills in the dense layers, which is what every ticket reader needs.
Which *structure* a mask has (single weights, whole kernels, whole channels) is the business of
:mod:`lipdeploy.patterns`, not of this module.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import InputError
from .fileio import atomic_output, check_regular_file, check_zip_members


class Mask(dict[str, torch.Tensor]):
    """Prunable-weight name -> float32 0/1 tensor of the weight's shape (1 keeps the weight, 0 removes it).

    Every way in (construction, item assignment, ``update``) checks that the value is a tensor holding only 0 and 1
    and stores it as a contiguous float32 copy detached from autograd, so a ``Mask`` is valid by construction. It
    knows nothing about the network; :meth:`validated` checks names and shapes against one.

    Pickling a ``Mask`` object would store this class's name, which ``torch.load(weights_only=True)`` refuses: save
    it with :meth:`save` (a plain dict) instead.
    """

    def __init__(self, masks: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]] = ()) -> None:
        super().__init__()
        self.update(masks)

    # ------------------------------------------------------------------------------------------- validated writes

    def __setitem__(self, name: str, mask: torch.Tensor) -> None:
        super().__setitem__(name, _checked(name, mask, None))

    def update(self, *args: Any, **kwargs: torch.Tensor) -> None:  # type: ignore[override]
        """``dict.update`` through :meth:`__setitem__` (plain ``dict.update`` would skip the checks)."""
        for name, mask in dict(*args, **kwargs).items():
            self[name] = mask

    def setdefault(self, name: str, default: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if name not in self:
            self[name] = default
        return self[name]

    def copy(self) -> Mask:
        """A new ``Mask`` holding the same tensors (``dict.copy`` would return a plain dict)."""
        return Mask(self)

    # ------------------------------------------------------------------------------------------- constructors

    @classmethod
    def ones_like(cls, model_or_shapes: nn.Module | Mapping[str, torch.Size | Iterable[int]]) -> Mask:
        """The dense mask: all ones for every convolution weight (4-D ``*.weight``) of a model, or for a
        ``name -> shape`` mapping, in the model's / mapping's order."""
        if isinstance(model_or_shapes, nn.Module):
            shapes = prunable_shapes(model_or_shapes)
        else:
            shapes = {name: torch.Size(shape) for name, shape in model_or_shapes.items()}
        out = cls()
        for name, shape in shapes.items():
            dict.__setitem__(out, name, torch.ones(shape))  # known-good: skip the 0/1 scan
        return out

    @classmethod
    def validated(
        cls, masks: Mapping[str, torch.Tensor], shapes: Mapping[str, torch.Size], source: str | Path | None = None
    ) -> Mask:
        """Check masks against the prunable weights' ``shapes`` and return them as a ``Mask`` in ``shapes``' order.

        Layers without a mask are dense (all ones). Raises :class:`InputError` naming ``source`` for a mask of an
        unknown layer, a shape mismatch, or a value other than 0 and 1.
        """
        checked: dict[str, torch.Tensor] = {}
        for name, mask in masks.items():
            if name not in shapes:
                raise InputError(source, f"mask for unknown layer {name!r} (prunable layers: {_preview(shapes)})")
            if isinstance(mask, torch.Tensor) and tuple(mask.shape) != tuple(shapes[name]):
                raise InputError(
                    source, f"mask {name!r} has shape {list(mask.shape)} but the weight has shape {list(shapes[name])}"
                )
            checked[name] = _checked(name, mask, source)
        out = cls()
        for name, shape in shapes.items():  # reference order
            dict.__setitem__(out, name, checked[name] if name in checked else torch.ones(shape))
        return out

    @classmethod
    def load(cls, path: str | Path) -> Mask:
        """Read a mask file written by :meth:`save` (or any ``torch.save`` of a dict of 0/1 tensors), safely:
        ``torch.load(weights_only=True)``; an unreadable or malformed file raises :class:`InputError`."""
        path = check_regular_file(path, "mask file")
        check_zip_members(path)  # a deflated bomb is refused before torch.load inflates it
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(path, f"not a readable mask file ({first})") from None
        if not isinstance(raw, Mapping) or not all(isinstance(k, str) for k in raw):
            raise InputError(path, "not a mask file: expected a dict of parameter name -> 0/1 tensor")
        out = cls()
        for name, mask in raw.items():
            dict.__setitem__(out, name, _checked(name, mask, path))
        return out

    # ------------------------------------------------------------------------------------------- queries, output

    def density(self) -> float:
        """Kept fraction of all masked weights (1.0 for an empty mask)."""
        return density(self)

    def save(self, path: str | Path) -> None:
        """Write the masks as a plain ``dict`` with ``torch.save``, atomically (no half-written file on failure);
        :meth:`load` reads it back."""
        with atomic_output(path) as tmp:
            torch.save({name: m.clone() for name, m in self.items()}, tmp)


Masks = Mapping[str, torch.Tensor]
"""Any name -> 0/1 tensor mapping (what functions accept); a :class:`Mask` is the validated kind."""


def _checked(name: object, mask: object, source: str | Path | None) -> torch.Tensor:
    """``mask`` as a contiguous float32 0/1 tensor, or :class:`InputError` naming ``source``."""
    if not isinstance(name, str):
        raise InputError(source, f"mask key {name!r} is not a parameter name")
    if not isinstance(mask, torch.Tensor):
        raise InputError(source, f"mask {name!r} is not a tensor")
    m = mask.detach().to(torch.float32)
    if not bool(((m == 0) | (m == 1)).all()):
        raise InputError(source, f"mask {name!r} has values other than 0 and 1")
    return m.contiguous()


def prunable_shapes(model: nn.Module) -> dict[str, torch.Size]:
    """Shapes of a model's prunable weights: every convolution weight (4-D ``*.weight``), in parameter order."""
    return {n: p.shape for n, p in model.named_parameters() if n.endswith(".weight") and p.dim() == 4}


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

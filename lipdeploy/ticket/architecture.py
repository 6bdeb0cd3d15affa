"""A ticket's architecture: inferred from tensor names and shapes, and the state dicts checked against it."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..networks import ArchSpec, DeepDecoderSpec, SkipSpec, prunable_names
from .files import StateDict, check_finite


def _shape_model(arch: ArchSpec) -> nn.Module:
    """The reference network on the meta device: names and shapes only, no weight initialisation (loading a ticket
    asks for them several times, and initialising the paper network's 2.2M weights each time is wasted work)."""
    with torch.device("meta"):
        return arch.build()


def prunable_shapes(arch: ArchSpec) -> dict[str, torch.Size]:
    """The shape of every prunable weight of ``arch``'s reference network, in forward order."""
    model = _shape_model(arch)
    params = dict(model.named_parameters())
    return {name: params[name].shape for name in prunable_names(model)}


def reference_shapes(arch: ArchSpec) -> dict[str, torch.Size]:
    """The shape of every entry of ``arch``'s reference state dict (parameters and buffers)."""
    return {k: v.shape for k, v in _shape_model(arch).state_dict().items()}


def check_state(path: Path | str | None, arch: ArchSpec, sd: StateDict) -> None:
    """Fill missing BatchNorm counters (older PyTorch); refuse missing/unexpected tensors and wrong shapes."""
    ref = reference_shapes(arch)
    for key in ref:
        if key.endswith("num_batches_tracked") and key not in sd:
            sd[key] = torch.tensor(0, dtype=torch.long)
    missing = [k for k in ref if k not in sd]
    unexpected = [k for k in sd if k not in ref]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
        raise InputError(path, f"weights do not match {arch.describe()}: " + "; ".join(parts))
    for key, shape in ref.items():
        if not key.endswith("num_batches_tracked") and not sd[key].is_floating_point():
            raise InputError(
                path, f"weight {key!r} has dtype {str(sd[key].dtype).replace('torch.', '')}: floating point expected"
            )
        if tuple(sd[key].shape) != tuple(shape):
            raise InputError(
                path, f"weight {key!r} has shape {list(sd[key].shape)}, the architecture needs {list(shape)}"
            )
    check_finite(Path(str(path)), sd)


def infer_arch(shapes: Mapping[str, torch.Size | tuple[int, ...]], **overrides: Any) -> ArchSpec:
    """Infer the architecture from parameter names and shapes (a state dict's, or a mask dict's weight names).

    Raises ``ValueError`` when the names fit neither a DIP skip network nor a deep decoder.
    """
    shapes = {k: tuple(v) for k, v in shapes.items()}
    candidates: list[ArchSpec] = []
    for build in (_infer_deep_decoder, _infer_skip_reflection, _infer_skip_zero):
        try:
            spec = build(shapes, overrides)
        except (KeyError, IndexError, TypeError, ValueError):
            spec = None
        if spec is not None:
            candidates.append(spec)
    for spec in candidates:
        ref = reference_shapes(spec)
        weights = {k: v for k, v in ref.items() if k.endswith((".weight", ".bias"))}
        if all(shapes.get(k) == tuple(v) for k, v in weights.items()) and all(
            k in ref for k in shapes if k.endswith((".weight", ".bias"))
        ):
            return spec
    raise ValueError(
        "cannot infer the architecture: the tensor names and shapes fit neither a DIP skip net nor a deep decoder"
    )


def _infer_deep_decoder(shapes: Mapping[str, tuple[int, ...]], overrides: Mapping[str, Any]) -> ArchSpec | None:
    convs = sorted(
        (int(m.group(1)), shape) for k, shape in shapes.items() if (m := re.fullmatch(r"(\d+)\.1\.weight", k))
    )
    if len(convs) < 2 or any(len(s) != 4 or s[2:] != (1, 1) for _, s in convs):
        return None
    k = convs[0][1][1]
    return DeepDecoderSpec(k=k, depth=len(convs) - 2, out_channels=convs[-1][1][0], **_only(DeepDecoderSpec, overrides))


def _infer_skip_reflection(shapes, overrides):
    return _infer_skip(shapes, overrides, "reflection")


def _infer_skip_zero(shapes, overrides):
    return _infer_skip(shapes, overrides, "zero")


def _infer_skip(shapes: Mapping[str, tuple[int, ...]], overrides: Mapping[str, Any], pad: str) -> ArchSpec | None:
    c = "1" if pad == "reflection" else "0"  # index of the Conv2d inside Sequential(ReflectionPad2d, Conv2d)
    down, up, skip = [], [], []
    f_skip = 1
    prefix = ""
    in_ch = None
    while True:
        if f"{prefix}1.0.1.{c}.weight" in shapes:  # Concat(skip, deeper): the skip branch's conv
            w = shapes[f"{prefix}1.0.1.{c}.weight"]
            skip.append(w[0])
            f_skip = w[-1]
            deeper = f"{prefix}1.1."
        else:
            skip.append(0)
            deeper = f"{prefix}1."
        wd = shapes[f"{deeper}1.{c}.weight"]
        if in_ch is None:
            in_ch = wd[1]
        down.append(wd[0])
        f_down = wd[-1]
        wu = shapes[f"{prefix}3.{c}.weight"]
        up.append(wu[0])
        f_up = wu[-1]
        need1x1 = f"{prefix}6.{c}.weight" in shapes
        if any(k.startswith(f"{deeper}7.") for k in shapes):
            prefix = f"{deeper}7."
        else:
            break
    final = "9" if need1x1 else "6"
    out = shapes[f"{final}.{c}.weight"][0]
    spec_args = dict(
        in_channels=in_ch,
        out_channels=out,
        channels_down=tuple(down),
        channels_up=tuple(up),
        channels_skip=tuple(skip),
        filter_size_down=f_down,
        filter_size_up=f_up,
        filter_skip_size=f_skip,
        pad=pad,
        bias=f"{final}.{c}.bias" in shapes,
        need1x1_up=need1x1,
    )
    spec_args.update(_only(SkipSpec, overrides))
    return SkipSpec(**spec_args)


def _only(cls: type, overrides: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in overrides.items() if k in names and v is not None}


def infer_or_fail(path: Path, sd: Mapping[str, torch.Tensor], overrides: Mapping[str, Any]) -> ArchSpec:
    """:func:`infer_arch` of a state dict, its failure an :class:`InputError` about ``path``."""
    try:
        return infer_arch({k: v.shape for k, v in sd.items()}, **overrides)
    except ValueError as exc:
        raise InputError(path, str(exc)) from None


def with_overrides(arch: ArchSpec, overrides: Mapping[str, Any]) -> ArchSpec:
    """``arch`` with the given fields set (``None`` values and fields ``arch`` does not have are ignored)."""
    return dataclasses.replace(arch, **_only(type(arch), overrides))

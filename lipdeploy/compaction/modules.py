"""The runtime of a compacted network: its standard modules and the straight-line program that runs them.

Everything here is what a :class:`CompactNet` holds and executes at inference or fitting time; nothing here knows how
the network was compacted (that is :mod:`lipdeploy.compaction.build`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers import CompactLayer, LayerCompaction

# --------------------------------------------------------------------------------------------------- modules


class ImageNorm(nn.Module):
    """Per-image, per-channel normalisation over H x W with BatchNorm's biased variance, ``eps`` and affine.

    Identical to a train-mode ``BatchNorm2d`` on a batch of one (DIP's semantics) without updating running statistics.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone())
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 1 and not torch.onnx.is_in_onnx_export():
            # One image: batch statistics are the image's. F.batch_norm without running buffers is what the reference
            # computes, and is faster on CPU than instance_norm's reshape + weight repeat (measured: paper network at
            # 128x128, 59% sparse, 1 thread: compacted forward 204 ms with instance_norm vs 156 ms masked reference).
            return F.batch_norm(x, None, None, self.weight, self.bias, training=True, eps=self.eps)
        # ONNX (InstanceNormalization) and batches of several images: per-image statistics.
        return F.instance_norm(x, weight=self.weight, bias=self.bias, use_input_stats=True, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}"


class ChannelAffine(nn.Module):
    """``x * scale + shift`` per channel: an eval-mode BatchNorm that could not be folded into a conv."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.detach().clone().view(1, -1, 1, 1))
        self.register_buffer("shift", shift.detach().clone().view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift

    def extra_repr(self) -> str:
        return f"{self.scale.numel()}"


class ConstPlanes(nn.Module):
    """Constant channels at ``scale`` times the input's resolution: ``values[c]`` everywhere.

    Used where a constant cannot be folded into a bias: input planes of a zero-padded conv, and constant output
    (image) channels. The shape comes from the network input ``x`` (strided slicing or nearest upsampling), so the
    module works at any input size that is a multiple of the network's stride and exports to ONNX.
    """

    def __init__(self, values: torch.Tensor, down: int = 1, up: int = 1) -> None:
        super().__init__()
        self.register_buffer("values", values.detach().clone().view(1, -1, 1, 1))
        self.down = int(down)
        self.up = int(up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x[:, :1]
        if self.down > 1:
            t = t[:, :, :: self.down, :: self.down]
        if self.up > 1:
            t = F.interpolate(t, scale_factor=self.up, mode="nearest")
        return torch.zeros_like(t) + self.values

    def extra_repr(self) -> str:
        return f"{self.values.numel()}, down={self.down}, up={self.up}"


def _channel_view(values: torch.Tensor, rank: int) -> torch.Tensor:
    """``values`` [C] shaped to broadcast over a tensor of ``rank`` (2: [N, C], 4: [N, C, H, W])."""
    return values.view(1, -1, *([1] * (rank - 2)))


class ConstMap(nn.Module):
    """Constant channels at an absolute resolution (a generator's maps), or constant features of a vector.

    ``values``: [C] (each channel one value) or [C, H, W] (fixed maps, e.g. a dead linear layer's output viewed as
    4 x 4); ``size``: (H, W) of the maps, None for a vector [N, C]. The batch size comes from the network input ``x``,
    a vector [N, L] (maps of absolute size only arise from a vector input).
    """

    def __init__(self, values: torch.Tensor, size: tuple[int, int] | None) -> None:
        super().__init__()
        self.size = None if size is None else (int(size[0]), int(size[1]))
        shape = (1, -1) if size is None else ((1, *values.shape) if values.dim() == 3 else (1, -1, 1, 1))
        self.register_buffer("values", values.detach().clone().reshape(shape))
        if size is not None:
            self.register_buffer("plane", torch.zeros((1, 1, *self.size), dtype=values.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [N, 1]: the batch of the input (a vector: absolute sizes only follow a vector viewed as maps). A product,
        # not zeros_like, which exports as ConstantOfShape (a tensor sized by data, which `lipdeploy run` refuses);
        # a non-finite input makes the reference's output non-finite anyway.
        base = x[:, :1] * 0.0
        if self.size is None:
            return base + self.values
        return base.view(-1, 1, 1, 1) + self.values + self.plane

    def extra_repr(self) -> str:
        return f"{self.values.shape[1]}, size={self.size}"


class Scale(nn.Module):
    """``x * factor``: a constant output scale (equalized learning rate), kept as an op so that the compacted layers'
    weights stay the reference's (a fit of the compacted network moves the same parameters with the same Adam steps)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = float(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"{self.factor!r}"


class CompactPixelNorm(nn.Module):
    """Pixel norm over the reference's ``channels``, of which only the live ones are present in ``x``.

    ``x * rsqrt((sum(x^2) + const_square) / channels + eps)``: the channels compaction removed were constant, and
    ``const_square`` is the sum of their squares. Constant nonzero channels that a later layer reads are no longer
    constant after the norm (the factor varies per pixel): they are appended, ``values * factor``, after ``x``'s.
    ``keep``: the channels of ``x`` to output (None: all); the others count in the mean but no later layer reads them.
    """

    def __init__(
        self, channels: int, const_square: float, values: torch.Tensor, eps: float, keep: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        self.channels = int(channels)
        self.const_square = float(const_square)
        self.eps = float(eps)
        self.register_buffer("values", values.detach().clone().reshape(-1))
        self.register_buffer("keep", keep.clone() if keep is not None else None)
        self.appended = int(values.numel())  # a Python int: the traced graph does not branch on a tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        square = (x * x).sum(dim=1, keepdim=True)
        if self.const_square:
            square = square + self.const_square
        factor = torch.rsqrt(square / self.channels + self.eps)
        out = (x if self.keep is None else x[:, self.keep]) * factor
        if self.appended:
            out = torch.cat([out, _channel_view(self.values, x.dim()) * factor], dim=1)
        return out

    def extra_repr(self) -> str:
        return f"channels={self.channels}, const_square={self.const_square:.6g}, appended={self.appended}"


class AlignedSum(nn.Module):
    """``sum_j signs[j] * x_j[:, index_j] + shift``: a sum of tensors whose present channels differ.

    Each input's channels are gathered into the output's channel order (``index_j`` = None: already in it); a channel
    an input lacks (it is constant there) reads an appended zero channel, and the constants of all inputs are in
    ``shift`` (None: no constant).
    """

    def __init__(self, indices: list[torch.Tensor | None], signs: list[int], shift: torch.Tensor | None) -> None:
        super().__init__()
        self.signs = [int(s) for s in signs]
        self.gathers = [idx is not None for idx in indices]
        for j, idx in enumerate(indices):
            self.register_buffer(f"index{j}", idx if idx is not None else torch.zeros(0, dtype=torch.long))
        self.register_buffer("shift", shift.detach().clone().reshape(-1) if shift is not None else torch.zeros(0))
        self.shifted = shift is not None

    def _aligned(self, j: int, x: torch.Tensor) -> torch.Tensor:
        if not self.gathers[j]:
            return x
        padded = torch.cat([x, x[:, :1] * 0.0], dim=1)  # the zero channel (see ConstMap for why not zeros_like)
        return padded[:, getattr(self, f"index{j}")]

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        out = self._aligned(0, xs[0])
        if self.signs[0] < 0:
            out = -out
        for j in range(1, len(xs)):
            x = self._aligned(j, xs[j])
            out = out + x if self.signs[j] > 0 else out - x
        if self.shifted:
            out = out + _channel_view(self.shift, out.dim())
        return out

    def extra_repr(self) -> str:
        return f"signs={self.signs}"


class ViewMap(nn.Module):
    """A vector's features viewed as ``channels`` maps of ``size`` (``nn.Unflatten(1, (C, H, W))``), after gathering
    the features of the kept channels: ``index`` (None: all, in order) into ``x``'s features followed by ``values``
    (constant features of a channel whose other features are live, or whose constants differ)."""

    def __init__(self, index: torch.Tensor | None, values: torch.Tensor, channels: int, size: tuple[int, int]) -> None:
        super().__init__()
        self.register_buffer("index", index.clone() if index is not None else None)
        self.register_buffer("values", values.detach().clone().reshape(1, -1))
        self.channels = int(channels)
        self.size = (int(size[0]), int(size[1]))
        self.constants = int(values.numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.constants:
            x = torch.cat([x, x[:, :1] * 0.0 + self.values], dim=1)
        if self.index is not None:
            x = x[:, self.index]
        return x.reshape(-1, self.channels, *self.size)  # a constant shape: no Shape op in the exported graph

    def extra_repr(self) -> str:
        return f"{self.channels}, size={self.size}"


def _crop_cat(xs: list[torch.Tensor]) -> torch.Tensor:
    """``Concat``'s centre crop to a common size, then ``cat`` along channels."""
    if len(xs) == 1:
        return xs[0]
    h = min(x.shape[2] for x in xs)
    w = min(x.shape[3] for x in xs)
    out = []
    for x in xs:
        dh, dw = (x.shape[2] - h) // 2, (x.shape[3] - w) // 2
        out.append(x[:, :, dh : dh + h, dw : dw + w] if (dh or dw or x.shape[2] != h or x.shape[3] != w) else x)
    return torch.cat(out, dim=1)


@dataclass(frozen=True)
class Step:
    """One op of a :class:`CompactNet` program: ``values[out] = modules[module](*values[inputs])``.

    ``kind``: "module" (one input), "sum" (a module of several inputs), "cat" (several inputs, no module), "const"
    (a module of the network input), "gather" (``module`` names a buffer of channel indices). Value 0 is the network
    input.
    """

    out: int
    kind: str
    module: str | None
    inputs: tuple[int, ...]


class CompactNet(nn.Module):
    """A compacted network: a fixed straight-line program over named submodules (traceable, ONNX-exportable).

    Attributes: ``steps`` (the program), ``input_channels`` (what ``forward`` expects), ``input_channels_used`` (the
    input channels any layer reads; the others are multiplied by zero columns), ``bn`` ("image" or "running"),
    ``layers`` (per reference conv: its compaction, see :class:`LayerCompaction`) and ``convs`` (conv module key ->
    :class:`CompactLayer`, the hand-off to backends, fitting and export: geometry, weight, mask, reference rows and
    columns, pattern). All are given to the constructor; nothing is attached later.
    """

    def __init__(
        self,
        steps: list[Step],
        modules: dict[str, nn.Module],
        output: int,
        input_channels: int,
        input_channels_used: list[int],
        bn: str,
        layers: list[LayerCompaction],
        arch: Any = None,
        convs: Mapping[str, CompactLayer] | None = None,
    ) -> None:
        super().__init__()
        self.ops = nn.ModuleDict(modules)
        self.steps = list(steps)
        self.output = output
        self.input_channels = input_channels
        self.input_channels_used = list(input_channels_used)
        self.bn = bn
        self.layers = list(layers)
        self.arch = arch
        self.convs: dict[str, CompactLayer] = dict(convs or {})
        unknown = set(self.convs) - set(self.ops)
        if unknown:
            raise ValueError(f"CompactLayer keys without a module: {sorted(unknown)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values: dict[int, torch.Tensor] = {0: x}
        # Drop each value after its last reader, as a nested Sequential does: keeping every intermediate alive
        # defeats the allocator's buffer reuse (measured on CPU, paper network at 128x128: 22% slower forward).
        pending = reader_counts(self.steps)
        for step in self.steps:
            if step.kind == "cat":
                values[step.out] = _crop_cat([values[i] for i in step.inputs])
            elif step.kind == "const":
                values[step.out] = self.ops[step.module](x)
            elif step.kind == "gather":
                values[step.out] = values[step.inputs[0]][:, getattr(self, step.module)]
            elif step.kind == "sum":
                values[step.out] = self.ops[step.module](*[values[i] for i in step.inputs])
            else:
                values[step.out] = self.ops[step.module](values[step.inputs[0]])
            for i in step.inputs:
                pending[i] -= 1
                if pending[i] == 0 and i != self.output:
                    del values[i]
        return values[self.output]

    def extra_repr(self) -> str:
        return f"bn={self.bn!r}, steps={len(self.steps)}"


# --------------------------------------------------------------------------------------------------- graph


def reader_counts(steps: list[Step]) -> dict[int, int]:
    """How many steps read each value id."""
    counts: dict[int, int] = {}
    for st in steps:
        for i in st.inputs:
            counts[i] = counts.get(i, 0) + 1
    return counts

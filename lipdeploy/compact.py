"""Exact structural compaction: remove every channel that provably cannot affect the output.

A masked network computes exactly what a smaller dense network computes once two kinds of channels are gone:

* **constant** ("dead") channels: a conv output whose weights on every non-constant input are zero is a spatial
  constant (its bias plus the folded contributions of constant inputs). Per-channel ops keep it constant: BatchNorm,
  activations, bilinear/nearest upsampling, reflection padding, concatenation. Its value is computed once and folded
  into every consumer's bias: ``b[o] += sum_taps W[o, c] * v[c]``;
* **unread** channels: a non-constant channel that no consumer reads with a nonzero weight (after the consumers
  themselves were compacted). Its producer row and BatchNorm entries go.

Constantness propagates forwards, readness backwards; each depends on the other only through the weights, so one
forward pass (constants) then one backward pass (needed channels) reaches the fixed point: removing an unread channel
never makes another channel constant, and a constant channel is never read (it is folded).

Exactness rules (what "provably" means here):

* **Reflection padding / 1x1 convs**: a constant plane stays the same constant after reflection padding, so folding
  ``v * sum(W[o, c])`` into the bias is exact at every pixel, borders included.
* **Zero padding** (``pad="zero"`` nets, Conv2d padding > 0 with ``padding_mode="zeros"``): a constant ``v != 0`` is
  *not* constant after zero padding (the border taps see zeros), so it is not folded. It is *materialised*: the
  compacted conv reads it as an extra input plane filled with ``v`` (:class:`ConstPlanes`) and zero-pads it itself,
  which reproduces the reference exactly. Its producer chain is still removed. A constant ``0`` folds to nothing.
* **BatchNorm, per-image statistics** (``bn="image"``, DIP's semantics: train-mode BatchNorm on a batch of one): a
  constant channel has zero variance and ``x - mean = 0``, so it normalises to exactly BatchNorm's shift ``beta``,
  whatever the constant. (PyTorch's own kernel computes ``x * a + b`` and returns ``beta`` plus a rounding residue of
  about ``|v| * gamma * 1e-5 ... 1e-4`` for a float32 constant; compaction returns the exact value. A residue of that
  kind is a per-channel constant, so the next per-image BatchNorm removes it again.) Non-constant channels use
  :class:`ImageNorm` (= ``F.instance_norm``: per image, per channel, biased variance, BatchNorm's ``eps`` and affine;
  identical to train-mode BatchNorm at batch size 1, never touches running statistics, exports to ONNX as
  ``InstanceNormalization``). For batches of several images it normalises each image separately, which is DIP's
  semantics image by image.
* **BatchNorm, running statistics** (``bn="running"``, eval mode): a constant maps to
  ``(v - running_mean) / sqrt(running_var + eps) * gamma + beta``. Live channels fold into the producing conv when
  the BatchNorm directly follows a conv (``W' = W * s``, ``b' = (b - mean) * s + beta``,
  ``s = gamma / sqrt(var + eps)``, exact whatever the padding since it acts on the conv's output); otherwise a fixed
  per-channel affine (:class:`ChannelAffine`, ONNX ``Mul``/``Add``).
* **Whole dead layers / branches**: a conv with an all-zero mask outputs its bias everywhere; everything downstream
  that only depends on it folds, and a concat piece without any live channel disappears.
* The image channels (the output) are never removed: constant output channels are materialised as planes.

The compacted module (:class:`CompactNet`) takes the same noise input as the reference (all input channels; those no
layer reads are multiplied by zero columns; ``input_channels_used`` lists the ones that matter). Input height and
width must be multiples of the network's total stride (as for the reference; concat centre-crops are kept anyway).
It contains only standard ops (Conv2d, instance norm, Mul/Add, Upsample, Concat, LeakyReLU/ReLU, Sigmoid, Slice) and
is differentiable (it can be fitted further); biases absorb the folded constants, so constant channels' BatchNorm
shifts are no longer separate parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .networks import Concat
from .ticket import BatchNormMode, Ticket

__all__ = [
    "ChannelAffine",
    "CompactNet",
    "CompactionReport",
    "ConstPlanes",
    "ImageNorm",
    "LayerCompaction",
    "analyze_compaction",
    "compact",
]


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

    ``kind``: "module" (one input), "cat" (several inputs, no module), "gather" (``module`` names a buffer of channel
    indices). Value 0 is the network input.
    """

    out: int
    kind: str
    module: str | None
    inputs: tuple[int, ...]


class CompactNet(nn.Module):
    """A compacted network: a fixed straight-line program over named submodules (traceable, ONNX-exportable).

    Attributes: ``steps`` (the program), ``input_channels`` (what ``forward`` expects), ``input_channels_used`` (the
    input channels any layer reads; the others are multiplied by zero columns), ``bn`` ("image" or "running") and
    ``layers`` (per reference conv: its compaction, see :class:`LayerCompaction`) and ``conv_index`` (conv module
    key -> (reference conv name, kept output channels, input columns as reference channel indices, bool mask of the
    compacted weight): the mask, not the weight's zeros, defines which weights a fitting may move).
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values: dict[int, torch.Tensor] = {0: x}
        # Drop each value after its last reader, as a nested Sequential does: keeping every intermediate alive
        # defeats the allocator's buffer reuse (measured on CPU, paper network at 128x128: 22% slower forward).
        pending = _reader_counts(self.steps)
        for step in self.steps:
            if step.kind == "cat":
                values[step.out] = _crop_cat([values[i] for i in step.inputs])
            elif step.kind == "const":
                values[step.out] = self.ops[step.module](x)
            elif step.kind == "gather":
                values[step.out] = values[step.inputs[0]][:, getattr(self, step.module)]
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


@dataclass
class _Node:
    kind: str  # input, conv, bn, act, up, pad, sigmoid, cat
    inputs: list[int]
    channels: int
    name: str
    module: nn.Module | None = None
    scale: Fraction = Fraction(1)


def _graph(model: nn.Module, in_channels: int) -> list[_Node]:
    """Flatten a reference-layout network (nested Sequential / Concat) into a topologically ordered op list."""
    nodes = [_Node("input", [], in_channels, "input")]

    def add(kind: str, src: list[int], channels: int, name: str, module: nn.Module | None, scale: Fraction) -> int:
        nodes.append(_Node(kind, src, channels, name, module, scale))
        return len(nodes) - 1

    def walk(module: nn.Module, src: int, prefix: str) -> int:
        n = nodes[src]
        if isinstance(module, nn.Sequential):
            for name, child in module.named_children():
                src = walk(child, src, f"{prefix}{name}.")
            return src
        if isinstance(module, Concat):
            outs = [walk(child, src, f"{prefix}{name}.") for name, child in module.named_children()]
            if module.dim != 1:
                raise ValueError("compaction supports channel concatenation only (Concat(dim=1))")
            return add(
                "cat", outs, sum(nodes[o].channels for o in outs), prefix.rstrip("."), None, nodes[outs[0]].scale
            )
        name = prefix.rstrip(".")
        if isinstance(module, nn.Conv2d):
            if module.groups != 1 or module.dilation != (1, 1) or module.in_channels != n.channels:
                raise ValueError(f"conv {name!r}: only groups=1, dilation=1 convs that match their input are supported")
            if module.padding_mode not in ("zeros", "reflect"):
                raise ValueError(f"conv {name!r}: padding_mode {module.padding_mode!r} not supported")
            s = module.stride[0]
            if module.kernel_size[0] != module.kernel_size[1] or module.stride[0] != module.stride[1]:
                raise ValueError(f"conv {name!r}: only square kernels and strides are supported")
            scale = n.scale / s  # 'same'-padded strided convs on sizes that are multiples of the stride
            return add("conv", [src], module.out_channels, name, module, scale)
        if isinstance(module, nn.BatchNorm2d):
            return add("bn", [src], n.channels, name, module, n.scale)
        if isinstance(module, (nn.LeakyReLU, nn.ReLU)):
            return add("act", [src], n.channels, name, module, n.scale)
        if isinstance(module, nn.Sigmoid):
            return add("sigmoid", [src], n.channels, name, module, n.scale)
        if isinstance(module, nn.Upsample):
            sf = module.scale_factor
            if sf is None or (isinstance(sf, tuple) and len(set(sf)) != 1):
                raise ValueError(f"upsample {name!r}: needs one scale_factor")
            sf = sf[0] if isinstance(sf, tuple) else sf
            if float(sf) != int(sf):
                raise ValueError(f"upsample {name!r}: integer scale factors only")
            return add("up", [src], n.channels, name, module, n.scale * int(sf))
        if isinstance(module, nn.ReflectionPad2d):
            return add("pad", [src], n.channels, name, module, n.scale)
        if isinstance(module, nn.Identity):
            return src
        raise ValueError(f"compaction does not know module {name!r} ({type(module).__name__})")

    walk(model, 0, "")
    return nodes


def _consumers(nodes: list[_Node]) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in nodes]
    for i, n in enumerate(nodes):
        for s in n.inputs:
            out[s].append(i)
    return out


def _bn_running_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of an eval-mode BatchNorm, float64."""
    c = bn.num_features
    g = bn.weight.detach().double() if bn.weight is not None else torch.ones(c, dtype=torch.float64)
    b = bn.bias.detach().double() if bn.bias is not None else torch.zeros(c, dtype=torch.float64)
    if bn.track_running_stats and bn.running_mean is not None:
        s = g / torch.sqrt(bn.running_var.detach().double() + bn.eps)
        return s, b - bn.running_mean.detach().double() * s
    return g, b  # no running statistics: eval-mode BatchNorm uses batch statistics; handled as "image" by the caller


def _image_bn(bn: nn.BatchNorm2d, mode: str) -> bool:
    return mode == "image" or not bn.track_running_stats or bn.running_mean is None


def _act_fn(module: nn.Module):
    if isinstance(module, nn.LeakyReLU):
        return lambda v: F.leaky_relu(v, module.negative_slope)
    return torch.relu


def _foldable(conv: nn.Conv2d) -> bool:
    """A constant input plane folds exactly into the bias when the conv adds no zero padding."""
    return (conv.padding[0] == 0 and conv.padding[1] == 0) or conv.padding_mode == "reflect"


@dataclass
class _Plan:
    nodes: list[_Node]
    const: list[torch.Tensor]  # float64 [C], NaN where the channel is not constant
    need: list[torch.Tensor]  # bool [C]: live and read by someone
    masks: dict[str, torch.Tensor]  # conv name -> bool kept-weight pattern
    materialise: dict[int, torch.Tensor]  # conv node -> bool [C_in]: constant inputs read as planes


def _plan(model: nn.Module, in_channels: int, bn: str, masks: dict[str, torch.Tensor] | None) -> _Plan:
    nodes = _graph(model, in_channels)
    pattern: dict[str, torch.Tensor] = {}
    for n in nodes:
        if n.kind == "conv":
            m = masks.get(n.name) if masks else None
            pattern[n.name] = (m != 0) if m is not None else (n.module.weight.detach() != 0)
    nan = float("nan")
    const: list[torch.Tensor] = []
    materialise: dict[int, torch.Tensor] = {}
    # ---- forward: constant channels and their values (float64)
    for i, n in enumerate(nodes):
        if n.kind == "input":
            const.append(torch.full((n.channels,), nan, dtype=torch.float64))
            continue
        src = const[n.inputs[0]]
        if n.kind == "conv":
            conv = n.module
            nzk = pattern[n.name].any(dim=(2, 3))  # [Cout, Cin] kernel has a kept weight
            is_const = ~torch.isnan(src)
            mat = is_const & (src != 0) & (not _foldable(conv)) & nzk.any(0)
            materialise[i] = mat
            live_in = ~is_const | mat
            row_live = (nzk & live_in.unsqueeze(0)).any(1)
            w = conv.weight.detach().double() * pattern[n.name]
            fold = torch.where(is_const & ~mat, src, torch.zeros_like(src))
            val = w.sum(dim=(2, 3)) @ fold
            if conv.bias is not None:
                val = val + conv.bias.detach().double()
            const.append(torch.where(row_live, torch.full_like(val, nan), val))
        elif n.kind == "bn":
            m = n.module
            if _image_bn(m, bn):
                beta = m.bias.detach().double() if m.bias is not None else torch.zeros(m.num_features).double()
                const.append(torch.where(torch.isnan(src), src, beta))
            else:
                s, t = _bn_running_affine(m)
                const.append(src * s + t)
        elif n.kind == "act":
            const.append(_act_fn(n.module)(src))
        elif n.kind == "sigmoid":
            const.append(torch.sigmoid(src))
        elif n.kind in ("up", "pad"):
            const.append(src.clone())
        elif n.kind == "cat":
            const.append(torch.cat([const[j] for j in n.inputs]))
        else:  # pragma: no cover
            raise AssertionError(n.kind)
    # ---- backward: which live channels are read (the output's live channels always are)
    need = [torch.zeros(n.channels, dtype=torch.bool) for n in nodes]
    last = len(nodes) - 1
    need[last] = torch.isnan(const[last])
    for i in range(last, 0, -1):
        n = nodes[i]
        nd = need[i]
        if n.kind == "conv":
            nzk = pattern[n.name].any(dim=(2, 3))
            read = nzk[nd].any(0) if bool(nd.any()) else torch.zeros(nzk.shape[1], dtype=torch.bool)
            s = n.inputs[0]
            need[s] |= read & torch.isnan(const[s])
            materialise[i] = materialise[i] & read
        elif n.kind == "cat":
            off = 0
            for j in n.inputs:
                c = nodes[j].channels
                need[j] |= nd[off : off + c]
                off += c
        else:
            need[n.inputs[0]] |= nd
    return _Plan(nodes, const, need, pattern, materialise)


# --------------------------------------------------------------------------------------------------- report


@dataclass
class LayerCompaction:
    """What compaction did to one conv layer (reference path ``name``).

    ``dead_outputs``: outputs that are constant (all weights on live inputs zero), folded downstream;
    ``unread_outputs``: live outputs no consumer reads; ``in_after`` counts the compacted conv's input channels
    (including zero columns for channels another consumer of the same tensor still reads, and materialised constant
    planes); ``zero_kernels_after``: all-zero ``(out, in)`` kernels left in the compacted weight (work for the sparse
    kernels); ``macs_*``: dense multiply-accumulates at the analysed size.
    """

    name: str
    kernel: int
    stride: int
    in_before: int
    out_before: int
    in_after: int
    out_after: int
    dead_outputs: int
    unread_outputs: int
    removed_inputs: int
    materialised_inputs: int
    kernels_before: int
    zero_kernels_before: int
    zero_kernels_after: int
    nnz_before: int
    nnz_after: int
    out_hw: tuple[int, int] = (0, 0)
    macs_before: int = 0
    macs_after: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["out_hw"] = list(self.out_hw)
        return d


@dataclass
class CompactionReport:
    """Per-layer compaction summary (see :func:`analyze_compaction`)."""

    layers: list[LayerCompaction]
    height: int
    width: int
    bn: str
    params_before: int = 0
    params_after: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def macs_before(self) -> int:
        return sum(layer.macs_before for layer in self.layers)

    @property
    def macs_after(self) -> int:
        return sum(layer.macs_after for layer in self.layers)

    @property
    def nnz_before(self) -> int:
        return sum(layer.nnz_before for layer in self.layers)

    @property
    def nnz_after(self) -> int:
        return sum(layer.nnz_after for layer in self.layers)

    def totals(self) -> dict[str, Any]:
        ls = self.layers
        k3 = [la for la in ls if la.kernel > 1]
        return {
            "dead_outputs": sum(la.dead_outputs for la in ls),
            "unread_outputs": sum(la.unread_outputs for la in ls),
            "removed_inputs": sum(la.removed_inputs for la in ls),
            "output_channels_before": sum(la.out_before for la in ls),
            "output_channels_after": sum(la.out_after for la in ls),
            "input_channels_before": sum(la.in_before for la in ls),
            "input_channels_after": sum(la.in_after for la in ls),
            "nnz_before": self.nnz_before,
            "nnz_after": self.nnz_after,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "zero_kxk_kernels_after": sum(la.zero_kernels_after for la in k3),
            "kxk_kernels_after": sum(la.out_after * la.in_after for la in k3),
            "params_before": self.params_before,
            "params_after": self.params_after,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "height": self.height,
            "width": self.width,
            "bn": self.bn,
            "totals": self.totals(),
            "layers": [la.to_dict() for la in self.layers],
            "notes": list(self.notes),
            "summary": self.summary(),
        }

    def format(self) -> str:
        """A plain-text table (one row per conv) plus totals."""
        nw = max([5] + [len(la.name) for la in self.layers]) + 1
        head = f"{'layer':<{nw}}{'k':>2} {'in':>9} {'out':>9} {'dead':>5} {'unread':>6} {'zero kernels':>13} {'nnz':>8}"
        rows = [head, "-" * len(head)]
        for la in self.layers:
            kern = la.out_after * la.in_after
            zk = f"{la.zero_kernels_after}/{kern}" if la.kernel > 1 else "-"
            rows.append(
                f"{la.name:<{nw}}{la.kernel:>2} {la.in_before:>4}>{la.in_after:<4} {la.out_before:>4}>{la.out_after:<4}"
                f" {la.dead_outputs:>5} {la.unread_outputs:>6} {zk:>13} {la.nnz_after:>8}"
            )
        rows.append(self.summary())
        rows.extend(self.notes)
        return "\n".join(rows)

    def summary(self) -> str:
        """One line: what compaction removes, and what it leaves to the sparse kernels."""
        t = self.totals()
        frac = t["zero_kxk_kernels_after"] / max(1, t["kxk_kernels_after"])
        return (
            f"removed output channels: {t['dead_outputs']} dead (constant, folded) + {t['unread_outputs']} unread; "
            f"input channels {t['input_channels_before']} -> {t['input_channels_after']}; "
            f"dense MACs at {self.height}x{self.width}: {t['macs_before'] / 1e9:.3f}G -> {t['macs_after'] / 1e9:.3f}G; "
            f"all-zero kxk kernels left: {t['zero_kxk_kernels_after']} ({frac:.0%})"
        )


# --------------------------------------------------------------------------------------------------- building


def _as_model(
    ticket_or_model: Ticket | nn.Module, weights: str, bn: str
) -> tuple[nn.Module, int, dict[str, torch.Tensor] | None, Any]:
    if bn not in ("image", "running"):
        raise ValueError(f"bn must be 'image' or 'running', got {bn!r}")
    if isinstance(ticket_or_model, Ticket):
        t = ticket_or_model
        model = t.build(weights=weights, bn=bn)  # type: ignore[arg-type]
        masks = {name[: -len(".weight")]: m for name, m in t.masks.items()}
        return model, t.arch.input_channels, masks, t.arch
    if isinstance(ticket_or_model, CompactNet):
        raise ValueError("already compacted")
    model = ticket_or_model
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise ValueError("the model has no Conv2d layer")
    return model, first.in_channels, None, None


def _scale_ints(scale: Fraction) -> tuple[int, int]:
    if scale <= 1:
        if scale.numerator != 1:
            raise ValueError(f"unsupported resolution ratio {scale}")
        return scale.denominator, 1
    if scale.denominator != 1:
        raise ValueError(f"unsupported resolution ratio {scale}")
    return 1, scale.numerator


@torch.no_grad()
def _build(model: nn.Module, in_channels: int, bn: str, masks, arch) -> CompactNet:
    plan = _plan(model, in_channels, bn, masks)
    nodes, const, need = plan.nodes, plan.const, plan.need
    consumers = _consumers(nodes)
    dtype = next(model.parameters()).dtype
    modules: dict[str, nn.Module] = {}
    steps: list[Step] = []
    layers: list[LayerCompaction] = []
    # kept channels of each node's tensor (input: all channels, so the input contract stays the same)
    kept: list[torch.Tensor] = []
    alias: dict[int, int] = {}  # node -> value id actually holding its tensor (folded BN aliases its conv)
    conv_step: dict[int, str] = {}  # node -> conv module key, for folding a following running BN
    conv_index: dict[str, tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def key(n: _Node, kind: str) -> str:
        base = f"{kind}_{n.name.replace('.', '_')}" if n.name else kind
        k, i = base, 1
        while k in modules:
            k, i = f"{base}_{i}", i + 1
        return k

    def vid(i: int) -> int:
        return alias.get(i, i)

    for i, n in enumerate(nodes):
        if n.kind == "input":
            kept.append(torch.arange(n.channels))
            continue
        # channels physically present: a conv computes the channels someone reads; per-channel ops process all the
        # channels of their source (a shared source may carry channels that only another consumer reads)
        if n.kind == "conv":
            idx = torch.nonzero(need[i]).flatten()
        elif n.kind == "cat":
            offs = [0]
            for j in n.inputs:
                offs.append(offs[-1] + nodes[j].channels)
            idx = torch.cat([kept[j] + o for j, o in zip(n.inputs, offs[:-1], strict=True)])
        else:
            idx = kept[n.inputs[0]]
        kept.append(idx)
        if n.kind == "conv":
            conv: nn.Conv2d = n.module
            s = n.inputs[0]
            pat = plan.masks[n.name]
            w_full = conv.weight.detach().double() * pat
            k = conv.kernel_size[0]
            stored_in = kept[s]  # channels present in the source tensor
            mat = torch.nonzero(plan.materialise[i]).flatten()
            src_const = const[s]
            fold = ~torch.isnan(src_const) & ~plan.materialise[i]
            dead = int((~torch.isnan(const[i])).sum())
            unread = int((torch.isnan(const[i]) & ~need[i]).sum())
            nzk_before = pat.any(dim=(2, 3))
            info = LayerCompaction(
                name=n.name,
                kernel=k,
                stride=conv.stride[0],
                in_before=conv.in_channels,
                out_before=conv.out_channels,
                in_after=0,
                out_after=0,
                dead_outputs=dead,
                unread_outputs=unread,
                removed_inputs=0,
                materialised_inputs=len(mat),
                kernels_before=int(nzk_before.numel()),
                zero_kernels_before=int((~nzk_before).sum()),
                zero_kernels_after=0,
                nnz_before=int(pat.sum()),
                nnz_after=0,
            )
            layers.append(info)
            if len(idx) == 0:
                info.removed_inputs = conv.in_channels
                continue
            cols = torch.cat([stored_in, mat])
            w = w_full[idx][:, cols]
            b = (
                conv.bias.detach().double()[idx]
                if conv.bias is not None
                else torch.zeros(len(idx), dtype=torch.float64)
            )
            if bool(fold.any()):
                b = b + w_full[idx][:, fold].sum(dim=(2, 3)) @ src_const[fold]
            # input value: the source tensor, plus materialised constant planes
            pieces = [vid(s)] if len(stored_in) else []
            if len(mat):
                down, up = _scale_ints(nodes[s].scale)
                ck = key(n, "const")
                modules[ck] = ConstPlanes(src_const[mat].to(dtype), down, up)
                cid = -(len(steps) + 1) - 1000000
                steps.append(Step(cid, "const", ck, ()))
                pieces.append(cid)
            if len(pieces) == 2:
                cat_id = -(len(steps) + 1) - 2000000
                steps.append(Step(cat_id, "cat", None, tuple(pieces)))
                pieces = [cat_id]
            new = nn.Conv2d(
                len(cols),
                len(idx),
                k,
                conv.stride,
                conv.padding,
                bias=conv.bias is not None or bool(fold.any()),
                padding_mode=conv.padding_mode,
            ).to(dtype)
            new.weight.copy_(w.to(dtype))
            if new.bias is not None:
                new.bias.copy_(b.to(dtype))
            mk = key(n, "conv")
            modules[mk] = new
            conv_index[mk] = (n.name, idx, cols, pat[idx][:, cols])
            steps.append(Step(i, "module", mk, (pieces[0],)))
            conv_step[i] = mk
            info.in_after, info.out_after = len(cols), len(idx)
            info.removed_inputs = conv.in_channels - len(cols)
            nzk_after = pat[idx][:, cols].any(dim=(2, 3))  # cols are reference channel indices
            info.zero_kernels_after = int((~nzk_after).sum())
            info.nnz_after = int(pat[idx][:, cols].sum())
            continue
        if len(idx) == 0:
            continue
        s = n.inputs[0]
        if n.kind == "bn":
            m: nn.BatchNorm2d = n.module
            if _image_bn(m, bn):
                g = m.weight.detach()[idx] if m.weight is not None else torch.ones(len(idx))
                be = m.bias.detach()[idx] if m.bias is not None else torch.zeros(len(idx))
                mk = key(n, "norm")
                modules[mk] = ImageNorm(g.to(dtype), be.to(dtype), m.eps)
                steps.append(Step(i, "module", mk, (vid(s),)))
            else:
                sc, sh = _bn_running_affine(m)
                sc, sh = sc[idx], sh[idx]
                if s in conv_step and len(consumers[s]) == 1:
                    c = modules[conv_step[s]]
                    c.weight.mul_(sc.to(dtype).view(-1, 1, 1, 1))
                    bias0 = c.bias.double() if c.bias is not None else torch.zeros(len(idx), dtype=torch.float64)
                    if c.bias is None:
                        c.bias = nn.Parameter(torch.zeros(len(idx), dtype=dtype))
                    c.bias.copy_((bias0 * sc + sh).to(dtype))
                    alias[i] = vid(s)
                else:
                    mk = key(n, "affine")
                    modules[mk] = ChannelAffine(sc.to(dtype), sh.to(dtype))
                    steps.append(Step(i, "module", mk, (vid(s),)))
        elif n.kind == "act":
            mk = key(n, "act")
            a = n.module
            modules[mk] = nn.LeakyReLU(a.negative_slope) if isinstance(a, nn.LeakyReLU) else nn.ReLU()
            steps.append(Step(i, "module", mk, (vid(s),)))
        elif n.kind == "sigmoid":
            mk = key(n, "sigmoid")
            modules[mk] = nn.Sigmoid()
            steps.append(Step(i, "module", mk, (vid(s),)))
        elif n.kind == "up":
            u: nn.Upsample = n.module
            mk = key(n, "up")
            modules[mk] = nn.Upsample(scale_factor=u.scale_factor, mode=u.mode, align_corners=u.align_corners)
            steps.append(Step(i, "module", mk, (vid(s),)))
        elif n.kind == "pad":
            mk = key(n, "pad")
            modules[mk] = nn.ReflectionPad2d(n.module.padding)
            steps.append(Step(i, "module", mk, (vid(s),)))
        elif n.kind == "cat":
            ins = tuple(vid(j) for j in n.inputs if len(kept[j]))
            if len(ins) == 1:
                alias[i] = ins[0]
            else:
                steps.append(Step(i, "cat", None, ins))

    # output: live channels computed, constant ones materialised, original channel order restored
    last = len(nodes) - 1
    out_const = const[last]
    out_id = vid(last)
    if bool((~torch.isnan(out_const)).any()):
        cmask = ~torch.isnan(out_const)
        down, up = _scale_ints(nodes[last].scale)
        modules["const_output"] = ConstPlanes(out_const[cmask].to(dtype), down, up)
        cid = -3000000
        steps.append(Step(cid, "const", "const_output", ()))
        if bool((~cmask).any()):
            cat_id = -3000001
            steps.append(Step(cat_id, "cat", None, (out_id, cid)))
            order = torch.cat([torch.nonzero(~cmask).flatten(), torch.nonzero(cmask).flatten()])
            perm = torch.argsort(order)
            out_id = -3000002
            steps.append(Step(out_id, "gather", "output_perm", (cat_id,)))
        else:
            out_id = cid
    _activations_in_place(steps, modules)
    used = [int(c) for c in torch.nonzero(need[0]).flatten()]
    net = CompactNet(steps, modules, out_id, in_channels, used, bn, layers, arch)
    net.conv_index = conv_index
    if "output_perm" in {st.module for st in steps}:
        net.register_buffer("output_perm", perm)
    return net.train(bn == "image")


def _reader_counts(steps: list[Step]) -> dict[int, int]:
    """How many steps read each value id."""
    counts: dict[int, int] = {}
    for st in steps:
        for i in st.inputs:
            counts[i] = counts.get(i, 0) + 1
    return counts


def _activations_in_place(steps: list[Step], modules: dict[str, nn.Module]) -> None:
    """Let an activation overwrite its input when nothing else reads it, as the reference network's do.

    Out-of-place activations allocate a fresh full-resolution tensor per layer; on CPU the page faults of those
    allocations slowed the compacted paper network by about 30% (128x128, 1 thread: 203 ms vs 157 ms for the masked
    reference). The activations' inputs (normalisation, upsampling or conv outputs) are not needed by their backward.
    """
    uses = _reader_counts(steps)
    for st in steps:
        m = modules.get(st.module) if st.kind == "module" else None
        if isinstance(m, (nn.LeakyReLU, nn.ReLU)) and uses.get(st.inputs[0], 0) == 1 and st.inputs[0] != 0:
            m.inplace = True


def compact(
    ticket_or_model: Ticket | nn.Module,
    weights: Literal["init", "fitted"] = "init",
    bn: BatchNormMode = "image",
) -> CompactNet:
    """The exactly compacted network: same output as the masked network (to float rounding), fewer channels.

    ``ticket_or_model``: a :class:`Ticket` (masked with its masks, ``weights`` picks init or fitted weights) or a
    reference-layout network (nested ``Sequential``/``Concat`` of ``Conv2d``, ``BatchNorm2d``, ``LeakyReLU``/``ReLU``,
    ``Upsample``, ``ReflectionPad2d``, ``Sigmoid``) whose exact zeros are its mask. ``bn="image"``: DIP's per-image
    BatchNorm; ``bn="running"``: eval-mode BatchNorm with the running statistics. See the module docstring for the
    exactness rules. The result keeps the input contract (same noise input) and the dtype of the weights.
    """
    model, in_ch, masks, arch = _as_model(ticket_or_model, weights, bn)
    return _build(model, in_ch, bn, masks, arch)


def analyze_compaction(
    ticket_or_model: Ticket | nn.Module,
    height: int = 256,
    width: int = 256,
    weights: Literal["init", "fitted"] = "init",
    bn: BatchNormMode = "image",
) -> CompactionReport:
    """What :func:`compact` removes, per conv layer, with dense MAC counts at ``height`` x ``width`` output size."""
    model, in_ch, masks, arch = _as_model(ticket_or_model, weights, bn)
    net = _build(model, in_ch, bn, masks, arch)
    if arch is not None and hasattr(arch, "input_shape"):
        _, _, ih, iw = arch.input_shape(height, width)
    else:
        ih, iw = height, width
    nodes = _graph(model, in_ch)
    scale = {n.name: n.scale for n in nodes if n.kind == "conv"}
    for la in net.layers:
        sc = scale[la.name]
        oh, ow = math.ceil(ih * sc), math.ceil(iw * sc)
        la.out_hw = (oh, ow)
        kk = la.kernel * la.kernel
        la.macs_before = la.out_before * la.in_before * kk * oh * ow
        la.macs_after = la.out_after * la.in_after * kk * oh * ow
    report = CompactionReport(
        layers=net.layers,
        height=height,
        width=width,
        bn=bn,
        params_before=sum(p.numel() for p in model.parameters()),
        params_after=sum(p.numel() for p in net.parameters()),
    )
    return report

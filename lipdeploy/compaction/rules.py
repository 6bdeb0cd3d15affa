"""The rules table: one rule per layer type, saying how the layer is traced, how constant channels propagate forwards
through it, how needed channels propagate backwards, and how its compacted form is built.

A rule is registered for module classes (``MODULE_RULES``, looked up along the class's MRO) or for the functions a
traced ``forward`` calls (``FUNCTION_RULES``: ``*`` by a constant, ``+``/``-``, ``torch.cat``). Containers
(``Sequential``, DIP's ``Concat``) are walked by :mod:`~lipdeploy.compaction.trace`; a layer type without a rule is
refused there. Every rule implements:

- ``trace(module, name, src)``: check the module and return its :class:`~lipdeploy.compaction.graph.Node` (channels,
  resolution); function rules have ``from_call``;
- ``constants(i, node, plan)``: the output's per-channel constants (float64, NaN where the channel is live);
- ``needed(i, node, plan)``: mark the inputs' live channels this node's needed channels read;
- ``kept(i, node, b)``: the channels the compacted op outputs (reference indices, in the order it outputs them);
- ``build(i, node, b)``: emit the compacted module(s) into the builder (:class:`~lipdeploy.compaction.build.Builder`).

Constants are spatially constant channels (one value per channel for every pixel and sample). The exactness rules of
each layer are in the package docstring (:mod:`lipdeploy.compaction`) and in the rule's own docstring.
"""

from __future__ import annotations

import operator
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import PixelNorm
from .graph import Node
from .layers import LayerCompaction
from .modules import AlignedSum, ChannelAffine, CompactPixelNorm, ImageNorm, Scale, ViewMap

if TYPE_CHECKING:
    from .build import Builder
    from .plan import Plan

NAN = float("nan")


def live(const: torch.Tensor) -> torch.Tensor:
    """Channels that are not constant."""
    return torch.isnan(const)


class Rule:
    """A per-channel op (one input, output channel c depends on input channel c only): the defaults."""

    kind = ""

    def trace(self, module: nn.Module, name: str, src: Node) -> Node:
        return Node(self.kind, [], src.channels, name, module, src.scale, src.size, src.rank, rule=self)

    def constants(self, i: int, node: Node, plan: Plan) -> torch.Tensor:
        return self.value(node, plan.const[node.inputs[0]])

    def value(self, node: Node, v: torch.Tensor) -> torch.Tensor:
        """The op applied to constant values (NaN stays NaN)."""
        return v.clone()

    def needed(self, i: int, node: Node, plan: Plan) -> None:
        plan.need[node.inputs[0]] |= plan.need[i]

    def kept(self, i: int, node: Node, b: Builder) -> torch.Tensor:
        return b.kept[node.inputs[0]]

    def build(self, i: int, node: Node, b: Builder) -> None:
        b.module_step(i, node, self.kind, self.module(node, b.kept[i], b))

    def module(self, node: Node, idx: torch.Tensor, b: Builder) -> nn.Module:
        raise NotImplementedError


def _refuse(name: str, module: nn.Module | None, problem: str) -> ValueError:
    cls = f" ({type(module).__name__})" if module is not None else ""
    return ValueError(f"layer {name!r}{cls}: {problem}")


def _need_map(src: Node, name: str, module: nn.Module) -> None:
    if src.rank != 4:
        raise _refuse(name, module, f"needs a map [N, C, H, W], its input is a vector [N, {src.channels}]")


# --------------------------------------------------------------------------------------------------- weighted layers


def _has_padding(conv: nn.Conv2d) -> bool:
    if isinstance(conv.padding, str):
        return conv.padding == "same" and conv.kernel_size != (1, 1)
    return conv.padding[0] != 0 or conv.padding[1] != 0


def _foldable(conv: nn.Conv2d) -> bool:
    """A constant input plane folds exactly into the bias when the conv adds no zero padding."""
    return not _has_padding(conv) or conv.padding_mode == "reflect"


class WeightRule(Rule):
    """Conv2d and Linear: a constant input folds into the bias (``b[o] += sum_taps W[o, c] * v[c]``); an output row
    with no kept weight on a live input is constant; a needed output reads the live inputs its kept weights touch."""

    @staticmethod
    def kernels(pattern: torch.Tensor) -> torch.Tensor:
        """[Cout, Cin]: the (output, input) kernel holds a kept weight."""
        return pattern.any(dim=(2, 3)) if pattern.dim() == 4 else pattern

    def constants(self, i: int, node: Node, plan: Plan) -> torch.Tensor:
        m = node.module
        src = plan.const[node.inputs[0]]
        pattern = plan.pattern[node.name]
        nzk = self.kernels(pattern)
        is_const = ~live(src)
        mat = is_const & (src != 0) & (not self.foldable(m)) & nzk.any(0)
        plan.materialise[i] = mat
        row_live = (nzk & (~is_const | mat).unsqueeze(0)).any(1)
        w = m.weight.detach().double() * pattern
        fold = torch.where(is_const & ~mat, src, torch.zeros_like(src))
        val = self.kernels_sum(w) @ fold
        if m.bias is not None:
            val = val + m.bias.detach().double()
        return torch.where(row_live, torch.full_like(val, NAN), val)

    def foldable(self, module: nn.Module) -> bool:
        return True

    @staticmethod
    def kernels_sum(w: torch.Tensor) -> torch.Tensor:
        return w.sum(dim=(2, 3)) if w.dim() == 4 else w

    def needed(self, i: int, node: Node, plan: Plan) -> None:
        nzk = self.kernels(plan.pattern[node.name])
        nd = plan.need[i]
        read = nzk[nd].any(0) if bool(nd.any()) else torch.zeros(nzk.shape[1], dtype=torch.bool)
        s = node.inputs[0]
        plan.need[s] |= read & live(plan.const[s])
        plan.materialise[i] = plan.materialise[i] & read

    def kept(self, i: int, node: Node, b: Builder) -> torch.Tensor:
        return torch.nonzero(b.need[i]).flatten()

    def build(self, i: int, node: Node, b: Builder) -> None:
        b.weighted(i, node, self)

    def make(self, module: nn.Module, in_features: int, out_features: int, bias: bool, dtype) -> nn.Module:
        raise NotImplementedError


class ConvRule(WeightRule):
    """``nn.Conv2d``, any stride and padding, zero or reflection padding mode (groups 1, dilation 1).

    Zero padding: a constant ``v != 0`` is not constant after zero padding (border taps see zeros), so it is not
    folded but materialised: the compacted conv reads it as an extra input plane filled with ``v``.
    """

    kind = "conv"

    def trace(self, module: nn.Module, name: str, src: Node) -> Node:
        _need_map(src, name, module)
        if module.groups != 1 or module.dilation != (1, 1) or module.in_channels != src.channels:
            raise _refuse(name, module, "only groups=1, dilation=1 convs that match their input are supported")
        if module.padding_mode not in ("zeros", "reflect"):
            raise _refuse(name, module, f"padding_mode {module.padding_mode!r} not supported")
        if module.kernel_size[0] != module.kernel_size[1] or module.stride[0] != module.stride[1]:
            raise _refuse(name, module, "only square kernels and strides are supported")
        s = module.stride[0]
        scale = size = None
        if src.size is not None:
            pad = (0, 0) if module.padding == "valid" else module.padding
            if pad == "same":
                size = src.size
            else:
                k = module.kernel_size[0]
                size = tuple((h + 2 * p - k) // s + 1 for h, p in zip(src.size, pad, strict=True))
        else:
            scale = src.scale / s  # 'same'-padded strided convs on sizes that are multiples of the stride
        return Node(self.kind, [], module.out_channels, name, module, scale, size, 4, rule=self)

    def foldable(self, module: nn.Module) -> bool:
        return _foldable(module)

    def make(self, module: nn.Conv2d, in_features: int, out_features: int, bias: bool, dtype) -> nn.Module:
        k = module.kernel_size[0]
        return nn.Conv2d(
            in_features, out_features, k, module.stride, module.padding, bias=bias, padding_mode=module.padding_mode
        ).to(dtype)


class LinearRule(WeightRule):
    """``nn.Linear`` on a vector: a 1x1 conv on a 1x1 map (no padding: constants always fold)."""

    kind = "linear"

    def trace(self, module: nn.Module, name: str, src: Node) -> Node:
        if src.rank != 2 or module.in_features != src.channels:
            raise _refuse(name, module, f"expects a vector of {module.in_features} features")
        return Node(self.kind, [], module.out_features, name, module, None, None, 2, rule=self)

    def make(self, module: nn.Linear, in_features: int, out_features: int, bias: bool, dtype) -> nn.Module:
        return nn.Linear(in_features, out_features, bias=bias).to(dtype)


# --------------------------------------------------------------------------------------------------- normalisation


def bn_running_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of an eval-mode BatchNorm, float64."""
    c = bn.num_features
    g = bn.weight.detach().double() if bn.weight is not None else torch.ones(c, dtype=torch.float64)
    b = bn.bias.detach().double() if bn.bias is not None else torch.zeros(c, dtype=torch.float64)
    if bn.track_running_stats and bn.running_mean is not None:
        s = g / torch.sqrt(bn.running_var.detach().double() + bn.eps)
        return s, b - bn.running_mean.detach().double() * s
    return g, b  # no running statistics: eval-mode BatchNorm uses batch statistics; handled as "image" by the caller


def image_bn(bn: nn.BatchNorm2d, mode: str) -> bool:
    """The BatchNorm normalises with the image's own statistics (DIP's semantics, or no running statistics)."""
    return mode == "image" or not bn.track_running_stats or bn.running_mean is None


class BatchNormRule(Rule):
    """``nn.BatchNorm2d``. Per-image statistics: a constant channel normalises to exactly ``beta``; live channels
    become :class:`ImageNorm`. Running statistics: a fixed affine, folded into the producing conv when the BatchNorm
    is that conv's only reader, else :class:`ChannelAffine`."""

    kind = "bn"

    def trace(self, module: nn.Module, name: str, src: Node) -> Node:
        _need_map(src, name, module)
        if module.num_features != src.channels:
            raise _refuse(name, module, f"has {module.num_features} features, its input {src.channels} channels")
        return super().trace(module, name, src)

    def constants(self, i: int, node: Node, plan: Plan) -> torch.Tensor:
        m = node.module
        src = plan.const[node.inputs[0]]
        if image_bn(m, plan.bn):
            beta = m.bias.detach().double() if m.bias is not None else torch.zeros(m.num_features).double()
            return torch.where(live(src), src, beta)
        s, t = bn_running_affine(m)
        return src * s + t

    def build(self, i: int, node: Node, b: Builder) -> None:
        m = node.module
        idx = b.kept[i]
        s = node.inputs[0]
        if image_bn(m, b.bn):
            g = m.weight.detach()[idx] if m.weight is not None else torch.ones(len(idx))
            be = m.bias.detach()[idx] if m.bias is not None else torch.zeros(len(idx))
            b.module_step(i, node, "norm", ImageNorm(g.to(b.dtype), be.to(b.dtype), m.eps))
            return
        sc, sh = bn_running_affine(m)
        sc, sh = sc[idx], sh[idx]
        if not b.fold_affine(i, s, sc, sh):
            b.module_step(i, node, "affine", ChannelAffine(sc.to(b.dtype), sh.to(b.dtype)))


class PixelNormRule(Rule):
    """:class:`lipdeploy.layers.PixelNorm`: ``x * rsqrt(mean over the C reference channels of x^2 + eps)``.

    The factor depends on every channel, so: with every input constant the output is the constant
    ``v * rsqrt(mean(v^2) + eps)``; with any input live, a constant nonzero channel is no longer constant (0 stays 0),
    and a needed output channel makes every live input needed. Removed constant inputs still count in the mean
    (:class:`CompactPixelNorm` adds their squares and divides by the reference channel count).
    """

    kind = "pixelnorm"

    def constants(self, i: int, node: Node, plan: Plan) -> torch.Tensor:
        v = plan.const[node.inputs[0]]
        if bool(live(v).any()):
            return torch.where(v == 0, v, torch.full_like(v, NAN))
        return v * torch.rsqrt((v * v).mean() + node.module.eps)

    def needed(self, i: int, node: Node, plan: Plan) -> None:
        s = node.inputs[0]
        if bool(plan.need[i].any()):
            plan.need[s] |= live(plan.const[s])

    def appended(self, i: int, node: Node, b: Builder) -> torch.Tensor:
        """Channels constant (nonzero) in the input and needed in the output: computed as ``value * factor``."""
        src = b.const[node.inputs[0]]
        return torch.nonzero(~live(src) & (src != 0) & b.need[i]).flatten()

    def kept(self, i: int, node: Node, b: Builder) -> torch.Tensor:
        """The needed ones of the input's channels (the norm reads them all, but outputs only what is read), then the
        appended ones."""
        have = b.kept[node.inputs[0]]
        return torch.cat([have[b.need[i][have]], self.appended(i, node, b)])

    def build(self, i: int, node: Node, b: Builder) -> None:
        src = b.const[node.inputs[0]]
        consts = torch.where(live(src), torch.zeros_like(src), src)
        values = src[self.appended(i, node, b)].to(b.dtype)
        have = b.kept[node.inputs[0]]
        out = b.need[i][have]
        keep = None if bool(out.all()) else torch.nonzero(out).flatten()
        module = CompactPixelNorm(node.channels, float((consts * consts).sum()), values, node.module.eps, keep)
        b.module_step(i, node, self.kind, module)


# --------------------------------------------------------------------------------------------------- per-channel ops


class ActivationRule(Rule):
    """LeakyReLU / ReLU / Sigmoid / Tanh: applied to constants in float64; a fresh module of the same type."""

    def __init__(self, kind: str, fn) -> None:
        self.kind = kind
        self.fn = fn

    def value(self, node: Node, v: torch.Tensor) -> torch.Tensor:
        return self.fn(node.module, v)

    def module(self, node: Node, idx: torch.Tensor, b: Builder) -> nn.Module:
        a = node.module
        return nn.LeakyReLU(a.negative_slope) if isinstance(a, nn.LeakyReLU) else type(a)()


class UpsampleRule(Rule):
    """``nn.Upsample`` by an integer factor (nearest, bilinear): a constant plane stays constant."""

    kind = "up"

    def trace(self, module: nn.Module, name: str, src: Node) -> Node:
        _need_map(src, name, module)
        sf = module.scale_factor
        if sf is None or (isinstance(sf, tuple) and len(set(sf)) != 1):
            raise _refuse(name, module, "needs one scale_factor")
        sf = sf[0] if isinstance(sf, tuple) else sf
        if float(sf) != int(sf):
            raise _refuse(name, module, "integer scale factors only")
        if module.mode not in ("nearest", "bilinear"):
            raise _refuse(name, module, f"mode {module.mode!r} not supported (nearest, bilinear)")
        f = int(sf)
        scale = src.scale * f if src.scale is not None else None
        size = (src.size[0] * f, src.size[1] * f) if src.size is not None else None
        return Node(self.kind, [], src.channels, name, module, scale, size, 4, rule=self)

    def module(self, node: Node, idx: torch.Tensor, b: Builder) -> nn.Module:
        u = node.module
        return nn.Upsample(scale_factor=u.scale_factor, mode=u.mode, align_corners=u.align_corners)


class ReflectionPadRule(Rule):
    """``nn.ReflectionPad2d``: a constant plane stays the same constant. (Only in front of a conv that it feeds, as
    in the reference networks: the resolution bookkeeping assumes 'same' convs.)"""

    kind = "pad"

    def trace(self, module: nn.Module, name: str, src: Node) -> Node:
        _need_map(src, name, module)
        return super().trace(module, name, src)

    def module(self, node: Node, idx: torch.Tensor, b: Builder) -> nn.Module:
        return nn.ReflectionPad2d(node.module.padding)


class ScaleRule(Rule):
    """Multiplication by a constant scalar (equalized learning rate: ``conv(x) * c``), kept as a :class:`Scale` op
    rather than folded into the weights: the compacted layers keep the reference's parameters, so fitting the
    compacted network takes the same Adam steps as fitting the masked one."""

    kind = "scale"

    def from_call(self, name: str, args: tuple, values: dict) -> tuple[Node, list[Any]]:
        tensors = [a for a in args if values.get(id(a)) is not None]
        others = [a for a in args if values.get(id(a)) is None]
        if len(tensors) != 1 or len(others) != 1:
            raise ValueError(f"{name!r}: only a product of a tensor and a constant scalar is supported")
        factor = _scalar(others[0], name)
        return Node(self.kind, [], 0, name, None, rule=self, params={"factor": factor}), tensors

    def value(self, node: Node, v: torch.Tensor) -> torch.Tensor:
        return v * node.params["factor"]

    def module(self, node: Node, idx: torch.Tensor, b: Builder) -> nn.Module:
        return Scale(node.params["factor"])


def _scalar(value: Any, name: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    raise ValueError(f"{name!r}: the constant factor must be a scalar, got {type(value).__name__}")


# --------------------------------------------------------------------------------------------------- multi-input ops


class CatRule(Rule):
    """Channel concatenation (DIP's ``Concat`` with its centre crop, ``torch.cat(dim=1)``): constants and needs split
    by channel offset; a piece without present channels disappears."""

    kind = "cat"

    def from_call(self, name: str, args: tuple, kwargs: dict, values: dict) -> tuple[Node, list[Any]]:
        tensors = list(args[0])
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        if dim != 1 or any(values.get(id(t)) is None for t in tensors):
            raise ValueError(f"{name!r}: only torch.cat of traced tensors along dim 1 is supported")
        return Node(self.kind, [], 0, name, None, rule=self), tensors

    def constants(self, i: int, node: Node, plan: Plan) -> torch.Tensor:
        return torch.cat([plan.const[j] for j in node.inputs])

    def needed(self, i: int, node: Node, plan: Plan) -> None:
        off = 0
        for j in node.inputs:
            c = plan.nodes[j].channels
            plan.need[j] |= plan.need[i][off : off + c]
            off += c

    def kept(self, i: int, node: Node, b: Builder) -> torch.Tensor:
        offs = [0]
        for j in node.inputs:
            offs.append(offs[-1] + b.nodes[j].channels)
        return torch.cat([b.kept[j] + o for j, o in zip(node.inputs, offs[:-1], strict=True)])

    def build(self, i: int, node: Node, b: Builder) -> None:
        b.concat(i, node)


class SumRule(Rule):
    """Sum or difference of tensors (``a + b``, ``a - b``; the alpha blend of a growing generator): a channel is
    constant when it is constant in every input; the inputs' present channels are aligned (:class:`AlignedSum`)."""

    kind = "sum"

    def __init__(self, sign: int) -> None:
        self.sign = sign

    def from_call(self, name: str, args: tuple, values: dict) -> tuple[Node, list[Any]]:
        if len(args) != 2 or any(values.get(id(a)) is None for a in args):
            raise ValueError(f"{name!r}: only a sum or difference of two traced tensors is supported")
        return Node(self.kind, [], 0, name, None, rule=self, params={"signs": [1, self.sign]}), list(args)

    def constants(self, i: int, node: Node, plan: Plan) -> torch.Tensor:
        total = torch.zeros(node.channels, dtype=torch.float64)
        for j, sign in zip(node.inputs, node.params["signs"], strict=True):
            total = total + sign * plan.const[j]  # NaN (live) anywhere makes the sum live
        return total

    def needed(self, i: int, node: Node, plan: Plan) -> None:
        for j in node.inputs:
            plan.need[j] |= plan.need[i] & live(plan.const[j])

    def kept(self, i: int, node: Node, b: Builder) -> torch.Tensor:
        return torch.nonzero(b.need[i]).flatten()

    def build(self, i: int, node: Node, b: Builder) -> None:
        idx = b.kept[i]
        indices, inputs, signs = [], [], []
        shift = torch.zeros(len(idx), dtype=torch.float64)
        for j, sign in zip(node.inputs, node.params["signs"], strict=True):
            cj = b.const[j][idx]
            shift = shift + sign * torch.where(live(cj), torch.zeros_like(cj), cj)
            have = b.kept[j]
            if len(have) == 0:
                continue
            pos = {int(c): p for p, c in enumerate(have)}
            index = torch.tensor([pos.get(int(c), len(have)) for c in idx], dtype=torch.long)
            same = len(have) == len(idx) and bool((have == idx).all())
            indices.append(None if same else index)
            inputs.append(b.vid(j))
            signs.append(sign)
        module = AlignedSum(indices, signs, shift.to(b.dtype) if bool((shift != 0).any()) else None)
        b.multi_step(i, node, self.kind, module, inputs)


class UnflattenRule(Rule):
    """``nn.Unflatten(1, (C, H, W))``: a vector viewed as C maps of H x W (a generator's format layer; channel j is
    features j*H*W ... (j+1)*H*W - 1). A channel is constant when all its features are constant and equal; a channel
    with some constant features reads them from a constant vector (:class:`ViewMap`)."""

    kind = "view"

    def trace(self, module: nn.Module, name: str, src: Node) -> Node:
        shape = tuple(module.unflattened_size)
        if module.dim != 1 or src.rank != 2 or len(shape) != 3 or shape[0] * shape[1] * shape[2] != src.channels:
            raise _refuse(name, module, "only a vector [N, C*H*W] viewed as [N, C, H, W] (dim 1) is supported")
        return Node(self.kind, [], shape[0], name, module, None, (shape[1], shape[2]), 4, rule=self)

    @staticmethod
    def features(node: Node, v: torch.Tensor) -> torch.Tensor:
        return v.view(node.channels, -1)

    def constants(self, i: int, node: Node, plan: Plan) -> torch.Tensor:
        f = self.features(node, plan.const[node.inputs[0]])
        uniform = (~live(f)).all(1) & (f == f[:, :1]).all(1)
        return torch.where(uniform, f[:, 0], torch.full((node.channels,), NAN, dtype=torch.float64))

    def needed(self, i: int, node: Node, plan: Plan) -> None:
        s = node.inputs[0]
        rows = plan.need[i].unsqueeze(1).expand(-1, plan.const[s].numel() // node.channels).reshape(-1)
        plan.need[s] |= rows & live(plan.const[s])

    def kept(self, i: int, node: Node, b: Builder) -> torch.Tensor:
        return torch.nonzero(b.need[i]).flatten()

    def build(self, i: int, node: Node, b: Builder) -> None:
        idx = b.kept[i]
        s = node.inputs[0]
        src = b.const[s]
        hw = src.numel() // node.channels
        feats = (idx.unsqueeze(1) * hw + torch.arange(hw)).reshape(-1)  # reference features of the kept channels
        have = b.kept[s]
        if len(have) == 0:  # nothing live upstream: fixed maps
            b.const_step(i, node, src[feats].view(len(idx), *node.size))
            return
        pos = {int(c): p for p, c in enumerate(have)}
        consts = [int(f) for f in feats if int(f) not in pos]
        cpos = {f: len(have) + k for k, f in enumerate(consts)}
        index = torch.tensor([pos[int(f)] if int(f) in pos else cpos[int(f)] for f in feats], dtype=torch.long)
        values = src[torch.tensor(consts, dtype=torch.long)] if consts else torch.zeros(0, dtype=torch.float64)
        identity = not consts and len(have) == len(feats) and bool((index == torch.arange(len(feats))).all())
        module = ViewMap(None if identity else index, values.to(b.dtype), len(idx), node.size)
        b.module_step(i, node, self.kind, module)


# --------------------------------------------------------------------------------------------------- the table


def _leaky(m: nn.Module, v: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(v, m.negative_slope) if isinstance(m, nn.LeakyReLU) else torch.relu(v)


MODULE_RULES: dict[type, Rule] = {
    nn.Conv2d: ConvRule(),
    nn.Linear: LinearRule(),
    nn.BatchNorm2d: BatchNormRule(),
    PixelNorm: PixelNormRule(),
    nn.LeakyReLU: ActivationRule("act", _leaky),
    nn.ReLU: ActivationRule("act", _leaky),
    nn.Sigmoid: ActivationRule("sigmoid", lambda m, v: torch.sigmoid(v)),
    nn.Tanh: ActivationRule("tanh", lambda m, v: torch.tanh(v)),
    nn.Upsample: UpsampleRule(),
    nn.ReflectionPad2d: ReflectionPadRule(),
    nn.Unflatten: UnflattenRule(),
}
"""Module class -> its rule (``nn.Identity`` is skipped; containers are walked, see ``trace``)."""

FUNCTION_RULES: dict[Any, Rule] = {
    operator.mul: ScaleRule(),
    torch.mul: ScaleRule(),
    operator.add: SumRule(1),
    torch.add: SumRule(1),
    operator.sub: SumRule(-1),
    torch.sub: SumRule(-1),
    torch.cat: CatRule(),
}
"""Function called in a traced forward -> its rule."""

CONCAT_RULE = FUNCTION_RULES[torch.cat]


def module_rule(module: nn.Module) -> Rule | None:
    """The rule of ``module``'s class or of its nearest registered base class."""
    for cls in type(module).__mro__:
        if cls in MODULE_RULES:
            return MODULE_RULES[cls]
    return None


def relative_ints(scale: Fraction) -> tuple[int, int]:
    """(down, up) factors of a resolution relative to the input (1/4 -> (4, 1), 2 -> (1, 2))."""
    if scale <= 1:
        if scale.numerator != 1:
            raise ValueError(f"unsupported resolution ratio {scale}")
        return scale.denominator, 1
    if scale.denominator != 1:
        raise ValueError(f"unsupported resolution ratio {scale}")
    return 1, scale.numerator


def weighted_record(
    name: str, m: nn.Module, pattern: torch.Tensor, dead: int, unread: int, mat: int
) -> LayerCompaction:
    """The report entry of a conv or linear layer before its compacted sizes are known."""
    nzk = WeightRule.kernels(pattern)
    conv = isinstance(m, nn.Conv2d)
    return LayerCompaction(
        name=name,
        kernel=m.kernel_size[0] if conv else 1,
        stride=m.stride[0] if conv else 1,
        in_before=m.in_channels if conv else m.in_features,
        out_before=m.out_channels if conv else m.out_features,
        in_after=0,
        out_after=0,
        dead_outputs=dead,
        unread_outputs=unread,
        removed_inputs=0,
        materialised_inputs=mat,
        kernels_before=int(nzk.numel()),
        zero_kernels_before=int((~nzk).sum()),
        zero_kernels_after=0,
        nnz_before=int(pattern.sum()),
        nnz_after=0,
    )

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
* **Pixel norm** (a generator's, over channels): the mean runs over the *reference* channel count, so the compacted
  norm adds the squares of the constant channels it no longer holds (:class:`CompactPixelNorm`). Its factor depends
  on every channel: with any input live, a constant nonzero channel is no longer constant after it, and a needed
  output makes every live input needed.
* **Linear layers and views**: a linear layer is a 1x1 conv on a 1x1 map; ``nn.Unflatten(1, (C, H, W))`` makes
  channel j of features j*H*W ... (j+1)*H*W - 1, constant when they are all constant and equal (otherwise its constant
  features are read from a buffer).
* **Constant scales** (equalized learning rate, ``x * c``) are kept as ops, not folded into the weights: the
  compacted layers keep the reference's parameters, so a fit of the compacted network takes the masked one's Adam
  steps. **Sums** (``a + b``, ``a - b``; a growing generator's alpha blend) align the inputs' channels; a channel
  constant in an input adds its value.
* The image channels (the output) are never removed: constant output channels are materialised as planes.

The compacted module (:class:`CompactNet`) takes the same input as the reference (all input channels; those no
layer reads are multiplied by zero columns; ``input_channels_used`` lists the ones that matter). Input height and
width must be multiples of the network's total stride (as for the reference; concat centre-crops are kept anyway).
It contains only standard ops (Conv2d, Linear, instance norm, Mul/Add, Upsample, Concat, activations, Slice, Gather)
and is differentiable (it can be fitted further); biases absorb the folded constants, so constant channels'
BatchNorm shifts are no longer separate parameters.

Modules: :mod:`~lipdeploy.compaction.rules` (the rules table: one rule per layer type), :mod:`~lipdeploy.compaction.
trace` (containers walked, everything else traced with torch.fx; a layer without a rule refused by name),
:mod:`~lipdeploy.compaction.graph` (the traced op list), :mod:`~lipdeploy.compaction.plan` (constant and needed
channels), :mod:`~lipdeploy.compaction.build` (:func:`compact`), :mod:`~lipdeploy.compaction.modules` (the runtime:
:class:`CompactNet` and its modules), :mod:`~lipdeploy.compaction.layers` (the per-layer hand-off
:class:`CompactLayer` and the report entry :class:`LayerCompaction`), :mod:`~lipdeploy.compaction.report`
(:func:`analyze_compaction`). A new layer type is one rule class registered in ``MODULE_RULES`` (or
``FUNCTION_RULES`` for a function a traced forward calls).
"""

from __future__ import annotations

from .build import compact
from .layers import CompactLayer, LayerCompaction
from .modules import ChannelAffine, CompactNet, CompactPixelNorm, ConstMap, ConstPlanes, ImageNorm, Step
from .report import CompactionReport, analyze_compaction
from .rules import FUNCTION_RULES, MODULE_RULES, Rule
from .trace import UnsupportedLayer

__all__ = [
    "FUNCTION_RULES",
    "MODULE_RULES",
    "ChannelAffine",
    "CompactLayer",
    "CompactNet",
    "CompactPixelNorm",
    "CompactionReport",
    "ConstMap",
    "ConstPlanes",
    "ImageNorm",
    "LayerCompaction",
    "Rule",
    "Step",
    "UnsupportedLayer",
    "analyze_compaction",
    "compact",
]

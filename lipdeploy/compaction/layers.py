"""Per-layer records of compaction: the hand-off to backends, fitting, export and bench, and the report entries.

:class:`CompactLayer` is *the* hand-off of "one conv layer of a ticket made physically small". :func:`lipdeploy.compact`
builds one per remaining convolution and passes them to the :class:`~lipdeploy.compaction.modules.CompactNet`
constructor (``net.convs``, keyed by module key in ``net.ops``); nothing is attached to the network afterwards.
Consumers (``lipdeploy.backends.sparsify`` and its dispatcher, ``lipdeploy.fit``, export, benchmarks) read geometry,
weights, mask and pattern from there instead of re-deriving them from the modules.

:class:`LayerCompaction` is the report side: what compaction removed from one reference conv (``net.layers``,
:class:`~lipdeploy.compaction.report.CompactionReport`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ..patterns import detect_layer

__all__ = ["CompactLayer", "LayerCompaction"]


@dataclass(frozen=True, eq=False)
class CompactLayer:
    """One conv layer of a ticket made physically small (frozen; ``eq=False``: tensors do not compare as booleans).

    - ``key``: the module key in ``CompactNet.ops`` (e.g. ``"conv_1_1_4_1"``); ``reference``: the reference conv's
      path (e.g. ``"1.1.4.1"``, its weight is ``"1.1.4.1.weight"`` in the ticket).
    - ``kind``: ``"conv"`` (the only kind compaction produces today).
    - geometry of the compacted ``Conv2d``: ``in_channels``, ``out_channels``, ``kernel_size`` (square), ``stride``,
      ``padding`` (the conv's own, (h, w); a reflection pad in front of it is a separate op of the program) and
      ``padding_mode`` (``"zeros"`` or ``"reflect"``).
    - ``weight`` ``[out, in, k, k]`` and ``bias`` ``[out]`` (or None): the compacted module's own parameters (not
      copies; they follow ``.to()`` and fitting of the network). Running-statistics BatchNorm folded into the conv is
      already in them. After :func:`lipdeploy.sparsify` replaced ``ops[key]`` with a backend module, that module's
      parameters are the live ones and these are the weights the backend was built from.
    - ``mask``: bool, shaped like ``weight``: the ticket's mask at the kept rows and columns. The mask, not the
      weight's zeros, defines which weights a fitting may move (a kept weight may be exactly zero).
    - ``rows``: kept output channels, ``cols``: input columns, both as reference channel indices (``cols`` of the
      conv's source tensor, constant planes materialised for zero padding included), so that
      ``weight == ref_weight[rows][:, cols] * mask`` before any fitting or folding.
    - ``is_output_layer``: the network's image-producing conv (patterns use smaller units there).
    - ``pattern`` (property): the name (a key of ``lipdeploy.patterns.PATTERNS``) of the most structured registered
      pattern the compacted ``mask`` fits (``lipdeploy.patterns.detect_layer``). Backends may choose by it, and the
      dispatcher's timing cache keys on it. Detected on first read and then kept (about 15 ms for a paper-size layer:
      ``compact`` does not pay it for callers that never ask).
    """

    key: str
    reference: str
    kind: Literal["conv"]
    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int
    padding: tuple[int, int]
    padding_mode: str
    weight: torch.Tensor = field(repr=False)
    bias: torch.Tensor | None = field(repr=False)
    mask: torch.Tensor = field(repr=False)
    rows: torch.Tensor = field(repr=False)
    cols: torch.Tensor = field(repr=False)
    is_output_layer: bool = False

    @functools.cached_property
    def pattern(self) -> str:
        return detect_layer(self.mask, self.reference, self.is_output_layer)

    @property
    def nnz(self) -> int:
        """Kept weights (mask entries set)."""
        return int(self.mask.sum())

    @property
    def density(self) -> float:
        """Kept fraction of the compacted weight (1.0 for an empty weight)."""
        return self.nnz / self.mask.numel() if self.mask.numel() else 1.0


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

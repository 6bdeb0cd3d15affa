"""The block-sparse tensor-core backends: ``kernels.BsrConv2d`` holding only the kept ``Bo x Bi`` blocks of a layer.

- ``"triton-bsr"``: 16 x 16 blocks (the ``block`` pattern's; blocks of ``block32x16`` tickets are unions of them);
- ``"triton-bsr32x16"``: 32 x 16 blocks (the ``block32x16`` pattern's: half the programs per pixel tile, each MMA
  twice as tall).

One backend per block size, so that the timing cache, the benchmarks' rows and ``sparsify(backend=...)`` name the
packing that ran. (A ``block16x8`` ticket runs on "triton-bsr" with zeros inside its kept 16 x 16 blocks: the kernels
pad 8-wide blocks to a 16-wide MMA anyway, so a 16 x 8 packing would cost the same tensor-core work.)

Which layers (decided here, documented in ``supports``/``configs``): the packing is exact for **any** mask (a kept
block stores its full tile with zeros off the mask, and its weight gradient is masked), so ``supports`` accepts every
conv of a geometry the kernels handle and an explicit ``sparsify(backend="triton-bsr")`` runs any ticket. But a block
costs a full MMA whether it holds one kept weight or all of them: the kernels only pay off where whole blocks are
empty. So the dispatcher times a bsr candidate only on a layer where at least :data:`MIN_EMPTY_BLOCKS` of the blocks
at that block size are empty (``configs`` is empty otherwise; an unstructured 90% mask has essentially no empty
16 x 16 block, only the odd small edge block), and it must still beat dense by the dispatcher's margin.

Numerics: TF32 products with fp32 accumulation (``precision="tf32"``), as PyTorch's dense conv on CUDA by default, so
"auto" never trades accuracy against dense. Under Triton's CPU interpreter ``tl.dot`` is fp32 whatever the precision.
Triton itself is imported only when a kernel runs or the dispatcher asks for kernel configs, never at import time.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ..compaction import CompactLayer
from ..kernels import BsrConv2d, triton_available
from ..kernels.bsr_format import MAX_TAPS, block_keep_mask
from .registry import Backend, register

__all__ = ["MIN_EMPTY_BLOCKS", "BsrBackend", "bsr_candidate_configs"]

MIN_EMPTY_BLOCKS = 0.25
"""The fraction of a layer's blocks that must be empty before the dispatcher times a bsr candidate on it. Not measured
yet (an estimate): with three quarters of cuDNN's tensor-core work left plus the gathers, bsr cannot plausibly beat it
by the 5% margin; the GPU rows at 50% block sparsity (bench/gpu/layers.py) are what to move it by."""

PRECISION = "tf32"
"""What the bsr backends multiply in: PyTorch's own default for convolutions on CUDA (``cudnn.allow_tf32``)."""


class BsrBackend(Backend):
    """A ``BsrConv2d`` in ``block = (Bo, Bi)`` channel blocks, computed by the Triton tensor-core kernels."""

    sparse = True
    dispatched = True
    fuses_reflection_pad = True
    format = "bsr"

    def __init__(self, name: str, block: tuple[int, int], description: str) -> None:
        self.name = name
        self.block = block
        self.description = description

    def supports(self, layer: CompactLayer, device: torch.device | None = None) -> bool:
        """Any conv of the kernels' geometry (symmetric padding, zeros or reflect, at most 31 taps), any mask: the
        packing is exact. On ``device``: CUDA with triton, or CPU under Triton's interpreter (tests)."""
        geometry = (
            layer.kind == "conv"
            and layer.padding[0] == layer.padding[1]
            and layer.padding_mode in ("zeros", "reflect")
            and layer.kernel_size**2 <= MAX_TAPS
        )
        if not geometry or device is None:
            return geometry
        if device.type == "cuda":
            return triton_available()
        # Triton's CPU interpreter runs the kernels only when enabled before triton's first import (tests do so)
        return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1" and triton_available()

    def empty_fraction(self, layer: CompactLayer) -> float:
        """The fraction of the layer's ``Bo x Bi`` blocks (per tap, edge blocks included) holding no kept weight: the
        share of the tensor-core work the kernels skip."""
        keep = block_keep_mask(layer.mask, self.block)
        return 1.0 - float(keep.float().mean()) if keep.numel() else 0.0

    def build(self, layer: CompactLayer, padding: int | None = None, padding_mode: str | None = None) -> nn.Module:
        w = layer.weight.detach()
        return BsrConv2d.from_dense(
            w,
            layer.mask.to(w.device),
            layer.bias.detach() if layer.bias is not None else None,
            stride=layer.stride,
            padding=layer.padding[0] if padding is None else padding,
            padding_mode=padding_mode or layer.padding_mode,
            block=self.block,
            precision=PRECISION,
            implementation="triton",
        ).to(w.device)

    def configs(self, layer: CompactLayer, out_pixels: int, device: torch.device) -> Sequence[Any]:
        """No candidate (``[]``) when fewer than :data:`MIN_EMPTY_BLOCKS` of the layer's blocks are empty: the
        kernels would do about dense cuDNN's work on gathered tiles and cannot win. Otherwise
        :func:`bsr_candidate_configs`."""
        if self.empty_fraction(layer) < MIN_EMPTY_BLOCKS:
            return []
        return bsr_candidate_configs(out_pixels, device)


def bsr_candidate_configs(out_pixels: int, device: torch.device) -> list[Any]:
    """The kernel configs the dispatcher times per layer: the default tiles, and on CUDA half-size forward / input
    grad tiles (twice the programs: better spread over the SMs for small outputs). Kept to two until a GPU run of
    ``bench/gpu/layers.py`` shows which other tiles pay (each config is three kernel compiles)."""
    # function-level import: kernels.bsr_conv imports triton, which only a dispatcher run should pay for
    from ..kernels.bsr_conv import default_bsr_config

    base = default_bsr_config(out_pixels, device)
    if device.type != "cuda":
        return [base]
    half = replace(base, block_p_fwd=max(16, base.block_p_fwd // 2), block_p_dgrad=max(16, base.block_p_dgrad // 2))
    return [base] if half == base else [base, half]


register(BsrBackend("triton-bsr", (16, 16), "Triton tensor-core kernels, 16x16 channel blocks per tap (block tickets)"))
register(BsrBackend("triton-bsr32x16", (32, 16), "Triton tensor-core kernels, 32x16 channel blocks per tap"))

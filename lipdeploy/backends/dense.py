"""``"dense"``: PyTorch's conv on the compacted dense weight (cuDNN on CUDA, oneDNN / native on CPU).

The baseline every other backend is timed against: compaction already removed the channels that cannot matter, and
what is left runs as an ordinary ``nn.Conv2d`` (pruned weights inside it are zeros; a fitting keeps them so through the
layer's mask, see :func:`lipdeploy.fit`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..compaction import CompactLayer
from .registry import Backend, register

__all__ = ["DenseBackend"]


class DenseBackend(Backend):
    name = "dense"
    description = "PyTorch's conv on the compacted dense weight (cuDNN on CUDA)"

    def supports(self, layer: CompactLayer, device: torch.device | None = None) -> bool:
        return layer.kind == "conv"

    @torch.no_grad()
    def build(self, layer: CompactLayer, padding: int | None = None, padding_mode: str | None = None) -> nn.Module:
        w = layer.weight
        conv = nn.Conv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            layer.stride,
            layer.padding if padding is None else padding,
            bias=layer.bias is not None,
            padding_mode=padding_mode or layer.padding_mode,
        ).to(device=w.device, dtype=w.dtype)
        conv.weight.copy_(w.detach())
        if layer.bias is not None:
            conv.bias.copy_(layer.bias.detach())
        return conv


register(DenseBackend())

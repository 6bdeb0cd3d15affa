"""The sparse-kernel backends: ``kernels.SparseConv2d`` holding only the kept weights of a layer.

- ``"triton-csr"``: the Triton kernels on the unstructured packing (one entry per kept weight);
- ``"triton-kernel"``: the Triton kernels on the kernel-granular packing (whole zero ``k x k`` kernels skipped, kept
  kernels dense with their mask);
- ``"reference"``: the same module and parameters computed by the kernels' dense PyTorch reference (no Triton; for
  testing, CPU fitting, and as the ground truth of the Triton backends). Never picked by the dispatcher.

Triton itself is imported only when a kernel runs or the dispatcher asks for kernel configs, never at import time.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..compaction import CompactLayer
from ..kernels import SparseConv2d, triton_available
from .registry import BACKENDS, Backend, register

__all__ = ["SparseKernelBackend", "packing_formats"]


class SparseKernelBackend(Backend):
    """A ``SparseConv2d`` in packing ``format`` computed by ``implementation`` ("triton" or "torch": the reference)."""

    sparse = True
    fuses_reflection_pad = True

    def __init__(self, name: str, description: str, format: str, implementation: str, dispatched: bool) -> None:
        self.name = name
        self.description = description
        self.format = format
        self.implementation = implementation
        self.dispatched = dispatched

    def with_format(self, format: str) -> SparseKernelBackend:
        """The same backend on another packing (``sparsify(..., format=)`` of the reference backend); not registered."""
        if format not in packing_formats():
            raise ValueError(f"format must be one of {', '.join(packing_formats())}; got {format!r}")
        return SparseKernelBackend(self.name, self.description, format, self.implementation, self.dispatched)

    def supports(self, layer: CompactLayer, device: torch.device | None = None) -> bool:
        geometry = (
            layer.kind == "conv" and layer.padding[0] == layer.padding[1] and layer.padding_mode in ("zeros", "reflect")
        )
        if not geometry or self.implementation != "triton" or device is None:
            return geometry
        if device.type == "cuda":
            return triton_available()
        # Triton's CPU interpreter runs the kernels only when enabled before triton's first import (tests do so)
        return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1" and triton_available()

    def build(self, layer: CompactLayer, padding: int | None = None, padding_mode: str | None = None) -> nn.Module:
        w = layer.weight.detach()
        return SparseConv2d.from_dense(
            w,
            layer.mask.to(w.device, w.dtype),
            layer.bias.detach() if layer.bias is not None else None,
            stride=layer.stride,
            padding=layer.padding[0] if padding is None else padding,
            padding_mode=padding_mode or layer.padding_mode,
            implementation=self.implementation,
            format=self.format,
        ).to(w.device)

    def configs(self, layer: CompactLayer, out_pixels: int, device: torch.device) -> Sequence[Any]:
        if self.implementation != "triton":
            return [None]
        # function-level import: kernels.sparse_conv imports triton, which only a dispatcher run on a GPU should pay for
        from ..kernels.sparse_conv import candidate_configs

        return candidate_configs(out_pixels, device)


def packing_formats() -> tuple[str, ...]:
    """The sparse packings the registered Triton backends run ("csr", "kernel"), sorted."""
    triton = [b for b in BACKENDS.values() if isinstance(b, SparseKernelBackend) and b.implementation == "triton"]
    return tuple(sorted({b.format for b in triton}))


register(
    SparseKernelBackend(
        "triton-csr", "Triton sparse kernels, unstructured packing (one entry per kept weight)", "csr", "triton", True
    )
)
register(
    SparseKernelBackend(
        "triton-kernel", "Triton sparse kernels, kernel-granular packing (zero k x k kernels skipped)", "kernel",
        "triton", True,
    )
)  # fmt: skip
register(
    SparseKernelBackend(
        "reference", "the sparse module computed by PyTorch's dense conv (no Triton; testing and CPU)", "csr", "torch",
        False,
    )
)  # fmt: skip

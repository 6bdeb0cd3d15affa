"""Kernel sparsity: whole k x k kernels (one per output, input channel pair) are the units. Stored by the kernel-
granular kernels, which skip whole zero kernels and keep the taps of the others dense."""

from __future__ import annotations

import torch

from .base import Pattern
from .registry import register_pattern


class Kernel(Pattern):
    name = "kernel"
    description = "whole k x k kernels (output, input pairs)"
    unit = "kernel"
    rank = 1
    kernel_format = "kernel"

    def units(self, t: torch.Tensor, layer_name: str, is_output_layer: bool) -> torch.Tensor:
        return t.reshape(t.shape[0] * t.shape[1], -1)


register_pattern(Kernel())

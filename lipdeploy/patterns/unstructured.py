"""Unstructured sparsity: single weights are the units (the paper's IMP). Stored by the CSR kernels."""

from __future__ import annotations

import torch

from .base import Pattern
from .registry import register_pattern


class Unstructured(Pattern):
    name = "unstructured"
    description = "single weights"
    unit = "weight"
    rank = 0
    kernel_format = "csr"

    def units(self, t: torch.Tensor, layer_name: str, is_output_layer: bool) -> torch.Tensor:
        return t.reshape(-1, 1)

    def check(self, mask: torch.Tensor, name: str, is_output_layer: bool = False) -> str | None:
        return None  # every 0/1 mask is unstructured


register_pattern(Unstructured())

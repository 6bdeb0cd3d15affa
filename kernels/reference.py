"""Pure-PyTorch reference for the sparse convolution ops (same signatures as the Triton ops).

Implemented with dense ``F.pad``/``F.conv2d`` on the unpacked weight; differentiable w.r.t. ``x``, ``packed.values`` and
``bias`` through autograd. Tests and benchmarks compare the Triton path against these functions and nothing else.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import check_conv_args
from .format import SparseConvWeight

__all__ = ["sparse_conv2d_reference"]


def sparse_conv2d_reference(
    x: torch.Tensor,
    packed: SparseConvWeight,
    bias: torch.Tensor | None = None,
    stride: int = 1,
    padding: int = 0,
    padding_mode: str = "zeros",
    negative_slope: float | None = None,
) -> torch.Tensor:
    """``leaky_relu(conv2d(pad(x), W) + bias)``, W = ``packed.to_dense()``; activation only if ``negative_slope``."""
    check_conv_args(x, packed, stride, padding, padding_mode)
    w = packed.to_dense().to(x.dtype)
    if padding and padding_mode == "reflect":
        x = F.pad(x, (padding, padding, padding, padding), mode="reflect")
        padding = 0
    y = F.conv2d(x, w, bias, stride=stride, padding=padding)
    if negative_slope is not None:
        y = F.leaky_relu(y, negative_slope)
    return y

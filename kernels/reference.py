"""Pure-PyTorch reference for the sparse convolution ops (same signatures as the Triton ops).

Implemented with dense ``F.pad``/``F.conv2d`` on the unpacked weight; differentiable w.r.t. ``x``, ``packed.values`` and
``bias`` through autograd. Tests and benchmarks compare the Triton path against these functions and nothing else.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .format import SparseConvWeight

__all__ = ["sparse_conv2d_reference", "check_conv_args"]

PADDING_MODES = ("zeros", "reflect")


def check_conv_args(x: torch.Tensor, packed: SparseConvWeight, stride: int, padding: int, padding_mode: str) -> None:
    """Validate arguments shared by the reference and the Triton op (clear errors instead of kernel faults)."""
    if x.dim() != 4:
        raise ValueError(f"input must be 4-D [N, C, H, W], got shape {tuple(x.shape)}")
    if x.shape[1] != packed.shape[1]:
        raise ValueError(f"input has {x.shape[1]} channels, weight expects {packed.shape[1]}")
    if stride not in (1, 2) and not (isinstance(stride, int) and stride >= 1):
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    if padding_mode == "reflect" and padding >= min(x.shape[2], x.shape[3]):
        raise ValueError(f"reflect padding {padding} must be smaller than the input size {tuple(x.shape[2:])}")
    kh, kw = packed.shape[2:]
    if x.shape[2] + 2 * padding < kh or x.shape[3] + 2 * padding < kw:
        raise ValueError(f"padded input {tuple(x.shape[2:])} + 2*{padding} is smaller than the kernel {(kh, kw)}")


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

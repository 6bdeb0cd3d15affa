"""Pure-PyTorch reference for the block-sparse ("bsr") convolution (same signature as ``bsr_conv.bsr_conv2d``).

Dense ``F.pad``/``F.conv2d`` on the unpacked weight, differentiable w.r.t. ``x``, ``packed.values`` and ``bias``
through autograd. The tests compare the Triton kernels against this function and nothing else.

Precision: the kernels' ``precision`` says what the tensor cores may round, and the reference computes what that
rounding is measured against:

- ``"ieee"``, ``"tf32x3"`` and ``"tf32"``: exact fp32 products (cuDNN's TF32, which PyTorch allows by default on CUDA,
  is switched off for the reference's own conv). TF32 is a permission to round the operands to 10 mantissa bits, and
  how they are rounded depends on the MMA instruction the compiler picks, so the reference does not imitate it; the
  tests bound the difference instead.
- ``"bf16"``: the operands rounded to bfloat16 (round to nearest even, exactly what the kernels' casts do), products
  and sums in fp32. A product of two bf16 values is exact in fp32, so the kernels' forward matches this to fp32
  summation order. (Only the forward rounds like the kernels: the reference's backward comes from autograd and rounds
  nothing, so gradients agree to bf16 precision, not better.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .bsr_format import BsrConvWeight
from .common import check_conv_args

__all__ = ["PRECISIONS", "bsr_conv2d_reference", "check_precision"]

PRECISIONS = ("tf32", "tf32x3", "ieee", "bf16")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def bsr_conv2d_reference(
    x: torch.Tensor,
    packed: BsrConvWeight,
    bias: torch.Tensor | None = None,
    stride: int = 1,
    padding: int = 0,
    padding_mode: str = "zeros",
    precision: str = "tf32",
    bn_stats: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``conv2d(pad(x), W) + bias`` with ``W = packed.to_dense()``.

    With ``bn_stats`` it returns ``(y, stats)``, ``stats`` = fp32 ``[2, C_out]``: the per-channel sum and sum of
    squares of ``y`` over batch and pixels (what a following BatchNorm needs for its mean and variance).
    """
    check_conv_args(x, packed, stride, padding, padding_mode)
    check_precision(precision)
    w = packed.to_dense().to(x.dtype)
    xin = x
    if precision == "bf16":
        xin = x.to(torch.bfloat16).to(x.dtype)
        w = w.to(torch.bfloat16).to(x.dtype)
    if padding and padding_mode == "reflect":
        xin = F.pad(xin, (padding, padding, padding, padding), mode="reflect")
        padding = 0
    cudnn = torch.backends.cudnn
    with cudnn.flags(
        enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic, allow_tf32=False
    ):
        y = F.conv2d(xin, w, bias, stride=stride, padding=padding)
    if not bn_stats:
        return y
    yf = y.float()
    return y, torch.stack([yf.sum(dim=(0, 2, 3)), (yf * yf).sum(dim=(0, 2, 3))])

"""Pure-PyTorch pieces shared by the csr/kernel and the bsr families (formats, references, modules, host wrappers).

Imports no triton: the formats, references and modules import it. The Triton-side helpers both kernel modules share
are in ``triton_common``.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # annotations only: the format modules import this one
    from .bsr_format import BsrConvWeight
    from .format import SparseConvWeight

__all__ = [
    "IMPLEMENTATIONS",
    "PADDING_MODES",
    "bsr_conv_kernels",
    "check_conv_args",
    "check_module_options",
    "conv_output_size",
    "fold_reflect_grad",
    "import_triton_kernels",
    "ptr_from_counts",
    "sparse_conv_kernels",
    "unpad_input_grad",
]

IMPLEMENTATIONS = ("triton", "torch")
"""What computes a ``SparseConv2d`` or a ``BsrConv2d`` (their ``implementation=``): the Triton kernels or the dense
PyTorch reference.

Not the execution backends of a network: those are ``lipdeploy.backends.BACKENDS`` ("triton-csr", "triton-kernel",
"triton-bsr" and "reference" are built on the modules with the implementations named here).
"""

PADDING_MODES = ("zeros", "reflect")


def check_conv_args(
    x: torch.Tensor, packed: SparseConvWeight | BsrConvWeight, stride: int, padding: int, padding_mode: str
) -> None:
    """Validate arguments shared by the references and the Triton ops (clear errors instead of kernel faults)."""
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


def check_module_options(implementation: str, padding_mode: str) -> None:
    """Validate the ``implementation`` and ``padding_mode`` a ``SparseConv2d`` / ``BsrConv2d`` is built with."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be 'reflect' or 'zeros', got {padding_mode!r}")


def ptr_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """int64 segment pointers ``[len(counts) + 1]`` (0, then the running sum) of segments of ``counts`` entries."""
    ptr = torch.zeros(counts.numel() + 1, dtype=torch.int64, device=counts.device)
    ptr[1:] = torch.cumsum(counts, 0)
    return ptr


def import_triton_kernels(module: str, what: str) -> ModuleType:
    """Import the Triton kernel module ``module`` of this package lazily (it imports triton, which costs seconds and
    may be missing), with a clear error naming ``what`` when triton is missing."""
    try:
        return importlib.import_module(f".{module}", __package__)
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"{what} need the 'triton' package (pip install 'lipdeploy[triton]'); "
            "the pure-PyTorch reference implementation ('torch') runs without it"
        ) from e


def sparse_conv_kernels() -> ModuleType:
    """The Triton sparse kernels of the csr/kernel formats (``sparse_conv``), imported on first use."""
    return import_triton_kernels("sparse_conv", "the Triton sparse kernels")


def bsr_conv_kernels() -> ModuleType:
    """The Triton tensor-core kernels of the bsr format (``bsr_conv``), imported on first use."""
    return import_triton_kernels("bsr_conv", "the Triton block-sparse kernels")


def conv_output_size(h: int, w: int, kh: int, kw: int, stride: int, padding: int) -> tuple[int, int]:
    """``(H_out, W_out)`` of a ``kh x kw`` convolution of an ``h x w`` input padded by ``padding`` on every side."""
    return (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1


def unpad_input_grad(gxp: torch.Tensor, padding: int, padding_mode: str, h: int, w: int) -> torch.Tensor:
    """The input gradient from the gradient w.r.t. the padded input: reflected borders folded back, zero borders
    dropped (the csr/kernel and the bsr input-gradient wrappers compute the padded one in-kernel)."""
    if padding == 0:
        return gxp
    if padding_mode == "reflect":
        return fold_reflect_grad(gxp, padding)
    return gxp[:, :, padding : padding + h, padding : padding + w]


def fold_reflect_grad(gxp: torch.Tensor, pad: int) -> torch.Tensor:
    """Fold the gradient of a reflect-padded tensor back onto the unpadded input (adjoint of F.pad(mode='reflect'))."""
    # rows: padded row p-k (k=1..pad) is a copy of input row k; padded row p+H-1+k is a copy of input row H-1-k
    h = gxp.shape[2] - 2 * pad
    w = gxp.shape[3] - 2 * pad
    g = gxp[:, :, pad : pad + h, :].clone()
    for k in range(1, pad + 1):
        g[:, :, k, :] += gxp[:, :, pad - k, :]
        g[:, :, h - 1 - k, :] += gxp[:, :, pad + h - 1 + k, :]
    out = g[:, :, :, pad : pad + w].clone()
    for k in range(1, pad + 1):
        out[:, :, :, k] += g[:, :, :, pad - k]
        out[:, :, :, w - 1 - k] += g[:, :, :, pad + w - 1 + k]
    return out

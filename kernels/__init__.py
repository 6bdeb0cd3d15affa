"""Sparse convolution for lottery image priors (importable as lipdeploy.kernels).

Pure-PyTorch parts (formats, reference op, module, dispatcher) import without triton. The Triton kernels live in
``lipdeploy.kernels.sparse_conv`` and are imported lazily: ``sparse_conv2d`` below, or a ``SparseConv2d`` with
``implementation="triton"``, import them on first use (set ``TRITON_INTERPRET=1`` before that to run them on CPU).

The execution backends built on these kernels, and their names, are ``lipdeploy.backends.BACKENDS``; this package only
provides the pieces (``SparseConv2d`` and ``BsrConv2d`` take ``implementation=``: :data:`IMPLEMENTATIONS`).
"""

from __future__ import annotations

from .bsr_format import BsrConvWeight, check_bsr_format, pack_bsr_weight, unpack_bsr_weight
from .bsr_module import BsrConv2d
from .bsr_reference import bsr_conv2d_reference
from .common import IMPLEMENTATIONS, bsr_conv_kernels, sparse_conv_kernels
from .dispatch import Timer, cache_path, cached_times, choose_fastest
from .format import SparseConvWeight, check_format, pack_conv_weight, unpack_conv_weight
from .module import SparseConv2d
from .reference import sparse_conv2d_reference

__all__ = [
    "BsrConv2d",
    "BsrConvWeight",
    "bsr_conv2d",
    "bsr_conv2d_reference",
    "check_bsr_format",
    "pack_bsr_weight",
    "unpack_bsr_weight",
    "IMPLEMENTATIONS",
    "SparseConv2d",
    "SparseConvWeight",
    "cache_path",
    "cached_times",
    "check_format",
    "choose_fastest",
    "pack_conv_weight",
    "sparse_conv2d",
    "Timer",
    "sparse_conv2d_reference",
    "triton_available",
    "unpack_conv_weight",
]


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def sparse_conv2d(x, packed, bias=None, stride=1, padding=0, padding_mode="zeros", negative_slope=None, config=None):
    """Triton sparse conv (autograd-capable); same signature as ``sparse_conv2d_reference`` plus ``config``."""
    return sparse_conv_kernels().sparse_conv2d(x, packed, bias, stride, padding, padding_mode, negative_slope, config)


def bsr_conv2d(
    x, packed, bias=None, stride=1, padding=0, padding_mode="zeros", precision="tf32", bn_stats=False, config=None
):
    """Triton block-sparse conv on tensor cores (autograd-capable); same signature as ``bsr_conv2d_reference`` plus
    ``config``. Imports triton on first use."""
    return bsr_conv_kernels().bsr_conv2d(x, packed, bias, stride, padding, padding_mode, precision, bn_stats, config)

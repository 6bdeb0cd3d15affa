"""Sparse convolution for lottery image priors (importable as lipdeploy.kernels).

Pure-PyTorch parts (formats, reference op, module, dispatcher) import without triton. The Triton kernels live in
``lipdeploy.kernels.sparse_conv`` and are imported lazily: ``sparse_conv2d`` below, or a ``SparseConv2d`` with
``backend="triton"``, import them on first use (set ``TRITON_INTERPRET=1`` before that to run them on CPU).
"""

from __future__ import annotations

from .dispatch import cache_path, cached_times, choose_backend, choose_fastest
from .format import SparseConvWeight, check_format, pack_conv_weight, unpack_conv_weight
from .module import BACKENDS, SparseConv2d
from .reference import sparse_conv2d_reference

__all__ = [
    "BACKENDS",
    "SparseConv2d",
    "SparseConvWeight",
    "cache_path",
    "cached_times",
    "check_format",
    "choose_backend",
    "choose_fastest",
    "pack_conv_weight",
    "sparse_conv2d",
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
    from .module import _triton_ops

    return _triton_ops().sparse_conv2d(x, packed, bias, stride, padding, padding_mode, negative_slope, config)

"""Triton-side pieces shared by the csr/kernel (``sparse_conv``) and the bsr (``bsr_conv``) kernel modules.

Imports triton at import time, like the two kernel modules that import it (``lipdeploy.kernels`` loads them lazily).
``INTERPRET`` is read here, when the first kernel module is imported: ``TRITON_INTERPRET=1`` must be set before that.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

__all__ = ["INTERPRET", "check_kernel_device", "source_index"]

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_kernel_device(*tensors: torch.Tensor) -> None:
    """Raise a clear error for tensors the Triton kernels cannot run on (CPU tensors without the interpreter)."""
    for t in tensors:
        if t.device.type != "cuda" and not INTERPRET:
            raise RuntimeError(
                "Triton sparse kernels need CUDA tensors; to run them on CPU set TRITON_INTERPRET=1 before "
                "triton is first imported (slow, for testing)"
            )


@triton.jit
def source_index(i, size, REFLECT: tl.constexpr):
    """Map a padded coordinate to the input: reflect (single bounce; pad < size), or clamp into range and report
    whether it was in range (zero padding: the caller zeroes what was not). Either way the index is a valid address,
    so the gathers in the hot loops need no mask."""
    if REFLECT:
        i = tl.where(i < 0, -i, i)
        i = tl.where(i >= size, 2 * size - 2 - i, i)
        return i, i >= 0  # all true: folded away
    valid = (i >= 0) & (i < size)
    return tl.minimum(tl.maximum(i, 0), size - 1), valid

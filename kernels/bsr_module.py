"""``BsrConv2d``: an nn.Module holding only the kept blocks of a block-sparse conv layer (trainable, autograd-capable).

The execution backends "triton-bsr" / "triton-bsr32x16" of ``lipdeploy.backends`` are built on it.
"""

from __future__ import annotations

import torch
from torch import nn

from .bsr_format import BSR_INDEX_FIELDS, BsrConvWeight, pack_bsr_weight
from .bsr_reference import bsr_conv2d_reference, check_precision
from .common import bsr_conv_kernels, check_module_options

__all__ = ["BsrConv2d"]


class BsrConv2d(nn.Module):
    """Conv2d whose weight is kept in whole ``Bo x Bi`` channel blocks per tap (a block ticket's layer).

    Parameters: ``values`` (the kept blocks, ``[nb, Bo, Bi]``; an optimizer touches only these) and ``bias``. The
    format's index tensors (``bsr_format``) are buffers: they move with ``.to()`` and are saved in the state dict.
    ``forward(x)`` computes ``conv(pad(x), W) + bias``; ``forward(x, bn_stats=True)`` also returns the per-channel sum
    and sum of squares of the output (fp32 ``[2, C_out]``, differentiable) for the BatchNorm that follows.
    """

    def __init__(
        self,
        packed: BsrConvWeight,
        bias: torch.Tensor | None = None,
        stride: int = 1,
        padding: int = 0,
        padding_mode: str = "reflect",
        precision: str = "tf32",
        implementation: str = "triton",
        config=None,
    ) -> None:
        super().__init__()
        check_module_options(implementation, padding_mode)
        check_precision(precision)
        if implementation == "triton":
            bsr_conv_kernels()  # fail early and clearly
        self.shape = tuple(int(s) for s in packed.shape)
        self.block = tuple(int(b) for b in packed.block)
        self.stride = int(stride)
        self.padding = int(padding)
        self.padding_mode = padding_mode
        self.precision = precision
        self.implementation = implementation
        self.config = config
        self.values = nn.Parameter(packed.values.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        for name in BSR_INDEX_FIELDS:
            self.register_buffer(name, getattr(packed, name).clone())

    @classmethod
    def from_dense(
        cls,
        weight: torch.Tensor,
        mask: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        stride: int = 1,
        padding: int = 0,
        padding_mode: str = "reflect",
        block: tuple[int, int] = (16, 16),
        precision: str = "tf32",
        implementation: str = "triton",
        config=None,
    ) -> BsrConv2d:
        """Pack ``weight`` into the blocks of ``mask`` (default ``weight != 0``) holding any nonzero."""
        packed = pack_bsr_weight(weight, mask, block)
        return cls(packed, bias, stride, padding, padding_mode, precision, implementation, config)

    @property
    def num_blocks(self) -> int:
        return self.values.shape[0]

    def packed(self) -> BsrConvWeight:
        """The packed weight over this module's current parameter and buffers (values keep autograd history)."""
        fields = {name: getattr(self, name) for name in BSR_INDEX_FIELDS}
        return BsrConvWeight(shape=self.shape, block=self.block, values=self.values, **fields)

    def dense_weight(self) -> torch.Tensor:
        """Dense ``[C_out, C_in, KH, KW]`` weight, zeros off the mask (differentiable w.r.t. ``values``)."""
        return self.packed().to_dense()

    def mask(self) -> torch.Tensor:
        """0/1 float mask of the trainable positions, dense ``[C_out, C_in, KH, KW]``."""
        p = self.packed()
        return p.with_values(p.elem_mask.to(p.values.dtype)).to_dense().detach()

    def forward(self, x: torch.Tensor, bn_stats: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        args = (x, self.packed(), self.bias, self.stride, self.padding, self.padding_mode, self.precision, bn_stats)
        if self.implementation == "torch":
            return bsr_conv2d_reference(*args)
        return bsr_conv_kernels().bsr_conv2d(*args, config=self.config)

    def extra_repr(self) -> str:
        cout, cin, kh, kw = self.shape
        nbo, nbi = -(-cout // self.block[0]), -(-cin // self.block[1])
        dens = self.num_blocks / max(1, nbo * nbi * kh * kw)
        return (
            f"{cin}, {cout}, kernel_size=({kh}, {kw}), stride={self.stride}, padding={self.padding}, "
            f"padding_mode={self.padding_mode!r}, block={self.block[0]}x{self.block[1]}, blocks={self.num_blocks} "
            f"({dens:.1%}), precision={self.precision!r}, implementation={self.implementation!r}"
        )

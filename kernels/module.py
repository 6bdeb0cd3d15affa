"""``SparseConv2d``: an nn.Module holding only the nonzero weights of a conv layer (trainable, autograd-capable)."""

from __future__ import annotations

import torch
from torch import nn

from .common import check_module_options, sparse_conv_kernels
from .format import INDEX_FIELDS, SparseConvWeight, pack_conv_weight
from .reference import sparse_conv2d_reference

__all__ = ["SparseConv2d"]


class SparseConv2d(nn.Module):
    """Conv2d with a fixed sparsity pattern.

    Parameters: ``values`` (the ``nnz`` stored weights; an optimizer touches only these) and ``bias``. Index tensors of
    the packed format are buffers (they move with ``.to()`` / ``.cuda()`` and are saved in the state dict).
    ``forward`` computes ``leaky_relu(conv(pad(x), W) + bias, activation_slope)`` (activation only when
    ``activation_slope`` is not None) with the Triton kernels (``implementation="triton"``) or the dense PyTorch
    reference (``implementation="torch"``), as :class:`~lipdeploy.kernels.BsrConv2d` (``common.IMPLEMENTATIONS``).
    """

    def __init__(
        self,
        packed: SparseConvWeight,
        bias: torch.Tensor | None = None,
        stride: int = 1,
        padding: int = 0,
        padding_mode: str = "reflect",
        implementation: str = "triton",
        activation_slope: float | None = None,
        config=None,
    ):
        super().__init__()
        check_module_options(implementation, padding_mode)
        if implementation == "triton":
            sparse_conv_kernels()  # fail early and clearly
        self.shape = tuple(int(s) for s in packed.shape)
        self.format = packed.format
        self.stride = int(stride)
        self.padding = int(padding)
        self.padding_mode = padding_mode
        self.implementation = implementation
        self.activation_slope = activation_slope
        self.config = config
        self.values = nn.Parameter(packed.values.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        self._index_names = []
        for name in INDEX_FIELDS:
            t = getattr(packed, name)
            if t is not None:
                self.register_buffer(name, t.clone())
                self._index_names.append(name)

    @classmethod
    def from_dense(
        cls,
        weight: torch.Tensor,
        mask: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        stride: int = 1,
        padding: int = 0,
        padding_mode: str = "reflect",
        implementation: str = "triton",
        activation_slope: float | None = None,
        format: str = "csr",
        config=None,
    ) -> SparseConv2d:
        """Pack ``weight`` at the nonzeros of ``mask`` (default ``weight != 0``)."""
        return cls(
            pack_conv_weight(weight, mask, format=format),
            bias,
            stride,
            padding,
            padding_mode,
            implementation,
            activation_slope,
            config,
        )

    @property
    def nnz(self) -> int:
        return self.values.numel()

    def packed(self) -> SparseConvWeight:
        """The packed weight view over this module's current parameter and buffers (values keep autograd history)."""
        fields = {name: getattr(self, name) for name in self._index_names}
        return SparseConvWeight(shape=self.shape, format=self.format, values=self.values, **fields)

    def dense_weight(self) -> torch.Tensor:
        """Dense ``[C_out, C_in, KH, KW]`` weight with zeros off the mask (differentiable w.r.t. ``values``)."""
        return self.packed().to_dense()

    def mask(self) -> torch.Tensor:
        """0/1 float mask of the stored (trainable) positions."""
        p = self.packed()
        vals = torch.ones_like(p.values) if p.tap_mask is None else p.tap_mask.to(p.values.dtype)
        return p.with_values(vals.detach()).to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.packed()
        args = (x, p, self.bias, self.stride, self.padding, self.padding_mode, self.activation_slope)
        if self.implementation == "torch":
            return sparse_conv2d_reference(*args)
        return sparse_conv_kernels().sparse_conv2d(*args, config=self.config)

    def extra_repr(self) -> str:
        cout, cin, kh, kw = self.shape
        dens = self.nnz / max(1, cout * cin * kh * kw)
        return (
            f"{cin}, {cout}, kernel_size=({kh}, {kw}), stride={self.stride}, padding={self.padding}, "
            f"padding_mode={self.padding_mode!r}, format={self.format!r}, nnz={self.nnz} ({dens:.1%}), "
            f"implementation={self.implementation!r}, activation_slope={self.activation_slope}"
        )

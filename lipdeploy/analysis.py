"""Per-layer structure of a ticket: what the mask leaves, and what it costs at a given image size."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .networks import conv_layers
from .ticket import Ticket


@dataclass(frozen=True)
class LayerStats:
    """One convolution of a ticket.

    ``unused_inputs``: input channels this layer never reads (all-zero weight columns); ``zero_outputs``: output
    channels with all-zero weights (constant maps); ``zero_kernels``: (output, input) kernels entirely zero.
    FLOPs count a multiply-add as 2, at the output size the layer has for the requested image size.
    """

    name: str
    shape: tuple[int, ...]
    stride: int
    output_hw: tuple[int, int]
    weights: int
    nonzeros: int
    unused_inputs: int
    zero_outputs: int
    zero_kernels: int
    kernels: int
    flops_dense: int
    flops_nonzero: int

    @property
    def density(self) -> float:
        return self.nonzeros / self.weights if self.weights else 1.0

    def to_dict(self) -> dict:
        return {**asdict(self), "density": self.density}


def output_sizes(ticket: Ticket, height: int, width: int) -> dict[str, tuple[int, int]]:
    """Each convolution's output H x W for an image of ``height`` x ``width`` (shape-only pass on the meta device)."""
    model = ticket.arch.build().to("meta")
    sizes: dict[str, tuple[int, int]] = {}
    for name, conv in conv_layers(model).items():
        conv.register_forward_hook(lambda _m, _i, out, name=name: sizes.__setitem__(name, tuple(out.shape[2:])))
    with torch.no_grad():
        model(torch.empty(ticket.arch.input_shape(height, width), device="meta"))
    return sizes


def layer_stats(ticket: Ticket, height: int = 256, width: int = 256) -> list[LayerStats]:
    """Per-layer statistics of the ticket's masks, in forward order."""
    sizes = output_sizes(ticket, height, width)
    model = ticket.arch.build()
    rows = []
    for name, conv in conv_layers(model).items():
        mask = ticket.masks[f"{name}.weight"]
        cout, cin, kh, kw = mask.shape
        kernel_nnz = mask.reshape(cout, cin, kh * kw).sum(-1)  # nonzeros per (output, input) kernel
        oh, ow = sizes[name]
        nnz = int(mask.count_nonzero())
        rows.append(
            LayerStats(
                name=name,
                shape=tuple(mask.shape),
                stride=conv.stride[0],
                output_hw=(oh, ow),
                weights=mask.numel(),
                nonzeros=nnz,
                unused_inputs=int((kernel_nnz.sum(0) == 0).sum()),
                zero_outputs=int((kernel_nnz.sum(1) == 0).sum()),
                zero_kernels=int((kernel_nnz == 0).sum()),
                kernels=cout * cin,
                flops_dense=2 * mask.numel() * oh * ow,
                flops_nonzero=2 * nnz * oh * ow,
            )
        )
    return rows

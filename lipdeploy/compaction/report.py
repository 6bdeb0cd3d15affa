"""What compaction did, per conv layer, with dense MAC counts at a given image size (:func:`analyze_compaction`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from ..ticket import BatchNormMode, Ticket
from .build import as_model, build
from .layers import LayerCompaction
from .trace import trace


@dataclass
class CompactionReport:
    """Per-layer compaction summary (see :func:`analyze_compaction`)."""

    layers: list[LayerCompaction]
    height: int
    width: int
    bn: str
    params_before: int = 0
    params_after: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def macs_before(self) -> int:
        return sum(layer.macs_before for layer in self.layers)

    @property
    def macs_after(self) -> int:
        return sum(layer.macs_after for layer in self.layers)

    @property
    def nnz_before(self) -> int:
        return sum(layer.nnz_before for layer in self.layers)

    @property
    def nnz_after(self) -> int:
        return sum(layer.nnz_after for layer in self.layers)

    def totals(self) -> dict[str, Any]:
        ls = self.layers
        k3 = [la for la in ls if la.kernel > 1]
        return {
            "dead_outputs": sum(la.dead_outputs for la in ls),
            "unread_outputs": sum(la.unread_outputs for la in ls),
            "removed_inputs": sum(la.removed_inputs for la in ls),
            "output_channels_before": sum(la.out_before for la in ls),
            "output_channels_after": sum(la.out_after for la in ls),
            "input_channels_before": sum(la.in_before for la in ls),
            "input_channels_after": sum(la.in_after for la in ls),
            "nnz_before": self.nnz_before,
            "nnz_after": self.nnz_after,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "zero_kxk_kernels_after": sum(la.zero_kernels_after for la in k3),
            "kxk_kernels_after": sum(la.out_after * la.in_after for la in k3),
            "params_before": self.params_before,
            "params_after": self.params_after,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "height": self.height,
            "width": self.width,
            "bn": self.bn,
            "totals": self.totals(),
            "layers": [la.to_dict() for la in self.layers],
            "notes": list(self.notes),
            "summary": self.summary(),
        }

    def format(self) -> str:
        """A plain-text table (one row per conv) plus totals."""
        nw = max([5] + [len(la.name) for la in self.layers]) + 1
        head = f"{'layer':<{nw}}{'k':>2} {'in':>9} {'out':>9} {'dead':>5} {'unread':>6} {'zero kernels':>13} {'nnz':>8}"
        rows = [head, "-" * len(head)]
        for la in self.layers:
            kern = la.out_after * la.in_after
            zk = f"{la.zero_kernels_after}/{kern}" if la.kernel > 1 else "-"
            rows.append(
                f"{la.name:<{nw}}{la.kernel:>2} {la.in_before:>4}>{la.in_after:<4} {la.out_before:>4}>{la.out_after:<4}"
                f" {la.dead_outputs:>5} {la.unread_outputs:>6} {zk:>13} {la.nnz_after:>8}"
            )
        rows.append(self.summary())
        rows.extend(self.notes)
        return "\n".join(rows)

    def summary(self) -> str:
        """One line: what compaction removes, and what it leaves to the sparse kernels."""
        t = self.totals()
        frac = t["zero_kxk_kernels_after"] / max(1, t["kxk_kernels_after"])
        return (
            f"removed output channels: {t['dead_outputs']} dead (constant, folded) + {t['unread_outputs']} unread; "
            f"input channels {t['input_channels_before']} -> {t['input_channels_after']}; "
            f"dense MACs at {self.height}x{self.width}: {t['macs_before'] / 1e9:.3f}G -> {t['macs_after'] / 1e9:.3f}G; "
            f"all-zero kxk kernels left: {t['zero_kxk_kernels_after']} ({frac:.0%})"
        )


def analyze_compaction(
    ticket_or_model: Ticket | nn.Module,
    height: int = 256,
    width: int = 256,
    weights: Literal["init", "fitted"] = "init",
    bn: BatchNormMode = "image",
) -> CompactionReport:
    """What :func:`compact` removes, per conv layer, with dense MAC counts at ``height`` x ``width`` output size."""
    model, inputs, masks, arch = as_model(ticket_or_model, weights, bn)
    net = build(model, inputs, bn, masks, arch)
    ih, iw = input_size(arch, height, width)
    nodes = {n.name: n for n in trace(model, *inputs) if n.kind in ("conv", "linear")}
    for la in net.layers:
        oh, ow = nodes[la.name].output_hw(ih, iw)
        la.out_hw = (oh, ow)
        kk = la.kernel * la.kernel
        la.macs_before = la.out_before * la.in_before * kk * oh * ow
        la.macs_after = la.out_after * la.in_after * kk * oh * ow
    report = CompactionReport(
        layers=net.layers,
        height=height,
        width=width,
        bn=bn,
        params_before=sum(p.numel() for p in model.parameters()),
        params_after=sum(p.numel() for p in net.parameters()),
    )
    return report


def input_size(arch, height: int, width: int) -> tuple[int, int]:
    """The network input's H x W for an output image of ``height`` x ``width`` (a generator's input is a vector:
    its layers' sizes are absolute, the image size is ignored)."""
    if arch is not None and hasattr(arch, "input_shape") and not hasattr(arch, "latent_dim"):
        _, _, ih, iw = arch.input_shape(height, width)
        return ih, iw
    return height, width

"""Per-layer structure of a ticket: what the mask leaves, and what it costs at a given image size; for block tickets
(or any ticket, at a chosen block size) how many ``Bo x Bi`` blocks per tap each layer keeps."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .networks import conv_layers
from .patterns import Block, block_pattern, detect, get_pattern
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
    """Each convolution's output H x W for an image of ``height`` x ``width`` (shape-only pass on the meta device).
    A convolution the forward never runs (a fully grown generator's earlier toRGB layers) is absent."""
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
        oh, ow = sizes.get(name, (0, 0))  # (0, 0): never run, costs nothing
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


@dataclass(frozen=True)
class BlockStats:
    """One convolution's block structure: its weight as ``taps`` matrices of ``[Cout x Cin]``, cut into blocks of
    ``Bo x Bi`` channels (edge blocks partial). ``kept_blocks``: blocks holding any kept weight; ``full_blocks``:
    blocks whose every position is kept (equal to ``kept_blocks`` for a block-structured mask)."""

    name: str
    grid: tuple[int, int, int]  # (output blocks, input blocks, taps)
    blocks: int
    kept_blocks: int
    full_blocks: int

    @property
    def block_density(self) -> float:
        return self.kept_blocks / self.blocks if self.blocks else 1.0

    def to_dict(self) -> dict:
        return {**asdict(self), "block_density": self.block_density}


def ticket_block_size(ticket: Ticket) -> tuple[int, int] | None:
    """The ticket's block size: its provenance's ``block``, else that of the block pattern its masks fit (``None``
    when the masks are not block-structured, or fit a coarser pattern such as ``channel``)."""
    block = ticket.provenance.get("block")
    if isinstance(block, (list, tuple)) and len(block) == 2:
        return int(block[0]), int(block[1])
    pattern = get_pattern(detect(ticket.masks))
    return pattern.block if isinstance(pattern, Block) else None


def block_stats(ticket: Ticket, block: tuple[int, int] = (16, 16)) -> list[BlockStats]:
    """Per-layer block occupancy of the ticket's masks at ``block = (Bo, Bi)``, in mask order."""
    pattern = block_pattern(*block)
    rows = []
    for name, mask in ticket.masks.items():
        kept = pattern.units(mask, name, False) != 0
        real = pattern.units(torch.ones_like(mask), name, False) != 0
        rows.append(
            BlockStats(
                name=name.removesuffix(".weight"),
                grid=pattern.grid(mask.shape),
                blocks=kept.shape[0],
                kept_blocks=int(kept.any(1).sum()),
                full_blocks=int((kept == real).all(1).sum()),
            )
        )
    return rows


def block_report(ticket: Ticket, block: tuple[int, int] | None = None) -> dict | None:
    """The block structure as plain data (``inspect``'s ``blocks`` entry): the block size, per-layer kept blocks and
    block density, and totals; at :func:`ticket_block_size` unless ``block`` is given, ``None`` for a ticket that is
    not block-structured."""
    block = block or ticket_block_size(ticket)
    if block is None:
        return None
    rows = block_stats(ticket, block)
    blocks, kept = sum(r.blocks for r in rows), sum(r.kept_blocks for r in rows)
    return {
        "block": list(block),
        "layers": [r.to_dict() for r in rows],
        "totals": {"blocks": blocks, "kept_blocks": kept, "block_density": kept / blocks if blocks else 1.0},
    }


def layer_labels(arch) -> dict[str, str]:
    """A readable role for each convolution of ``arch``'s network, keyed by its state-dict path (``conv_layers``):
    "level 3, deeper branch, conv 2" says where a layer sits, ``1.1.7.1.1.7.1.1.4.1`` does not.

    Levels count from 1 at full resolution. A DIP level holds a skip branch (1x1 conv), a deeper branch (a stride-2
    conv, a conv, then the next level) and, after their concatenation, the up-side convs; the deep decoder is a chain
    of 1x1-conv blocks. The labels follow the order in which ``arch.build()`` creates the convolutions.
    """
    kind = getattr(arch, "kind", "dip")
    if kind == "pgan":
        return generator_labels(arch)
    if kind not in ("dip", "dd"):  # a network from the user's code: its paths are its names
        return {name: name for name in conv_layers(arch.build().to("meta"))}
    roles: list[str] = []
    if kind == "dd":
        roles = [f"block {i + 1}, 1x1 conv" for i in range(arch.depth + 1)]
    else:

        def level(i: int) -> None:
            lv = f"level {i + 1}"
            if arch.channels_skip[i]:
                roles.append(f"{lv}, skip branch, conv")
            roles.append(f"{lv}, deeper branch, conv 1 (stride 2)")
            roles.append(f"{lv}, deeper branch, conv 2")
            if i < arch.depth - 1:
                level(i + 1)
            roles.append(f"{lv}, after concat, conv")
            if arch.need1x1_up:
                roles.append(f"{lv}, after concat, 1x1 conv")

        level(0)
    roles.append("output, 1x1 conv")
    names = list(conv_layers(arch.build().to("meta")))
    if len(names) != len(roles):  # an architecture this function does not know: the paths are still unique names
        return {name: name for name in names}
    return dict(zip(names, roles, strict=True))


def generator_labels(arch) -> dict[str, str]:
    """A progressive-GAN generator's convolutions by role: the 4 x 4 conv, two convs per further scale, one toRGB
    per scale (only the last runs when fully grown; the one before it too in a mid-growth blend)."""
    labels = {"groupScale0.0.module": "4x4, conv"}
    for s in range(len(arch.depth_other_scales)):
        side = 4 * 2 ** (s + 1)
        labels[f"scaleLayers.{s}.0.module"] = f"{side}x{side}, conv 1 (after upsampling)"
        labels[f"scaleLayers.{s}.1.module"] = f"{side}x{side}, conv 2"
    last = len(arch.depths) - 1
    for i in range(last + 1):
        side = 4 * 2**i
        used = i == last or (i == last - 1 and arch.alpha > 0)
        labels[f"toRGBLayers.{i}.module"] = f"toRGB at {side}x{side}" + ("" if used else " (unused)")
    return labels

"""Block sparsity: a conv weight ``[Cout, Cin, kh, kw]`` seen as ``kh * kw`` taps of ``[Cout x Cin]`` matrices (a 1x1
conv: one tap), each cut into blocks of ``Bo x Bi`` channels; a block (one tap of ``Bo`` outputs x ``Bi`` inputs) is
kept or pruned whole. This is the structure tensor cores can skip (the ``bsr`` kernels of ``kernels/bsr_format.py``
store exactly these blocks, in the same ``(output block, input block, tap)`` order as :meth:`Block.units`).

Sizes: ``block`` is 16 x 16 (also registered as ``block16x16``); ``block32x16`` and ``block16x8`` are registered too,
and :func:`block_pattern` gives (and registers) any other power-of-two size.

Edge blocks: when a channel count is not a multiple of the block (the 4-channel skip convs, the 3-channel output, the
132-channel concat inputs of the up path; the 32-channel input only at block sides above 32) the last block of a row
/ column is a partial edge block holding only the channels that exist. :meth:`Block.units` pads it to ``Bo * Bi``
positions with zeros, which the shared :func:`~lipdeploy.patterns.base.prune` counts correctly (it counts kept
positions from the mask, and padding is never kept). Every layer is prunable by blocks; none is left dense.

Score: IMP ranks blocks globally by the root mean square of their weights, ``sqrt(sum w^2 / kept positions)`` (the L2
norm per element). Why RMS rather than ``||w||_2 / n``: for weights of one distribution ``||w||_2`` grows like
``sqrt(n)``, so ``||w||_2 / n`` falls like ``1 / sqrt(n)`` and would prune full blocks before small edge blocks of the
same weights; the RMS has the same expected value for a 3 x 16 edge block and a 16 x 16 block, so neither size is
favoured. The output convolution needs no special unit: every block spans all its (at most ``Bo``) colours once
``Bo >= 3``, and :func:`prune` always keeps a layer's best block, so no colour is ever emptied.
"""

from __future__ import annotations

import torch

from .base import Pattern
from .registry import PATTERNS, register_pattern

BLOCK_SIZES: tuple[int, ...] = (4, 8, 16, 32, 64)
"""Allowed block sides (powers of two, as the bsr kernels' tiles)."""

DEFAULT_BLOCK: tuple[int, int] = (16, 16)


class Block(Pattern):
    """Blocks of ``block = (Bo, Bi)`` channels of one tap."""

    unit = "block"
    kernel_format = "bsr"
    score_name = "L2 magnitude per weight (RMS)"

    def __init__(self, bo: int, bi: int, name: str | None = None) -> None:
        if bo not in BLOCK_SIZES or bi not in BLOCK_SIZES:
            raise ValueError(f"block sides must be in {BLOCK_SIZES}, got {bo}x{bi}")
        self.block: tuple[int, int] = (bo, bi)
        self.name = name or block_name(bo, bi)
        self.description = f"blocks of {bo} output x {bi} input channels of one kernel tap"
        # coarser than kernels, finer than channels; a bigger block's mask is also a smaller one's: prefer the bigger
        self.rank = 10 + (bo * bi).bit_length()

    # ------------------------------------------------------------------------------------------- units

    def grid(self, shape: torch.Size | tuple[int, ...]) -> tuple[int, int, int]:
        """``(NBo, NBi, taps)``: the layer's block grid (edge blocks included)."""
        cout, cin, kh, kw = shape
        bo, bi = self.block
        return -(-cout // bo), -(-cin // bi), kh * kw

    def units(self, t: torch.Tensor, layer_name: str, is_output_layer: bool) -> torch.Tensor:
        cout, cin, kh, kw = t.shape
        bo, bi = self.block
        nbo, nbi, kk = self.grid(t.shape)
        padded = t.new_zeros(nbo * bo, nbi * bi, kk)
        padded[:cout, :cin] = t.reshape(cout, cin, kk)
        return padded.view(nbo, bo, nbi, bi, kk).permute(0, 2, 4, 1, 3).reshape(nbo * nbi * kk, bo * bi)

    def fold(self, units: torch.Tensor, shape: torch.Size, layer_name: str, is_output_layer: bool) -> torch.Tensor:
        cout, cin, kh, kw = shape
        bo, bi = self.block
        nbo, nbi, kk = self.grid(shape)
        full = units.reshape(nbo, nbi, kk, bo, bi).permute(0, 3, 1, 4, 2).reshape(nbo * bo, nbi * bi, kk)
        return full[:cout, :cin].reshape(shape).contiguous()

    def settings(self) -> dict[str, object]:
        return {"block": list(self.block)}

    def block_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """Bool ``[NBo, NBi, taps]``: the blocks of ``mask`` holding any nonzero (kept blocks)."""
        return (self.units(mask, "", False) != 0).any(1).reshape(self.grid(mask.shape))

    # ------------------------------------------------------------------------------------------- scores, checks

    def scores(self, weight_units: torch.Tensor, mask_units: torch.Tensor) -> torch.Tensor:
        """RMS of the kept weights of each block (see the module docstring); padding and pruned blocks count 0."""
        kept = mask_units.sum(1).clamp(min=1.0)
        return (weight_units.square().sum(1) / kept).sqrt()

    def check(self, mask: torch.Tensor, name: str, is_output_layer: bool = False) -> str | None:
        u = self.units(mask, name, is_output_layer) != 0
        real = self.units(torch.ones_like(mask), name, is_output_layer) != 0  # False at edge-block padding
        partial = u.any(1) & (u != real).any(1)
        n = int(partial.sum())
        if n:
            return (
                f"{name}: {n} of {u.shape[0]} {self.block[0]}x{self.block[1]} blocks are partly kept (not a block mask)"
            )
        return None


def block_name(bo: int, bi: int) -> str:
    """The registered name of the ``bo x bi`` block pattern (``block`` for the default 16 x 16)."""
    return "block" if (bo, bi) == DEFAULT_BLOCK else f"block{bo}x{bi}"


def parse_block(text: str) -> tuple[int, int]:
    """``"32x16"`` -> ``(32, 16)`` (the form of a ``--block`` value); ValueError for anything else."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"a block size is BOxBI, e.g. 16x16, got {text!r}")
    bo, bi = int(parts[0]), int(parts[1])
    if bo not in BLOCK_SIZES or bi not in BLOCK_SIZES:
        raise ValueError(f"block sides must be in {BLOCK_SIZES}, got {text!r}")
    return bo, bi


def block_pattern(bo: int, bi: int) -> Block:
    """The registered block pattern of ``bo x bi`` channels, registering it first if it is a new size."""
    name = block_name(bo, bi)
    existing = PATTERNS.get(name)
    if isinstance(existing, Block) and existing.block == (bo, bi):
        return existing
    pattern = Block(bo, bi, name)
    register_pattern(pattern)
    if (bo, bi) == DEFAULT_BLOCK:
        register_pattern(pattern, f"block{bo}x{bi}")
    return pattern


for _bo, _bi in (DEFAULT_BLOCK, (32, 16), (16, 8)):
    block_pattern(_bo, _bi)

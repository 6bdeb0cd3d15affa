"""The "bsr" (block-sparse rows) storage format for block tickets (pure PyTorch, no Triton needed).

A block ticket keeps or prunes a conv weight ``W [C_out, C_in, KH, KW]`` in whole blocks: ``W`` is seen as ``KK = KH *
KW`` taps (``t = ky * KW + kx``) of ``[C_out x C_in]`` matrices, each cut into blocks of ``Bo x Bi`` channels (16x16 by
default; 32x16 and 16x8 too). Output block ``ob`` covers channels ``ob * Bo : (ob + 1) * Bo``, input block ``ib``
channels ``ib * Bi : (ib + 1) * Bi``; ``NBo = ceil(C_out / Bo)`` and ``NBi = ceil(C_in / Bi)``. When a channel count is
not a multiple of the block (4-channel skip convs, the 3-channel output, a 132-channel concat input) the last block is
a partial edge block: it is stored full size with exact zeros at the channels past ``C_out`` / ``C_in``.

A block ``(ob, ib, t)`` is kept when the mask has any nonzero in it. The format is exact for any mask, not only a
block-structured one: each kept block stores its full ``Bo x Bi`` tile (zeros where the mask is 0) and the mask itself
(``elem_mask``), and gradients are zeroed where it is False, so a layer trains exactly like the masked dense layer.

All index arrays are ``torch.int32`` and live on the values' device.

Blocks (the values; ``nb`` = number of kept blocks)
---------------------------------------------------
- ``values``    ``[nb, Bo, Bi]`` the kept blocks, each a row-major ``[Bo x Bi]`` tile (output channel major), sorted by
  ``(ob, ib, t)``.
- ``elem_mask`` ``[nb, Bo, Bi]`` bool, the mask inside each kept block (False at edge-block padding).
- ``blk_row``, ``blk_col``, ``blk_tap`` ``[nb]`` the ``ob``, ``ib`` and ``t`` of each block (the weight-gradient
  kernel runs one program per block and reads them; ``to_dense`` scatters with them).

Forward index: per output block group, its runs
-----------------------------------------------
A *run* is an ``(ob, ib)`` pair with at least one kept tap: the blocks of a run are consecutive in ``values``, in tap
order. ``nr`` = number of runs.

- ``row_ptr``   ``[NBo + 1]`` the runs of output group ``ob`` are ``row_ptr[ob] : row_ptr[ob + 1]``, sorted by ``ib``.
- ``run_col``   ``[nr]`` the input block ``ib`` of each run.
- ``run_taps``  ``[nr]`` bit ``t`` set when tap ``t`` of the run is kept (so ``KK <= 31``).
- ``run_block`` ``[nr]`` index in ``values`` of the run's first block; the block of the ``j``-th kept tap (in tap
  order) is ``run_block + j``.

Why runs, input-block major: the forward program of output group ``ob`` and one pixel tile walks its runs in order and,
inside a run, all kept taps of one input block. The taps of one input block read the same ``Bi`` input channels
shifted by at most the kernel's reach, so after the first tap the input halo (16 channels x (tile + 2 rows) x 4 bytes:
about 25 KB for a 128-pixel tile of a 128-wide image) is in L1 for the others; a tap-major order would stream all
``C_in`` channels once per tap (a 132-channel halo is 8x larger and does not stay in L1 between taps). The run's taps
are a bitmask rather than a list so that the kernel can unroll the tap loop and compute each tap's (reflected) input
offsets once per program, not once per block (see bsr_conv.py).

Transposed index (the input gradient): per input block, its runs
----------------------------------------------------------------
The same runs re-sorted by ``(ib, ob)``; they point at the same blocks, so the input-gradient kernel always reads the
*current* values (an optimizer updates ``values`` in place; no repacking, no permuted copy).

- ``col_ptr``       ``[NBi + 1]`` runs reading input block ``ib`` are ``col_ptr[ib] : col_ptr[ib + 1]``, sorted by
  ``ob``.
- ``col_run_row``   ``[nr]`` the output block ``ob`` of each transposed run.
- ``col_run_taps``  ``[nr]`` its tap bitmask (as ``run_taps`` of the same run).
- ``col_run_block`` ``[nr]`` its first block in ``values`` (as ``run_block`` of the same run).

Use ``pack_bsr_weight(weight, mask, block=(Bo, Bi))`` and ``BsrConvWeight.to_dense()``; ``check_bsr_format`` asserts
every invariant above.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .common import ptr_from_counts

__all__ = [
    "BSR_INDEX_FIELDS",
    "BsrConvWeight",
    "block_keep_mask",
    "check_bsr_format",
    "pack_bsr_weight",
    "unpack_bsr_weight",
]

# Tensor fields that are pure index structure (module buffers); ``values`` is the only trainable field.
BSR_INDEX_FIELDS = (
    "elem_mask",
    "blk_row",
    "blk_col",
    "blk_tap",
    "row_ptr",
    "run_col",
    "run_taps",
    "run_block",
    "col_ptr",
    "col_run_row",
    "col_run_taps",
    "col_run_block",
)
BLOCK_SIZES = (1, 2, 4, 8, 16, 32, 64)  # powers of two: the kernels' channel axes are tl.arange ranges
MAX_TAPS = 31  # a run's taps are bits of an int32


@dataclass(frozen=True)
class BsrConvWeight:
    """A block-sparse packed conv weight (see the module docstring)."""

    shape: tuple[int, int, int, int]  # (C_out, C_in, KH, KW)
    block: tuple[int, int]  # (Bo, Bi)
    values: torch.Tensor
    elem_mask: torch.Tensor
    blk_row: torch.Tensor
    blk_col: torch.Tensor
    blk_tap: torch.Tensor
    row_ptr: torch.Tensor
    run_col: torch.Tensor
    run_taps: torch.Tensor
    run_block: torch.Tensor
    col_ptr: torch.Tensor
    col_run_row: torch.Tensor
    col_run_taps: torch.Tensor
    col_run_block: torch.Tensor
    format: str = "bsr"

    @property
    def kk(self) -> int:
        return self.shape[2] * self.shape[3]

    @property
    def grid(self) -> tuple[int, int]:
        """(NBo, NBi): output and input block counts, edge blocks included."""
        bo, bi = self.block
        return -(-self.shape[0] // bo), -(-self.shape[1] // bi)

    @property
    def num_blocks(self) -> int:
        return self.values.shape[0]

    @property
    def nnz(self) -> int:
        """Stored values (kept blocks x Bo x Bi, edge padding and in-block zeros included)."""
        return self.values.numel()

    @property
    def block_density(self) -> float:
        """Kept blocks / all blocks (the fraction of tensor-core work the kernels do)."""
        nbo, nbi = self.grid
        total = nbo * nbi * self.kk
        return self.num_blocks / total if total else 0.0

    def with_values(self, values: torch.Tensor) -> BsrConvWeight:
        """Same index structure, other values (e.g. an nn.Parameter); keeps autograd history of ``values``."""
        if values.shape != self.values.shape:
            raise ValueError(f"values must have shape {tuple(self.values.shape)}, got {tuple(values.shape)}")
        return dataclasses.replace(self, values=values)

    def to(self, device=None, dtype=None) -> BsrConvWeight:
        """Move index tensors to ``device``; values to ``device`` and ``dtype``."""
        changes = {"values": self.values.to(device=device, dtype=dtype)}
        for name in BSR_INDEX_FIELDS:
            changes[name] = getattr(self, name).to(device=device)
        return dataclasses.replace(self, **changes)

    def to_dense(self) -> torch.Tensor:
        """Exact dense weight ``[C_out, C_in, KH, KW]`` (zeros off the mask); differentiable w.r.t. ``values``."""
        cout, cin, kh, kw = self.shape
        bo, bi = self.block
        nbo, nbi = self.grid
        kk = self.kk
        vals = self.values * self.elem_mask.to(self.values.dtype)  # exact: stored values are already 0 off the mask
        flat = self.values.new_zeros(nbo * nbi * kk, bo, bi)
        pos = (self.blk_row.long() * nbi + self.blk_col.long()) * kk + self.blk_tap.long()
        flat = flat.index_put((pos,), vals)
        dense = flat.view(nbo, nbi, kk, bo, bi).permute(0, 3, 1, 4, 2).reshape(nbo * bo, nbi * bi, kk)
        return dense[:cout, :cin].reshape(cout, cin, kh, kw)

    def grad_mask(self) -> torch.Tensor:
        """Bool mask over ``values`` to apply to gradients (False off the ticket's mask and at edge padding)."""
        return self.elem_mask

    def block_mask(self) -> torch.Tensor:
        """Bool ``[NBo, NBi, KK]``: which blocks are kept."""
        nbo, nbi = self.grid
        keep = torch.zeros(nbo * nbi * self.kk, dtype=torch.bool, device=self.values.device)
        keep[(self.blk_row.long() * nbi + self.blk_col.long()) * self.kk + self.blk_tap.long()] = True
        return keep.view(nbo, nbi, self.kk)


def unpack_bsr_weight(packed: BsrConvWeight) -> torch.Tensor:
    return packed.to_dense()


def _check_block(block: tuple[int, int]) -> tuple[int, int]:
    if len(block) != 2 or any(int(b) not in BLOCK_SIZES for b in block):
        raise ValueError(f"block must be two powers of two in {BLOCK_SIZES} (Bo, Bi), got {tuple(block)!r}")
    return int(block[0]), int(block[1])


def _blocked(t: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """``[C_out, C_in, KH, KW]`` -> ``[NBo, NBi, KK, Bo, Bi]``, zero-padded to whole blocks."""
    cout, cin, kh, kw = t.shape
    bo, bi = block
    nbo, nbi = -(-cout // bo), -(-cin // bi)
    kk = kh * kw
    padded = t.new_zeros(nbo * bo, nbi * bi, kk)
    padded[:cout, :cin] = t.reshape(cout, cin, kk)
    return padded.view(nbo, bo, nbi, bi, kk).permute(0, 2, 4, 1, 3)


def block_keep_mask(mask: torch.Tensor, block: tuple[int, int] = (16, 16)) -> torch.Tensor:
    """Bool ``[NBo, NBi, KK]``: the blocks of ``mask`` (``[C_out, C_in, KH, KW]``) holding any nonzero."""
    return _blocked(mask.detach() != 0, _check_block(block)).any(dim=(3, 4))


def pack_bsr_weight(
    weight: torch.Tensor, mask: torch.Tensor | None = None, block: tuple[int, int] = (16, 16)
) -> BsrConvWeight:
    """Pack a dense conv weight ``[C_out, C_in, KH, KW]`` into its kept ``Bo x Bi`` blocks (``block = (Bo, Bi)``).

    ``mask=None`` uses ``weight != 0``. A block is kept when ``mask`` has any nonzero in it; values at mask positions
    are stored even when they are 0.0 (a ticket's mask, not the value, defines the structure).
    """
    if weight.dim() != 4:
        raise ValueError(f"conv weight must be 4-D [C_out, C_in, KH, KW], got shape {tuple(weight.shape)}")
    if mask is None:
        mask = weight != 0
    if mask.shape != weight.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != weight shape {tuple(weight.shape)}")
    bo, bi = _check_block(block)
    cout, cin, kh, kw = (int(s) for s in weight.shape)
    kk = kh * kw
    if kk > MAX_TAPS:
        raise ValueError(f"bsr stores a run's taps as int32 bits: at most {MAX_TAPS} taps, got {kh}x{kw}")
    weight = weight.detach()
    mask = mask.detach().to(device=weight.device) != 0
    dev = weight.device
    i32 = torch.int32

    mb = _blocked(mask, (bo, bi))  # [NBo, NBi, KK, Bo, Bi]
    wb = _blocked(torch.where(mask, weight, torch.zeros_like(weight)), (bo, bi))
    keep = mb.any(dim=(3, 4))  # [NBo, NBi, KK]
    nbo, nbi = keep.shape[:2]
    ob, ib, tap = keep.nonzero(as_tuple=True)  # row-major: sorted by (ob, ib, t), the order the forward walks
    values = wb[ob, ib, tap].contiguous()
    elem_mask = mb[ob, ib, tap].contiguous()

    runs = keep.any(dim=2)  # [NBo, NBi]
    rob, rib = runs.nonzero(as_tuple=True)  # sorted by (ob, ib)
    run_keep = keep[rob, rib]  # [nr, KK]
    bits = (run_keep.long() << torch.arange(kk, device=dev)).sum(dim=1)
    run_block = ptr_from_counts(run_keep.sum(dim=1))[:-1]
    row_ptr = ptr_from_counts(torch.bincount(rob, minlength=nbo))
    corder = torch.argsort(rib * nbo + rob)
    col_ptr = ptr_from_counts(torch.bincount(rib, minlength=nbi))
    return BsrConvWeight(
        shape=(cout, cin, kh, kw),
        block=(bo, bi),
        values=values,
        elem_mask=elem_mask,
        blk_row=ob.to(i32).contiguous(),
        blk_col=ib.to(i32).contiguous(),
        blk_tap=tap.to(i32).contiguous(),
        row_ptr=row_ptr.to(i32),
        run_col=rib.to(i32).contiguous(),
        run_taps=bits.to(i32).contiguous(),
        run_block=run_block.to(i32).contiguous(),
        col_ptr=col_ptr.to(i32),
        col_run_row=rob[corder].to(i32).contiguous(),
        col_run_taps=bits[corder].to(i32).contiguous(),
        col_run_block=run_block[corder].to(i32).contiguous(),
    )


def check_bsr_format(p: BsrConvWeight) -> None:
    """Assert every documented invariant of ``p`` (raises AssertionError)."""
    cout, cin, kh, kw = p.shape
    bo, bi = p.block
    nbo, nbi = p.grid
    kk = p.kk
    nb = p.values.shape[0]
    assert p.format == "bsr" and bo in BLOCK_SIZES and bi in BLOCK_SIZES and kk <= MAX_TAPS
    assert p.values.shape == (nb, bo, bi) and p.elem_mask.shape == (nb, bo, bi) and p.elem_mask.dtype == torch.bool
    for name in BSR_INDEX_FIELDS:
        t = getattr(p, name)
        if name != "elem_mask":
            assert t.dtype == torch.int32, f"{name} must be int32, got {t.dtype}"
        assert t.is_contiguous(), f"{name} must be contiguous"
    assert bool((p.values[~p.elem_mask] == 0).all()), "values must be 0 off the mask"
    # edge padding is never part of the mask
    dev = p.values.device
    rows = p.blk_row.long()[:, None] * bo + torch.arange(bo, device=dev)[None, :]  # [nb, Bo]
    cols = p.blk_col.long()[:, None] * bi + torch.arange(bi, device=dev)[None, :]  # [nb, Bi]
    assert not bool((p.elem_mask & (rows >= cout)[:, :, None]).any()), "mask set past C_out"
    assert not bool((p.elem_mask & (cols >= cin)[:, None, :]).any()), "mask set past C_in"
    assert bool(p.elem_mask.flatten(1).any(dim=1).all()) if nb else True, "a stored block is empty"
    key = (p.blk_row.long() * nbi + p.blk_col.long()) * kk + p.blk_tap.long()
    assert bool((key[1:] > key[:-1]).all()), "blocks not strictly sorted by (ob, ib, t)"
    assert bool(((p.blk_row >= 0) & (p.blk_row < nbo) & (p.blk_col >= 0) & (p.blk_col < nbi)).all())
    assert bool(((p.blk_tap >= 0) & (p.blk_tap < kk)).all())

    rp = p.row_ptr.long()
    nr = p.run_col.numel()
    assert rp.shape == (nbo + 1,) and rp[0] == 0 and rp[-1] == nr and bool((rp[1:] >= rp[:-1]).all())
    for name in ("run_taps", "run_block", "col_run_row", "col_run_taps", "col_run_block"):
        assert getattr(p, name).shape == (nr,), f"{name} must have one entry per run"
    run_row = torch.repeat_interleave(torch.arange(nbo, device=rp.device), rp[1:] - rp[:-1])
    taps = p.run_taps.long()
    counts = torch.stack([(taps >> t) & 1 for t in range(kk)], dim=1).sum(dim=1) if nr else taps
    assert bool((counts > 0).all()), "a run without kept taps"
    assert bool((taps >> kk == 0).all()), "tap bits past KK"
    start = p.run_block.long()
    assert bool((start == ptr_from_counts(counts)[:-1]).all()), "runs must tile values in order"
    assert int(counts.sum()) == nb
    for r in range(nr):
        blk = torch.arange(int(start[r]), int(start[r] + counts[r]), device=rp.device)
        assert bool((p.blk_row.long()[blk] == run_row[r]).all()) and bool((p.blk_col[blk] == p.run_col[r]).all())
        expect = [t for t in range(kk) if (int(taps[r]) >> t) & 1]
        assert p.blk_tap[blk].tolist() == expect, "a run's blocks must be its kept taps in order"
    for ob in range(nbo):
        seg = p.run_col.long()[rp[ob] : rp[ob + 1]]
        assert bool((seg[1:] > seg[:-1]).all()), "runs of an output group not sorted by input block"

    cp = p.col_ptr.long()
    assert cp.shape == (nbi + 1,) and cp[0] == 0 and cp[-1] == nr and bool((cp[1:] >= cp[:-1]).all())
    # the transposed runs are a permutation of the forward runs, sorted by (ib, ob)
    fwd = sorted(zip(p.run_col.tolist(), run_row.tolist(), taps.tolist(), start.tolist(), strict=True))
    col_ib = torch.repeat_interleave(torch.arange(nbi, device=cp.device), cp[1:] - cp[:-1])
    col = list(
        zip(col_ib.tolist(), p.col_run_row.tolist(), p.col_run_taps.tolist(), p.col_run_block.tolist(), strict=True)
    )
    assert col == fwd, "transposed runs must be the forward runs sorted by (ib, ob)"

"""Sparse storage formats for convolution weights (pure PyTorch, no Triton needed).

A conv weight ``W`` has shape ``[C_out, C_in, KH, KW]``; ``KK = KH * KW`` is the number of taps of one kernel and a tap
``t = ky * KW + kx`` names one spatial position of a kernel. Both formats are packed from a dense weight and a 0/1 mask
of the same shape and unpack back to the exact dense weight (zeros where the mask is 0).

All index arrays are ``torch.int32`` (C_out, C_in, nnz are far below 2**31 for conv layers) and live on the same device
as the values. Values keep the dtype of the packed weight (float32 in practice); kernels accumulate in float32.

Format ``"csr"`` (unstructured, one entry per nonzero weight) -- ``SparseConvWeight`` with ``format == "csr"``
--------------------------------------------------------------------------------------------------------------------
Forward index (per output channel, compressed rows):

- ``values``  ``[nnz]``          the nonzero weights, in row order (see ordering below).
- ``row_ptr`` ``[C_out + 1]``    row ``co`` owns entries ``row_ptr[co] : row_ptr[co + 1]``; ``row_ptr[0] == 0``,
  ``row_ptr[C_out] == nnz``, non-decreasing.
- ``idx``     ``[nnz]``          flattened in-row column ``cin * KK + ky * KW + kx`` (i.e. the index into
  ``W[co].flatten()``).
- ``cin``     ``[nnz]``          ``idx // KK``, the input channel of each entry: redundant, stored so that the kernels'
  hot loops skip an integer division per nonzero (8% fewer SASS instructions in the forward loop on sm_90).
- ``tap_ptr`` ``[C_out, KK + 1]`` segmentation of every row by tap: entries of row ``co`` at tap ``t`` are
  ``tap_ptr[co, t] : tap_ptr[co, t + 1]`` (absolute offsets into ``idx``/``values``); ``tap_ptr[co, 0] == row_ptr[co]``
  and ``tap_ptr[co, KK] == row_ptr[co + 1]``.

Ordering invariant: inside a row, entries are sorted by ``(tap, cin)`` -- tap-major, not by ``idx``. This is still a
valid CSR (CSR does not require sorted columns) and lets a kernel compute the (reflected) input offsets of a tap once
and then stream all input channels of that tap (see sparse_conv.py).

Transposed index (per input channel, CSC-like; used by the input-gradient kernel), built once at pack time:

- ``col_tap_ptr`` ``[C_in, KK + 1]`` entries of input channel ``ci`` at tap ``t`` are ``col_tap_ptr[ci, t] :
  col_tap_ptr[ci, t + 1]``; ``col_tap_ptr[0, 0] == 0``, ``col_tap_ptr[C_in - 1, KK] == nnz``,
  ``col_tap_ptr[ci, KK] == col_tap_ptr[ci + 1, 0]``.
- ``col_row``  ``[nnz]``  output channel of each transposed entry (sorted by ``(cin, tap, cout)``).
- ``col_perm`` ``[nnz]``  position of that entry in ``values`` (a permutation of ``0..nnz-1``), so the transposed
  kernel always reads the *current* values (an optimizer updates ``values`` in place; no repacking).

Format ``"kernel"`` (kernel-granular: skips whole zero ``(cout, cin)`` kernels, keeps all KK taps of the others dense)
--------------------------------------------------------------------------------------------------------------------
A kernel ``(co, ci)`` is kept if its mask has any nonzero tap. ``nk`` = number of kept kernels.

- ``values``   ``[nk * KK]``  taps of the kept kernels, kernel-major: kernel ``k`` owns ``values[k*KK:(k+1)*KK]`` in tap
  order; taps whose mask is 0 are stored as exact zeros.
- ``row_ptr``  ``[C_out + 1]`` kept kernels of output channel ``co`` are ``k in row_ptr[co] : row_ptr[co + 1]``.
- ``idx``      ``[nk]``        input channel ``cin`` of kept kernel ``k`` (sorted ascending inside a row).
- ``tap_mask`` ``[nk * KK]``   bool, the original mask at the stored taps (gradients are zeroed where it is False, so a
  kernel-granular layer trains exactly like the unstructured one).
- ``col_ptr``  ``[C_in + 1]``  transposed: kept kernels reading input channel ``ci`` are ``col_ptr[ci] :
  col_ptr[ci + 1]`` in the arrays below.
- ``col_row``  ``[nk]``  output channel of each transposed kept kernel (sorted by ``(cin, cout)``).
- ``col_perm`` ``[nk]``  the kernel index ``k`` of that entry (its taps are ``values[col_perm[j]*KK + t]``).
``tap_ptr``, ``cin`` and ``col_tap_ptr`` are ``None`` for this format.

Use ``pack_conv_weight(weight, mask, format=...)`` and ``SparseConvWeight.to_dense()``; ``check_format`` asserts every
invariant above.

Format ``"bsr"`` (block-sparse rows: whole ``Bo x Bi`` channel blocks per tap, for block tickets and the tensor-core
kernels) -- ``BsrConvWeight``, documented with its invariants in ``bsr_format.py``
--------------------------------------------------------------------------------------------------------------------
Kept blocks ``values [nb, Bo, Bi]`` with their in-block mask, sorted by ``(output block, input block, tap)``; per
output block group its *runs* (one input block with a bitmask of kept taps) for the forward, and the same runs sorted
by input block for the input gradient. Use ``pack_bsr_weight(weight, mask, block=(Bo, Bi))``,
``BsrConvWeight.to_dense()`` and ``check_bsr_format``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .common import ptr_from_counts

__all__ = ["SparseConvWeight", "pack_conv_weight", "unpack_conv_weight", "check_format", "INDEX_FIELDS"]

# Tensor fields that are pure index structure (module buffers); ``values`` is the only trainable field.
INDEX_FIELDS = ("row_ptr", "idx", "cin", "tap_ptr", "col_tap_ptr", "col_ptr", "col_row", "col_perm", "tap_mask")


@dataclass(frozen=True)
class SparseConvWeight:
    """A packed sparse conv weight (see the module docstring for the two formats)."""

    shape: tuple[int, int, int, int]  # (C_out, C_in, KH, KW)
    format: str  # "csr" | "kernel"
    values: torch.Tensor
    row_ptr: torch.Tensor
    idx: torch.Tensor
    col_row: torch.Tensor
    col_perm: torch.Tensor
    tap_ptr: torch.Tensor | None = None  # csr only
    cin: torch.Tensor | None = None  # csr only
    col_tap_ptr: torch.Tensor | None = None  # csr only
    col_ptr: torch.Tensor | None = None  # kernel only
    tap_mask: torch.Tensor | None = None  # kernel only

    @property
    def kk(self) -> int:
        return self.shape[2] * self.shape[3]

    @property
    def nnz(self) -> int:
        """Number of stored values (for "kernel": kept kernels x KK, including zero taps)."""
        return self.values.numel()

    @property
    def density(self) -> float:
        total = self.shape[0] * self.shape[1] * self.kk
        return self.nnz / total if total else 0.0

    def with_values(self, values: torch.Tensor) -> SparseConvWeight:
        """Same index structure, other values (e.g. an nn.Parameter); keeps autograd history of ``values``."""
        if values.shape != self.values.shape:
            raise ValueError(f"values must have shape {tuple(self.values.shape)}, got {tuple(values.shape)}")
        return dataclasses.replace(self, values=values)

    def to(self, device=None, dtype=None) -> SparseConvWeight:
        """Move index tensors to ``device``; values to ``device`` and ``dtype``."""
        changes = {"values": self.values.to(device=device, dtype=dtype)}
        for name in INDEX_FIELDS:
            t = getattr(self, name)
            if t is not None:
                changes[name] = t.to(device=device)
        return dataclasses.replace(self, **changes)

    def flat_positions(self) -> torch.Tensor:
        """int64 [nnz]: position of each value in ``W.flatten()`` (for scatter/gather with the dense weight)."""
        cout, cin, _, _ = self.shape
        kk = self.kk
        rows = torch.repeat_interleave(
            torch.arange(cout, device=self.row_ptr.device), (self.row_ptr[1:] - self.row_ptr[:-1]).long()
        )
        if self.format == "csr":
            return rows * (cin * kk) + self.idx.long()
        base = (rows * cin + self.idx.long()) * kk  # [nk]
        return (base[:, None] + torch.arange(kk, device=base.device)[None, :]).reshape(-1)

    def to_dense(self) -> torch.Tensor:
        """Exact dense weight (zeros off the mask); differentiable w.r.t. ``values``."""
        numel = 1
        for s in self.shape:
            numel *= s
        flat = self.values.new_zeros(numel).index_put((self.flat_positions(),), self.values)
        return flat.view(self.shape)

    def grad_mask(self) -> torch.Tensor | None:
        """Float mask over ``values`` to apply to gradients (None for csr: every stored value is a mask nonzero)."""
        return None if self.tap_mask is None else self.tap_mask


def unpack_conv_weight(packed: SparseConvWeight) -> torch.Tensor:
    return packed.to_dense()


def pack_conv_weight(weight: torch.Tensor, mask: torch.Tensor | None = None, format: str = "csr") -> SparseConvWeight:
    """Pack a dense conv weight ``[C_out, C_in, KH, KW]`` at the nonzeros of ``mask`` (0/1, same shape).

    ``mask=None`` uses ``weight != 0``. Values at mask positions are stored even when they are 0.0 (a ticket's mask, not
    the value, defines the structure).
    """
    if weight.dim() != 4:
        raise ValueError(f"conv weight must be 4-D [C_out, C_in, KH, KW], got shape {tuple(weight.shape)}")
    if mask is None:
        mask = weight != 0
    if mask.shape != weight.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != weight shape {tuple(weight.shape)}")
    weight = weight.detach()
    mask = mask.detach().to(device=weight.device) != 0
    cout, cin, kh, kw = (int(s) for s in weight.shape)
    kk = kh * kw
    dev = weight.device
    i32 = torch.int32

    if format == "csr":
        co, ci, ky, kx = mask.nonzero(as_tuple=True)
        tap = ky * kw + kx
        order = torch.argsort(co * (kk * cin) + tap * cin + ci)
        co, ci, tap = co[order], ci[order], tap[order]
        values = weight[co, ci, tap // kw, tap % kw].contiguous()
        row_ptr = ptr_from_counts(torch.bincount(co, minlength=cout))
        tflat = ptr_from_counts(torch.bincount(co * kk + tap, minlength=cout * kk))
        tap_ptr = tflat[torch.arange(cout, device=dev)[:, None] * kk + torch.arange(kk + 1, device=dev)[None, :]]
        corder = torch.argsort(ci * (kk * cout) + tap * cout + co)
        cflat = ptr_from_counts(torch.bincount(ci * kk + tap, minlength=cin * kk))
        col_tap_ptr = cflat[torch.arange(cin, device=dev)[:, None] * kk + torch.arange(kk + 1, device=dev)[None, :]]
        return SparseConvWeight(
            shape=(cout, cin, kh, kw),
            format="csr",
            values=values,
            row_ptr=row_ptr.to(i32),
            idx=(ci * kk + tap).to(i32),
            cin=ci.to(i32).contiguous(),
            col_row=co[corder].to(i32).contiguous(),
            col_perm=corder.to(i32).contiguous(),
            tap_ptr=tap_ptr.to(i32).contiguous(),
            col_tap_ptr=col_tap_ptr.to(i32).contiguous(),
        )
    if format == "kernel":
        kmask = mask.reshape(cout, cin, kk)
        keep = kmask.any(dim=2)
        co, ci = keep.nonzero(as_tuple=True)  # row-major: sorted by (co, ci)
        w = weight.reshape(cout, cin, kk)[co, ci]  # [nk, KK]
        tm = kmask[co, ci]
        values = torch.where(tm, w, torch.zeros_like(w)).reshape(-1).contiguous()
        row_ptr = ptr_from_counts(torch.bincount(co, minlength=cout))
        corder = torch.argsort(ci * cout + co)
        col_ptr = ptr_from_counts(torch.bincount(ci, minlength=cin))
        return SparseConvWeight(
            shape=(cout, cin, kh, kw),
            format="kernel",
            values=values,
            row_ptr=row_ptr.to(i32),
            idx=ci.to(i32).contiguous(),
            col_row=co[corder].to(i32).contiguous(),
            col_perm=corder.to(i32).contiguous(),
            col_ptr=col_ptr.to(i32),
            tap_mask=tm.reshape(-1).contiguous(),
        )
    raise ValueError(f"unknown sparse format {format!r}; expected 'csr' or 'kernel'")


def check_format(p: SparseConvWeight) -> None:
    """Assert every documented invariant of ``p`` (raises AssertionError)."""
    cout, cin, kh, kw = p.shape
    kk = kh * kw
    n = p.values.numel()
    for name in INDEX_FIELDS:
        t = getattr(p, name)
        if t is not None and name != "tap_mask":
            assert t.dtype == torch.int32, f"{name} must be int32, got {t.dtype}"
            assert t.is_contiguous(), f"{name} must be contiguous"
    rp = p.row_ptr.long()
    assert rp.shape == (cout + 1,) and rp[0] == 0 and bool((rp[1:] >= rp[:-1]).all())
    if p.format == "csr":
        assert p.idx.shape == (n,) and rp[-1] == n
        idx = p.idx.long()
        assert p.cin is not None and bool((p.cin.long() == idx // kk).all()), "cin must equal idx // KK"
        assert bool(((idx >= 0) & (idx < cin * kk)).all())
        tp = p.tap_ptr.long()
        assert tp.shape == (cout, kk + 1)
        assert bool((tp[:, 0] == rp[:-1]).all()) and bool((tp[:, -1] == rp[1:]).all())
        assert bool((tp[:, 1:] >= tp[:, :-1]).all())
        for co in range(cout):
            for t in range(kk):
                seg = idx[tp[co, t] : tp[co, t + 1]]
                assert bool((seg % kk == t).all()), "tap segment holds another tap"
                assert bool((seg[1:] > seg[:-1]).all()), "cin not strictly increasing inside a tap segment"
        ctp = p.col_tap_ptr.long()
        assert ctp.shape == (cin, kk + 1) and ctp[0, 0] == 0 and ctp[-1, -1] == n
        assert bool((ctp[1:, 0] == ctp[:-1, -1]).all()) and bool((ctp[:, 1:] >= ctp[:, :-1]).all())
        perm = p.col_perm.long()
        assert bool((torch.sort(perm).values == torch.arange(n, device=perm.device)).all())
        rows = torch.repeat_interleave(torch.arange(cout, device=rp.device), rp[1:] - rp[:-1])
        assert bool((rows[perm] == p.col_row.long()).all())
        for ci in range(cin):
            for t in range(kk):
                seg = perm[ctp[ci, t] : ctp[ci, t + 1]]
                assert bool((idx[seg] == ci * kk + t).all()), "transposed segment points at a wrong entry"
                r = p.col_row.long()[ctp[ci, t] : ctp[ci, t + 1]]
                assert bool((r[1:] > r[:-1]).all())
    elif p.format == "kernel":
        nk = p.idx.numel()
        assert n == nk * kk and rp[-1] == nk
        assert p.tap_mask is not None and p.tap_mask.dtype == torch.bool and p.tap_mask.shape == (n,)
        assert bool((p.values[~p.tap_mask] == 0).all())
        assert bool(p.tap_mask.view(nk, kk).any(dim=1).all()) if nk else True
        idx = p.idx.long()
        for co in range(cout):
            seg = idx[rp[co] : rp[co + 1]]
            assert bool((seg[1:] > seg[:-1]).all()) and bool(((seg >= 0) & (seg < cin)).all())
        cp = p.col_ptr.long()
        assert cp.shape == (cin + 1,) and cp[0] == 0 and cp[-1] == nk
        perm = p.col_perm.long()
        assert bool((torch.sort(perm).values == torch.arange(nk, device=perm.device)).all())
        rows = torch.repeat_interleave(torch.arange(cout, device=rp.device), rp[1:] - rp[:-1])
        assert bool((rows[perm] == p.col_row.long()).all())
        for ci in range(cin):
            assert bool((idx[perm[cp[ci] : cp[ci + 1]]] == ci).all())
    else:
        raise AssertionError(f"unknown format {p.format!r}")

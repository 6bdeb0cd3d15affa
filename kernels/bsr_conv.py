"""Triton tensor-core kernels for block-sparse ("bsr") 2-D convolution: forward, input grad, weight grad.

This module imports triton at import time (``lipdeploy.kernels`` imports it lazily). Without CUDA set
``TRITON_INTERPRET=1`` before triton is first imported to run the same kernels on CPU tensors (slow; for tests).

Layout: activations dense NCHW, contiguous; weights packed by ``bsr_format.pack_bsr_weight`` (kept ``Bo x Bi`` blocks
per tap). The pure-PyTorch reference of the same signature is ``bsr_reference.bsr_conv2d_reference``.

Design (why it looks like this)
-------------------------------
* Every kernel is a loop of ``tl.dot`` over kept blocks, so the work runs on tensor cores (wgmma / mma.sync) instead of
  one CUDA-core FMA per gathered load (the csr/kernel formats' bound, see sparse_conv.py), and a pruned block costs
  nothing: it is not in the list.
* Forward, grid = (NBo output block groups, pixel tiles, N). One program computes ``out^T[P, Bo] += X^T[P, Bi] @
  W_blk^T[Bi, Bo]`` over the kept ``(input block, tap)`` entries of its group: the same product as ``W_blk[Bo, Bi] @
  X[Bi, P]``, transposed so that the pixel tile is the MMA's M dimension. Why: Hopper's wgmma needs M = 64 per
  warpgroup; with M = Bo = 16 Triton falls back to mma.sync (compiled offline for sm_90, a toy loop of this product
  with 128 pixels, 16x16 tf32 blocks, 4 warps: 4 HGMMA per block P-major, 8 HMMA Bo-major). The output group is the
  fastest grid axis so the programs running together share one pixel tile and read its input from L2.
* The tap loop is unrolled (``tl.static_range``) inside the loop over the group's runs (one run = one input block with
  a bitmask of kept taps, see bsr_format.py): the reflected (or zero-padding clamped) input rows of each ``ky`` and
  columns of each ``kx`` are computed ONCE per program, before the run loop (a tap's offset is then one add), and a
  run's taps read the same Bi input channels, so the halo is in L1 after the first tap. A pruned tap is a uniform
  branch around its loads and dot. Measured against a flat loop over kept blocks (runtime tap, offsets per block;
  sm_90, 16x16 tf32, 128 pixels, 4 warps): 90 SASS instructions per block here, 153 flat; Triton software-pipelines
  only the flat loop (no branch inside), into cp.async prefetches at 217 instructions per block. Whether prefetching
  beats 40% fewer instructions at 24 resident warps per SM is for a GPU timing to say; the flat variant is the
  alternative to try.
* Gathers are loaded as ``[channels, pixels]`` (pixels along a warp's lanes: 32 consecutive pixels of one channel per
  load instruction, one or two cache lines) and transposed in registers for the MMA. Loaded directly as ``[pixels,
  channels]`` Triton put 16 lanes across channels (16 cache lines per load instruction) and each thread held 16
  pixels' offsets per tap: 255 registers for the forward instead of 80 (sm_90, 128-pixel tiles, 4 warps).
* ``tl.dot`` needs every dimension >= 16: blocks narrower than 16 (16x8 blocks) are padded to 16 in registers (the
  weight load is masked to zeros past ``Bi``), so they cost a 16-wide MMA.
* Epilogue: bias, and optionally the per-channel sum and sum of squares of the output (fp32, before rounding to the
  output dtype) for the BatchNorm that follows: written as per-(image, tile) partials that torch sums in a fixed order
  (deterministic), so BN needs no extra read of the output.
* Input grad (transposed conv), grid = (NBi, phase x padded-input tiles, N): ``gx^T[P, Bi] += G^T[P, Bo] @
  W_blk[Bo, Bi]`` over the transposed runs (the stored block is already the B operand). It computes the gradient of
  the padded input; the host folds the reflected borders back (``common.fold_reflect_grad``) or crops. Tiles are per
  stride phase (as in sparse_conv.py): a program only multiplies the taps that reach its phase.
* Weight grad at the kept blocks only, grid = (kept blocks, row chunks): ``dW_blk^T[Bi, Bo] += X[Bi, P] @ G^T[P, Bo]``
  over a fixed chunk of output rows (of all images), a row in column tiles of up to ``block_p_wgrad`` pixels; each
  program writes its partial block and torch sums the chunks in order: deterministic, no atomics. (M = Bi here, so
  sm_90 uses mma.sync: the product is per block, the long reduction is over pixels.)
* Numerics: ``precision="tf32"`` (default: what PyTorch's dense conv uses on CUDA), ``"tf32x3"`` (fp32-accurate products
  from three tf32 MMAs), ``"ieee"`` (exact fp32 products; Triton lowers it to CUDA-core FMAs, not tensor cores: the slow
  path, for checking) or ``"bf16"`` (operands rounded to bfloat16, fp32 accumulation). Triton's interpreter computes
  ``tl.dot`` with numpy in fp32 whatever ``input_precision`` says (tf32 = ieee there, measured 1.5e-6 max error on a
  16x16x16 product), and returns garbage for bfloat16 operands (errors of 2e10 with Triton 3.9), so under the
  interpreter the bf16 path rounds the operands to bf16 itself (ties to even, as the GPU's cast; the interpreter's cast
  truncates) and multiplies them as fp32: identical, since a product of two bf16 values is exact in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .bsr_format import BsrConvWeight
from .bsr_reference import check_precision
from .common import check_conv_args, conv_output_size, unpad_input_grad
from .triton_common import INTERPRET, check_kernel_device, source_index

__all__ = [
    "BsrConfig",
    "BsrConv2dFunction",
    "bsr_conv2d",
    "bsr_conv2d_forward",
    "bsr_conv2d_input_grad",
    "bsr_conv2d_weight_grad",
    "default_bsr_config",
    # the jit kernels themselves: bench.gpu's SASS reports compile them offline for sm_90
    "bsr_conv2d_fwd_kernel",
    "bsr_conv2d_dgrad_kernel",
    "bsr_conv2d_wgrad_kernel",
]

MIN_DOT = 16  # tl.dot needs M, N, K >= 16


@dataclass(frozen=True)
class BsrConfig:
    """Tunables. BLOCK sizes are powers of two >= 16 (they are an MMA dimension)."""

    block_p_fwd: int = 128
    block_p_dgrad: int = 128
    block_p_wgrad: int = 64  # column tile of one output row (the weight grad walks rows)
    wgrad_rows: int = 4  # at least this many output rows reduced per weight-grad program, ...
    wgrad_max_chunks: int = 64  # ... and at most this many partial sums per block (memory and the final torch sum)
    num_warps: int = 4

    @property
    def tag(self) -> str:
        """Short stable name, e.g. ``bsr.p128-128-64.r4-64.w4`` (cache entries, benchmark rows)."""
        tiles = f"r{self.wgrad_rows}-{self.wgrad_max_chunks}"
        return f"bsr.p{self.block_p_fwd}-{self.block_p_dgrad}-{self.block_p_wgrad}.{tiles}.w{self.num_warps}"


def default_bsr_config(num_out_pixels: int, device: torch.device) -> BsrConfig:
    """Tile sizes by output size. Not yet timed on a GPU; chosen from the sm_90 compile (``python -m
    lipdeploy.bench.gpu.bsr_sass``, rows in bench/results/kernel_sass_sm90.json): a 128-pixel tile with 4 warps is
    M = 128, two m64 wgmma per warpgroup. At 16x16 tf32 blocks the forward / input grad / weight grad take 80 / 92 / 126
    registers (24 / 20 / 16 resident warps per SM, no spills) and their hot loops issue 90 / 79 / 44 useful
    multiply-adds per warp instruction, against 6 for the csr kernels' 5.3 instructions per FMA. The weight grad's
    column tile is 64 pixels: at 128 its pipelined loads take 226 registers (8 warps per SM). Outputs of 32x32 and
    less get 64-pixel tiles so that a layer still spreads over the SMs."""
    if device.type != "cuda":
        # interpreter: its cost is per program and per op, so tiles are as large as the tests' small images allow
        # while still spanning several tiles
        bp = 32 if num_out_pixels <= 1024 else 128
        return BsrConfig(block_p_fwd=bp, block_p_dgrad=bp, block_p_wgrad=bp, wgrad_rows=16, num_warps=1)
    if num_out_pixels <= 1024:
        return BsrConfig(block_p_fwd=64, block_p_dgrad=64, block_p_wgrad=64, wgrad_rows=2, num_warps=4)
    return BsrConfig()


# --------------------------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------------------------


@triton.jit
def _round_bf16(v):
    """fp32 -> nearest bfloat16 (ties to even), kept as fp32: what ``.to(tl.bfloat16)`` does on a GPU. The
    interpreter's own cast truncates (measured: every |rounded| <= |x|, errors up to 2**-7 relative)."""
    bits = v.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _mma(a, b, acc, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """``acc + a @ b`` on tensor cores at the selected precision (fp32 accumulation)."""
    # one exit: a constexpr branch's early return still has the code after it compiled
    if PRECISION == "bf16":
        if EMULATE_BF16:  # the interpreter's bf16 dot is broken; bf16 x bf16 products are exact in fp32
            acc = tl.dot(_round_bf16(a.to(tl.float32)), _round_bf16(b.to(tl.float32)), acc, input_precision="ieee")
        else:
            acc = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)
    else:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision=PRECISION)
    return acc


@triton.jit
def bsr_conv2d_fwd_kernel(
    x_ptr,
    out_ptr,
    vals_ptr,  # [nb, BO, BI]
    bias_ptr,
    stats_ptr,  # [N * n_tiles, 2, C_out] partial sums / sums of squares
    row_ptr,  # [NBo + 1] runs per output group
    run_col_ptr,  # [nr] input block of each run
    run_taps_ptr,  # [nr] kept-tap bitmask
    run_block_ptr,  # [nr] first block of each run
    C_in,
    H,
    W,
    C_out,
    H_out,
    W_out,
    n_tiles,
    STRIDE: tl.constexpr,
    PAD: tl.constexpr,
    REFLECT: tl.constexpr,
    KH: tl.constexpr,
    KW: tl.constexpr,
    BO: tl.constexpr,
    BI: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    STATS: tl.constexpr,
    PRECISION: tl.constexpr,
    EMULATE_BF16: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    ob = tl.program_id(0)
    pid_p = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    KK: tl.constexpr = KH * KW
    BO_DOT: tl.constexpr = BO if BO >= 16 else 16
    BI_DOT: tl.constexpr = BI if BI >= 16 else 16
    ZERO_PAD: tl.constexpr = PAD > 0 and not REFLECT
    HW = H * W
    P_out = H_out * W_out

    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < P_out
    pc = tl.minimum(p, P_out - 1)  # lanes past the end redo the last pixel (valid addresses); never stored
    iy0 = (pc // W_out) * STRIDE - PAD
    ix0 = (pc % W_out) * STRIDE - PAD
    # the reflected (or clamped) input rows of each ky and columns of each kx once per program, not once per block
    rows = ()
    rows_ok = ()
    for ky in tl.static_range(KH):
        iy, vy = source_index(iy0 + ky, H, REFLECT)
        rows = rows + (iy * W,)
        rows_ok = rows_ok + (vy,)
    cols = ()
    cols_ok = ()
    for kx in tl.static_range(KW):
        ix, vx = source_index(ix0 + kx, W, REFLECT)
        cols = cols + (ix,)
        cols_ok = cols_ok + (vx,)

    r = tl.arange(0, BI_DOT)  # input channel inside a block (K of the MMA)
    c = tl.arange(0, BO_DOT)  # output channel inside a block (N of the MMA)
    # W_blk^T as the B operand: element [i, o] of a row-major [BO, BI] block is at o * BI + i
    w_off = c[None, :] * BI + r[:, None]
    W_PADDED: tl.constexpr = BI_DOT > BI or BO_DOT > BO
    w_mask = (r[:, None] < BI) & (c[None, :] < BO)
    x_base = x_ptr + n * C_in * HW
    acc = tl.zeros([BLOCK_P, BO_DOT], dtype=tl.float32)

    run0 = tl.load(row_ptr + ob)
    run1 = tl.load(row_ptr + ob + 1)
    for run in range(run0, run1):
        ib = tl.load(run_col_ptr + run)
        bits = tl.load(run_taps_ptr + run)
        k = tl.load(run_block_ptr + run)
        ci = tl.minimum(ib * BI + r, C_in - 1)  # edge block: clamped channels meet zero weights
        x_chan = x_base + ci[:, None] * HW  # [BI_DOT, 1]
        for t in tl.static_range(KK):
            bit = (bits >> t) & 1
            if bit != 0:
                off = rows[t // KW] + cols[t % KW]
                if ZERO_PAD:
                    ok = rows_ok[t // KW] & cols_ok[t % KW]
                    xt = tl.load(x_chan + off[None, :], mask=ok[None, :], other=0.0)
                else:
                    xt = tl.load(x_chan + off[None, :])
                xt = tl.trans(xt)
                if W_PADDED:
                    wt = tl.load(vals_ptr + k.to(tl.int64) * (BO * BI) + w_off, mask=w_mask, other=0.0)
                else:
                    wt = tl.load(vals_ptr + k.to(tl.int64) * (BO * BI) + w_off)
                acc = _mma(xt, wt, acc, PRECISION, EMULATE_BF16)
            k += bit

    co = ob * BO + c
    cmask = (c < BO) & (co < C_out)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + co, mask=cmask, other=0.0).to(tl.float32)[None, :]
    out_ptrs = out_ptr + (n * C_out + co[None, :]) * P_out + p[:, None]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=pmask[:, None] & cmask[None, :])
    if STATS:
        y = tl.where(pmask[:, None], acc, 0.0)
        part = stats_ptr + (n * n_tiles + pid_p) * 2 * C_out
        tl.store(part + co, tl.sum(y, axis=0), mask=cmask)
        tl.store(part + C_out + co, tl.sum(y * y, axis=0), mask=cmask)


@triton.jit
def bsr_conv2d_dgrad_kernel(
    gy_ptr,  # [N, C_out, H_out, W_out]
    gxp_ptr,  # [N, C_in, Hp, Wp] gradient w.r.t. the (virtually) padded input
    vals_ptr,
    col_ptr,  # [NBi + 1] transposed runs per input block
    col_run_row_ptr,
    col_run_taps_ptr,
    col_run_block_ptr,
    C_in,
    Hp,
    Wp,
    C_out,
    H_out,
    W_out,
    STRIDE: tl.constexpr,
    KH: tl.constexpr,
    KW: tl.constexpr,
    BO: tl.constexpr,
    BI: tl.constexpr,
    PRECISION: tl.constexpr,
    EMULATE_BF16: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    ib = tl.program_id(0)
    pid = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    KK: tl.constexpr = KH * KW
    BO_DOT: tl.constexpr = BO if BO >= 16 else 16
    BI_DOT: tl.constexpr = BI if BI >= 16 else 16
    P_in = Hp * Wp
    P_out = H_out * W_out

    # per-phase tiling (see sparse_conv.py): padded pixel (py, px) only receives taps ky = py, kx = px (mod STRIDE)
    Hq = (Hp + STRIDE - 1) // STRIDE
    Wq = (Wp + STRIDE - 1) // STRIDE
    tiles = (Hq * Wq + BLOCK_P - 1) // BLOCK_P
    phase = pid // tiles
    ry = phase // STRIDE
    rx = phase % STRIDE
    q = (pid % tiles) * BLOCK_P + tl.arange(0, BLOCK_P)
    py = ry + STRIDE * (q // Wq)
    px = rx + STRIDE * (q % Wq)
    pmask = (q < Hq * Wq) & (py < Hp) & (px < Wp)

    # each tap's grad_out offsets and validity once per program; taps of another phase leave the bitmask
    offs = ()
    valid = ()
    phase_bits = 0
    for t in tl.static_range(KK):
        ny = py - t // KW
        nx = px - t % KW
        oy = ny // STRIDE
        ox = nx // STRIDE
        valid = valid + (pmask & (ny >= 0) & (nx >= 0) & (oy < H_out) & (ox < W_out),)
        offs = offs + (tl.minimum(tl.maximum(oy, 0), H_out - 1) * W_out + tl.minimum(tl.maximum(ox, 0), W_out - 1),)
        if STRIDE > 1:
            # + STRIDE * KH keeps the remainder's operand non-negative
            hit = ((ry + STRIDE * KH - t // KW) % STRIDE == 0) & ((rx + STRIDE * KW - t % KW) % STRIDE == 0)
            phase_bits = phase_bits | tl.where(hit, 1 << t, 0)
        else:
            phase_bits = phase_bits | (1 << t)

    r = tl.arange(0, BI_DOT)
    c = tl.arange(0, BO_DOT)
    w_off = c[:, None] * BI + r[None, :]  # the stored row-major [BO, BI] block is the B operand as it is
    W_PADDED: tl.constexpr = BI_DOT > BI or BO_DOT > BO
    w_mask = (c[:, None] < BO) & (r[None, :] < BI)
    gy_base = gy_ptr + n * C_out * P_out
    acc = tl.zeros([BLOCK_P, BI_DOT], dtype=tl.float32)

    run0 = tl.load(col_ptr + ib)
    run1 = tl.load(col_ptr + ib + 1)
    for run in range(run0, run1):
        ob = tl.load(col_run_row_ptr + run)
        bits = tl.load(col_run_taps_ptr + run)
        k = tl.load(col_run_block_ptr + run)
        co = tl.minimum(ob * BO + c, C_out - 1)
        g_chan = gy_base + co[:, None] * P_out  # [BO_DOT, 1]
        hits = bits & phase_bits
        for t in tl.static_range(KK):
            if ((hits >> t) & 1) != 0:
                g = tl.trans(tl.load(g_chan + offs[t][None, :], mask=valid[t][None, :], other=0.0))
                if W_PADDED:
                    w = tl.load(vals_ptr + k.to(tl.int64) * (BO * BI) + w_off, mask=w_mask, other=0.0)
                else:
                    w = tl.load(vals_ptr + k.to(tl.int64) * (BO * BI) + w_off)
                acc = _mma(g, w, acc, PRECISION, EMULATE_BF16)
            k += (bits >> t) & 1

    ci = ib * BI + r
    p = py * Wp + px
    out_ptrs = gxp_ptr + (n * C_in + ci[None, :]) * P_in + p[:, None]
    tl.store(out_ptrs, acc.to(gxp_ptr.dtype.element_ty), mask=pmask[:, None] & ((r < BI) & (ci < C_in))[None, :])


@triton.jit
def bsr_conv2d_wgrad_kernel(
    gy_ptr,
    x_ptr,
    part_ptr,  # [n_chunks, nb, BO, BI] partial block gradients
    blk_row_ptr,
    blk_col_ptr,
    blk_tap_ptr,
    C_in,
    H,
    W,
    C_out,
    H_out,
    W_out,
    n_rows,  # N * H_out output rows
    n_blocks,
    rows_per_chunk,
    STRIDE: tl.constexpr,
    PAD: tl.constexpr,
    REFLECT: tl.constexpr,
    KW: tl.constexpr,
    BO: tl.constexpr,
    BI: tl.constexpr,
    PRECISION: tl.constexpr,
    EMULATE_BF16: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    blk = tl.program_id(0)
    chunk = tl.program_id(1)
    BO_DOT: tl.constexpr = BO if BO >= 16 else 16
    BI_DOT: tl.constexpr = BI if BI >= 16 else 16
    ZERO_PAD: tl.constexpr = PAD > 0 and not REFLECT
    HW = H * W
    P_out = H_out * W_out

    ob = tl.load(blk_row_ptr + blk)
    ib = tl.load(blk_col_ptr + blk)
    t = tl.load(blk_tap_ptr + blk)
    ky = t // KW
    kx = t % KW
    c = tl.arange(0, BO_DOT)
    r = tl.arange(0, BI_DOT)
    co = tl.minimum(ob * BO + c, C_out - 1)  # edge rows/columns: finite values, dropped by the store / grad mask
    ci = tl.minimum(ib * BI + r, C_in - 1)
    j = tl.arange(0, BLOCK_P)
    # dW^T[Bi, Bo] += X[Bi, P] @ G^T[P, Bo]: both gathers load with pixels along the lanes (see the forward)
    acc = tl.zeros([BI_DOT, BO_DOT], dtype=tl.float32)

    # The program walks whole output rows: the row's image, input row and its reflection are scalars, computed once
    # per row, and the inner loop over a row's column tiles does no division. (Flattened pixel tiles need a division
    # and a modulo by W_out per pixel: sm_90, 16x16 blocks, 64 pixels, 4 warps, the hot loop was 327 SASS
    # instructions per 16x16x64 MMA step; walking rows it is 94, at 126 instead of 92 registers.)
    rw0 = chunk * rows_per_chunk
    rw1 = tl.minimum(rw0 + rows_per_chunk, n_rows)
    for rw in range(rw0, rw1):
        n = (rw // H_out).to(tl.int64)
        oy = rw % H_out
        iy, vy = source_index(oy * STRIDE - PAD + ky, H, REFLECT)
        g_row = gy_ptr + (n * C_out + co[:, None]) * P_out + oy * W_out  # [BO_DOT, 1]
        x_row = x_ptr + (n * C_in + ci[:, None]) * HW + iy * W  # [BI_DOT, 1]
        # zero padding: a row whose tap falls outside the image contributes exactly 0, skip it
        row_end = tl.where(vy, W_out, 0) if ZERO_PAD else W_out
        for c0 in range(0, row_end, BLOCK_P):
            ox = c0 + j
            om = ox < W_out
            ix, vx = source_index(tl.minimum(ox, W_out - 1) * STRIDE - PAD + kx, W, REFLECT)
            # grad_out is 0 past the row's end, so only zero padding needs a mask on the input gather
            g = tl.load(g_row + ox[None, :], mask=om[None, :], other=0.0)
            if ZERO_PAD:
                xv = tl.load(x_row + ix[None, :], mask=vx[None, :], other=0.0)
            else:
                xv = tl.load(x_row + ix[None, :])
            acc = _mma(xv, tl.trans(g), acc, PRECISION, EMULATE_BF16)

    out = part_ptr + (chunk * n_blocks + blk).to(tl.int64) * (BO * BI) + c[None, :] * BI + r[:, None]
    tl.store(out, acc, mask=(c[None, :] < BO) & (r[:, None] < BI))


# --------------------------------------------------------------------------------------------------------------------
# Host wrappers
# --------------------------------------------------------------------------------------------------------------------


def _check_packed(packed: BsrConvWeight) -> None:
    if getattr(packed, "format", None) != "bsr":
        raise ValueError(f"the bsr kernels need a BsrConvWeight (pack_bsr_weight), got format {packed.format!r}")


def bsr_conv2d_forward(
    x: torch.Tensor,
    packed: BsrConvWeight,
    bias: torch.Tensor | None = None,
    stride: int = 1,
    padding: int = 0,
    padding_mode: str = "zeros",
    precision: str = "tf32",
    bn_stats: bool = False,
    config: BsrConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Forward only (no autograd): ``(conv(pad(x), W) + bias, stats)``; ``stats`` is fp32 ``[2, C_out]`` (sum, sum
    of squares per channel) with ``bn_stats``, else None."""
    check_conv_args(x, packed, stride, padding, padding_mode)
    check_precision(precision)
    _check_packed(packed)
    check_kernel_device(x)
    x = x.contiguous()
    n, cin, h, w = x.shape
    cout, _, kh, kw = packed.shape
    bo, bi = packed.block
    nbo, _ = packed.grid
    ho, wo = conv_output_size(h, w, kh, kw, stride, padding)
    cfg = config or default_bsr_config(ho * wo, x.device)
    out = torch.empty((n, cout, ho, wo), device=x.device, dtype=x.dtype)
    n_tiles = triton.cdiv(ho * wo, cfg.block_p_fwd)
    part = torch.empty((n * n_tiles, 2, cout), device=x.device, dtype=torch.float32) if bn_stats else None
    if out.numel():
        vals = packed.values.detach().contiguous()
        bsr_conv2d_fwd_kernel[(nbo, n_tiles, n)](
            x,
            out,
            vals,
            bias.detach().contiguous() if bias is not None else vals,  # dummy pointer when unused
            part if part is not None else vals,
            packed.row_ptr,
            packed.run_col,
            packed.run_taps,
            packed.run_block,
            cin,
            h,
            w,
            cout,
            ho,
            wo,
            n_tiles,
            STRIDE=stride,
            PAD=padding,
            REFLECT=(padding_mode == "reflect" and padding > 0),
            KH=kh,
            KW=kw,
            BO=bo,
            BI=bi,
            HAS_BIAS=bias is not None,
            STATS=bn_stats,
            PRECISION=precision,
            EMULATE_BF16=INTERPRET,
            BLOCK_P=cfg.block_p_fwd,
            num_warps=cfg.num_warps,
        )
    if not bn_stats:
        return out, None
    stats = part.sum(dim=0) if part.numel() else torch.zeros((2, cout), device=x.device, dtype=torch.float32)
    return out, stats


def bsr_conv2d_input_grad(
    grad_out: torch.Tensor,
    packed: BsrConvWeight,
    input_shape: tuple[int, int, int, int],
    stride: int = 1,
    padding: int = 0,
    padding_mode: str = "zeros",
    precision: str = "tf32",
    config: BsrConfig | None = None,
) -> torch.Tensor:
    """Gradient w.r.t. the input: a transposed block-sparse convolution over the transposed runs."""
    check_precision(precision)
    _check_packed(packed)
    check_kernel_device(grad_out)
    grad_out = grad_out.contiguous()
    n, cin, h, w = input_shape
    cout, _, kh, kw = packed.shape
    bo, bi = packed.block
    _, nbi = packed.grid
    ho, wo = grad_out.shape[2:]
    hp, wp = h + 2 * padding, w + 2 * padding
    cfg = config or default_bsr_config(ho * wo, grad_out.device)
    gxp = torch.empty((n, cin, hp, wp), device=grad_out.device, dtype=torch.float32)
    if gxp.numel():
        tiles = triton.cdiv(triton.cdiv(hp, stride) * triton.cdiv(wp, stride), cfg.block_p_dgrad)
        bsr_conv2d_dgrad_kernel[(nbi, stride * stride * tiles, n)](
            grad_out,
            gxp,
            packed.values.detach().contiguous(),
            packed.col_ptr,
            packed.col_run_row,
            packed.col_run_taps,
            packed.col_run_block,
            cin,
            hp,
            wp,
            cout,
            ho,
            wo,
            STRIDE=stride,
            KH=kh,
            KW=kw,
            BO=bo,
            BI=bi,
            PRECISION=precision,
            EMULATE_BF16=INTERPRET,
            BLOCK_P=cfg.block_p_dgrad,
            num_warps=cfg.num_warps,
        )
    return unpad_input_grad(gxp, padding, padding_mode, h, w).to(grad_out.dtype).contiguous()


def bsr_conv2d_weight_grad(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    packed: BsrConvWeight,
    stride: int = 1,
    padding: int = 0,
    padding_mode: str = "zeros",
    precision: str = "tf32",
    config: BsrConfig | None = None,
) -> torch.Tensor:
    """Gradient w.r.t. ``packed.values`` (``[nb, Bo, Bi]``, zero off the mask), summed in a fixed order."""
    check_precision(precision)
    _check_packed(packed)
    check_kernel_device(grad_out, x)
    grad_out = grad_out.contiguous()
    x = x.contiguous()
    n, cin, h, w = x.shape
    cout, _, kh, kw = packed.shape
    bo, bi = packed.block
    ho, wo = grad_out.shape[2:]
    nb = packed.num_blocks
    cfg = config or default_bsr_config(ho * wo, x.device)
    if nb == 0 or n == 0 or ho * wo == 0:
        return torch.zeros_like(packed.values)
    # a row's column tiles: no wider than the row needs (>= 16, an MMA dimension), at most the config's tile
    block_p = max(MIN_DOT, min(cfg.block_p_wgrad, triton.next_power_of_2(wo)))
    # at least wgrad_rows rows per program, and at most wgrad_max_chunks partial blocks to sum (memory, final sum)
    per_chunk = max(cfg.wgrad_rows, triton.cdiv(n * ho, cfg.wgrad_max_chunks))
    n_chunks = triton.cdiv(n * ho, per_chunk)
    part = torch.empty((n_chunks, nb, bo, bi), device=x.device, dtype=torch.float32)  # every slot written once
    bsr_conv2d_wgrad_kernel[(nb, n_chunks)](
        grad_out,
        x,
        part,
        packed.blk_row,
        packed.blk_col,
        packed.blk_tap,
        cin,
        h,
        w,
        cout,
        ho,
        wo,
        n * ho,
        nb,
        per_chunk,
        STRIDE=stride,
        PAD=padding,
        REFLECT=(padding_mode == "reflect" and padding > 0),
        KW=kw,
        BO=bo,
        BI=bi,
        PRECISION=precision,
        EMULATE_BF16=INTERPRET,
        BLOCK_P=block_p,
        num_warps=cfg.num_warps,
    )
    gv = part.sum(dim=0) * packed.elem_mask
    return gv.to(packed.values.dtype)


# --------------------------------------------------------------------------------------------------------------------
# Autograd
# --------------------------------------------------------------------------------------------------------------------


class BsrConv2dFunction(torch.autograd.Function):
    """Autograd over (x, values, bias); the index structure comes from ``packed``.

    With ``bn_stats`` the outputs are ``(y, stats)`` and ``stats`` is differentiable too (d sum / dy = 1, d sumsq / dy
    = 2y), so a BatchNorm computed from the fused statistics trains exactly like one that reads ``y`` again."""

    @staticmethod
    def forward(ctx, x, values, bias, packed, stride, padding, padding_mode, precision, bn_stats, config):
        p = packed.with_values(values.detach())
        y, stats = bsr_conv2d_forward(x, p, bias, stride, padding, padding_mode, precision, bn_stats, config)
        ctx.packed = p
        ctx.conf = (stride, padding, padding_mode, precision, config, bias is not None)
        ctx.save_for_backward(x, values, y if bn_stats else None)
        ctx.set_materialize_grads(False)
        return (y, stats) if bn_stats else y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy, gstats=None):
        x, values, y = ctx.saved_tensors
        stride, padding, padding_mode, precision, config, has_bias = ctx.conf
        if gstats is not None:
            g = gstats.to(y.dtype)
            extra = g[0][None, :, None, None] + 2.0 * y * g[1][None, :, None, None]
            gy = extra if gy is None else gy + extra
        if gy is None:
            return (None,) * 10
        p = ctx.packed.with_values(values.detach())
        gx = gv = gb = None
        if ctx.needs_input_grad[0]:
            gx = bsr_conv2d_input_grad(gy, p, tuple(x.shape), stride, padding, padding_mode, precision, config)
        if ctx.needs_input_grad[1]:
            gv = bsr_conv2d_weight_grad(gy, x, p, stride, padding, padding_mode, precision, config)
        if has_bias and ctx.needs_input_grad[2]:
            gb = gy.sum(dim=(0, 2, 3))
        return gx, gv, gb, None, None, None, None, None, None, None


def bsr_conv2d(
    x: torch.Tensor,
    packed: BsrConvWeight,
    bias: torch.Tensor | None = None,
    stride: int = 1,
    padding: int = 0,
    padding_mode: str = "zeros",
    precision: str = "tf32",
    bn_stats: bool = False,
    config: BsrConfig | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Block-sparse conv on tensor cores (Triton), differentiable w.r.t. ``x``, ``packed.values`` and ``bias``.

    Same signature and semantics as ``bsr_reference.bsr_conv2d_reference`` (plus the optional ``config``): returns
    ``y``, or ``(y, stats)`` with ``bn_stats``.
    """
    check_conv_args(x, packed, stride, padding, padding_mode)
    check_precision(precision)
    _check_packed(packed)
    return BsrConv2dFunction.apply(
        x, packed.values, bias, packed, stride, padding, padding_mode, precision, bool(bn_stats), config
    )

"""Triton kernels for sparse-weight x dense-activation 2-D convolution (forward, input grad, weight grad).

This module imports triton at import time; ``lipdeploy.kernels`` only imports it when the Triton backend is used. On a
machine without CUDA set ``TRITON_INTERPRET=1`` *before* triton is first imported to run the same kernels on CPU tensors
through Triton's interpreter (slow; for tests).

Layout: activations are dense NCHW, contiguous. Weights are packed by ``format.pack_conv_weight`` ("csr" or "kernel").

Design (why it looks like this)
-------------------------------
* Forward, grid = (C_out, pixel tiles, N). One program owns one output channel and a contiguous tile of BLOCK_P output
  pixels (flattened over H_out x W_out, so one row of the tile is contiguous in memory -> coalesced loads/stores).
  ``C_out`` is the fastest grid axis on purpose: programs that run at the same time share the same pixel tile and so
  the same input pixels, which then come from L2 instead of HBM (a 128-channel 256x256 fp32 activation is 32 MB).
* The loop is tap-major: for each of the KH*KW taps (``tl.static_range``, unrolled) the reflected / zero-masked input
  offsets of the tile are computed ONCE, then the program streams the row's nonzeros of that tap (the "csr" rows are
  stored sorted by (tap, cin) and segmented by ``tap_ptr``). The inner loop is therefore just: load one weight scalar,
  load one coalesced tile of the input channel, FMA -- the reflection index math is not repeated per nonzero. Reflection
  padding is pure index arithmetic (no padded copy of the input is ever made).
* Input grad (transposed sparse conv), grid = (C_in, padded-input tiles, N): gathers ``grad_out`` through the transposed
  (CSC-like) index, the values read through ``col_perm`` (so they are always the current parameter values). It computes
  the gradient of the *padded* input in-kernel; the host then folds the reflected borders back with a few slice-adds
  (``common.fold_reflect_grad``) or crops (zero padding). Tiles are per phase (padded pixel coordinates mod the
  stride): a program only streams the taps that reach its phase, so stride 2 costs its real work instead of masking
  out 3/4 of the (pixel, tap) pairs.
* Weight grad at the nonzeros only, grid = (C_out, pixel tiles, N): the program loads its ``grad_out`` tile once and,
  for every nonzero of its row, loads the matching input tile and reduces the product to one scalar. Partial sums go to
  a ``[N * tiles, nnz]`` buffer that torch sums (deterministic), or with ``wgrad_atomic=True`` are atomically added
  (less memory, nondeterministic order). The output has exactly nnz entries.
* The gathers in the hot loops carry no mask. Every computed address is valid: pixels past the end of a tile are
  clamped onto the last pixel (never stored), rows past the end of a nonzero segment read channel 0 with weight 0,
  and zero padding clamps the coordinates and drops an out-of-range tap's contribution with one select per tap
  (reflection needs neither). A masked load costs a predicate and a zeroed register per element; without them the
  hot loop is one load, one FMA and a 64-bit address add per element, plus the per-nonzero index work amortised
  over a thread's pixels (``python -m lipdeploy.bench.gpu.kernel_sass`` reads this off the sm_90 SASS).
* All accumulation is fp32; inputs may be fp16/bf16/fp32; outputs take the input dtype.
* Tunables: ``KernelConfig`` (BLOCK_P per kernel, BLOCK_J nonzeros per step, num_warps). A thread's pixels per
  nonzero (BLOCK_P / (32 * num_warps)) amortise the per-nonzero index loads and arithmetic; BLOCK_J x pixels is the
  loads a thread keeps in flight; smaller tiles give more programs for small images. ``default_config`` picks by
  output size, ``candidate_configs`` is what the dispatcher times, ``config_grid`` what ``gpu_layers --tune`` sweeps.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from .common import check_conv_args, conv_output_size, unpad_input_grad
from .format import SparseConvWeight
from .triton_common import check_kernel_device, source_index

__all__ = [
    "KernelConfig",
    "default_config",
    "candidate_configs",
    "config_grid",
    "sparse_conv2d",
    "sparse_conv2d_forward",
    "sparse_conv2d_input_grad",
    "sparse_conv2d_weight_grad",
    "SparseConv2dFunction",
    # the jit kernels themselves: bench.gpu's SASS reports compile them offline for sm_90
    "sparse_conv2d_fwd_kernel",
    "sparse_conv2d_dgrad_kernel",
    "sparse_conv2d_wgrad_kernel",
]


@dataclass(frozen=True)
class KernelConfig:
    """Tunables. BLOCK sizes must be powers of two."""

    block_p_fwd: int = 256
    block_p_dgrad: int = 256
    block_p_wgrad: int = 512
    num_warps: int = 4
    wgrad_atomic: bool = False
    block_j: int = 8  # nonzeros gathered per inner step (one [BLOCK_J, BLOCK_P] tile of loads in flight)

    @property
    def tag(self) -> str:
        """Short stable name, e.g. ``p256-256-512.j8.w4`` (used in dispatcher cache entries and benchmark rows)."""
        atomic = ".atomic" if self.wgrad_atomic else ""
        return (
            f"p{self.block_p_fwd}-{self.block_p_dgrad}-{self.block_p_wgrad}.j{self.block_j}.w{self.num_warps}{atomic}"
        )


def default_config(num_out_pixels: int, device: torch.device) -> KernelConfig:
    """Tile sizes by output size. Outputs > 64x64 were tuned on an H100 (see below). The smaller ones were chosen
    from the sm_90 SASS (``python -m lipdeploy.bench.gpu.kernel_sass``, bench/results/kernel_sass_sm90.json): a
    thread's pixels per nonzero (BLOCK_P / (32 * num_warps)) amortise the per-nonzero index work, so at 8 pixels per
    thread the hot loops issue 5.3 (forward), 5.8 (input grad) and 7.7 (weight grad) instructions per multiply, against
    11.6, 12.1 and 12.5 with masked 256-pixel tiles of 2 pixels per thread. The H100 showed that fewer
    instructions did not win at 256x256: more programs in flight did. Small outputs get smaller tiles so that a
    layer still spreads over the 132 SMs."""
    if device.type != "cuda":
        # interpreter: its cost is per program, so large outputs get large tiles (4x fewer programs); small outputs
        # (the kernel tests' odd shapes) keep 64-pixel tiles so they still span several tiles
        bp = 64 if num_out_pixels <= 1024 else 256
        return KernelConfig(block_p_fwd=bp, block_p_dgrad=bp, block_p_wgrad=bp, num_warps=1, block_j=16)
    if num_out_pixels <= 1024:  # <= 32x32: 4 pixels per thread
        return KernelConfig(block_p_fwd=256, block_p_dgrad=256, block_p_wgrad=256, num_warps=2, block_j=2)
    if num_out_pixels <= 4096:  # 64x64: 4 pixels per thread, 8 tiles per channel
        return KernelConfig(block_p_fwd=512, block_p_dgrad=512, block_p_wgrad=512, num_warps=4, block_j=2)
    # Measured (H100 80GB HBM3, 2026-11-27, `gpu.layers --tune`, 128 -> 128 3x3 at 256x256, 50% imp mask; the sweep's
    # 90% rows were cut off by its cap): 256-pixel tiles, 2 nonzeros per step, 4 warps (2 pixels per thread) ran the
    # forward in 2.217 ms and forward+backward in 9.740 ms, against 2.495 / 11.302 ms for the 1024-pixel tiles chosen
    # from the SASS (-11% / -14%: more programs in flight beat fewer instructions per multiply); the best forward
    # alone, p512.j2.w8, was 2.196 ms (1% better) but 11.368 ms with the backward.
    return KernelConfig(block_p_fwd=256, block_p_dgrad=256, block_p_wgrad=256, num_warps=4, block_j=2)


def candidate_configs(num_out_pixels: int, device: torch.device) -> list[KernelConfig]:
    """The configs the dispatcher times per layer (default first): half-size tiles (more programs), and two
    nonzeros more per gather step with twice the warps (more loads in flight per SM). Kept to three so tuning a
    network stays seconds, not minutes; widen it from the measured ``gpu_layers --tune`` rows (the full grid) once a
    GPU has run them."""
    base = default_config(num_out_pixels, device)
    if device.type != "cuda":
        return [base]
    if num_out_pixels > 4096:
        # the measured top three of the H100 sweep (default_config): p256.j2.w4, p512.j2.w8 (best forward alone),
        # p512.j2.w4 (second best forward+backward); halving 256-pixel tiles or doubling the warps would leave one
        # pixel per thread, which no swept config had
        wide = replace(base, block_p_fwd=512, block_p_dgrad=512, block_p_wgrad=512)
        return [base, replace(wide, num_warps=8), wide]
    half = replace(base, block_p_fwd=base.block_p_fwd // 2, block_p_dgrad=base.block_p_dgrad // 2)
    wide = replace(base, block_j=4, num_warps=2 * base.num_warps)
    return [base, half, wide]


def config_grid(device: torch.device) -> list[KernelConfig]:
    """The full sweep of ``gpu_layers --tune``: tiles x nonzeros per gather step x warps, kept where a thread holds
    2 to 16 pixels and at most 32 accumulators (``BLOCK_J * BLOCK_P / (32 * num_warps)``; more spills or starves
    occupancy, see kernel_sass). Each point is three kernel compiles on the GPU, about a minute for the grid."""
    if device.type != "cuda":
        return [default_config(1 << 16, device), replace(default_config(1 << 16, device), block_j=4)]
    out = []
    for bp in (256, 512, 1024, 2048):
        for bj in (2, 4, 8):
            for nw in (4, 8):
                px = bp // (32 * nw)
                if 2 <= px <= 16 and bj * px <= 32:
                    out.append(KernelConfig(bp, bp, bp, nw, False, bj))
    return out


# --------------------------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------------------------


@triton.jit
def _gather_rows(ch_ptr, vals_ptr, j0, end, t, KK: tl.constexpr, KERNEL_FMT: tl.constexpr, BLOCK_J: tl.constexpr):
    """Input channel and weight of nonzeros j0 .. j0 + BLOCK_J of a segment ending at ``end``. Rows past the end read
    channel 0 with weight 0: they contribute exactly 0, so the pixel gathers that follow need no row mask."""
    j = j0 + tl.arange(0, BLOCK_J)
    jm = j < end
    ci = tl.load(ch_ptr + j, mask=jm, other=0)
    w = tl.load(vals_ptr + (j * KK + t if KERNEL_FMT else j), mask=jm, other=0.0)  # kernel format: all KK taps stored
    return ci, w.to(tl.float32)


@triton.jit
def sparse_conv2d_fwd_kernel(
    x_ptr,
    out_ptr,
    vals_ptr,
    bias_ptr,
    seg_ptr,  # csr: tap_ptr [C_out, KK+1]; kernel: row_ptr [C_out+1]
    ch_ptr,  # csr: cin of each nonzero; kernel: idx (cin of each kept kernel)
    C_in,
    H,
    W,
    C_out,
    H_out,
    W_out,
    negative_slope,
    STRIDE: tl.constexpr,
    PAD: tl.constexpr,
    REFLECT: tl.constexpr,
    KH: tl.constexpr,
    KW: tl.constexpr,
    KERNEL_FMT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_J: tl.constexpr,
):
    co = tl.program_id(0)
    pid_p = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    KK: tl.constexpr = KH * KW
    HW = H * W
    P_out = H_out * W_out

    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < P_out
    pc = tl.minimum(p, P_out - 1)  # lanes past the end redo the last pixel (valid addresses); never stored
    oy = pc // W_out
    ox = pc % W_out
    iy0 = oy * STRIDE - PAD
    ix0 = ox * STRIDE - PAD
    x_base = x_ptr + n * C_in * HW
    # Zero padding is the only case with out-of-range taps: there a tap's gathers read clamped (valid) addresses and
    # its contribution is dropped where the tap fell outside the image (one select per tap, not a mask per load).
    ZERO_PAD: tl.constexpr = PAD > 0 and not REFLECT
    # 2-D accumulator: BLOCK_J nonzeros are gathered per step (independent loads in flight, no scalar dependency
    # chain); the J axis is reduced once after the loops.
    acc = tl.zeros([BLOCK_J, BLOCK_P], dtype=tl.float32)

    if KERNEL_FMT:
        start = tl.load(seg_ptr + co)
        end = tl.load(seg_ptr + co + 1)
    for t in tl.static_range(KK):
        iy, vy = source_index(iy0 + t // KW, H, REFLECT)
        ix, vx = source_index(ix0 + t % KW, W, REFLECT)
        off = iy * W + ix
        if not KERNEL_FMT:
            start = tl.load(seg_ptr + co * (KK + 1) + t)
            end = tl.load(seg_ptr + co * (KK + 1) + t + 1)
        # accumulate on top of acc (not into a zeroed buffer): the select below then depends on this tap's loop,
        # so the compiler cannot defer every tap's select to the end and keep nine partial sums live (measured with
        # kernel_sass: 240 registers instead of 134 in the input-grad kernel)
        acc_t = acc
        for j0 in range(start, end, BLOCK_J):
            ci, w = _gather_rows(ch_ptr, vals_ptr, j0, end, t, KK, KERNEL_FMT, BLOCK_J)
            xv = tl.load(x_base + ci[:, None] * HW + off[None, :])
            acc_t += w[:, None] * xv.to(tl.float32)
        acc = tl.where((vy & vx)[None, :], acc_t, acc) if ZERO_PAD else acc_t

    acc = tl.sum(acc, axis=0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + co).to(tl.float32)
    if ACT:
        acc = tl.where(acc > 0, acc, acc * negative_slope)
    out_base = out_ptr + (n * C_out + co) * P_out
    tl.store(out_base + p, acc.to(out_ptr.dtype.element_ty), mask=pmask)


@triton.jit
def sparse_conv2d_dgrad_kernel(
    gy_ptr,  # [N, C_out, H_out, W_out] gradient w.r.t. the pre-activation output
    gxp_ptr,  # [N, C_in, Hp, Wp] gradient w.r.t. the (virtually) padded input
    vals_ptr,
    seg_ptr,  # csr: col_tap_ptr [C_in, KK+1]; kernel: col_ptr [C_in+1]
    row_ptr_,  # col_row: output channel of each transposed entry
    perm_ptr,  # col_perm: index into values (csr) / kernel index (kernel)
    C_in,
    Hp,
    Wp,
    C_out,
    H_out,
    W_out,
    STRIDE: tl.constexpr,
    KH: tl.constexpr,
    KW: tl.constexpr,
    KERNEL_FMT: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_J: tl.constexpr,
):
    ci = tl.program_id(0)
    pid = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    KK: tl.constexpr = KH * KW
    P_in = Hp * Wp
    P_out = H_out * W_out

    # Per-phase tiling: padded pixel (py, px) only receives taps with ky = py (mod STRIDE) and kx = px (mod STRIDE).
    # Axis 1 enumerates STRIDE**2 phases x tiles of that phase's sub-grid, so a program streams only the taps that
    # can reach its pixels (with stride 2 that is 1/4 of the (tap, pixel) pairs a plain tiling would mask out).
    Hq = (Hp + STRIDE - 1) // STRIDE
    Wq = (Wp + STRIDE - 1) // STRIDE
    tiles = (Hq * Wq + BLOCK_P - 1) // BLOCK_P
    phase = pid // tiles
    ry = phase // STRIDE
    rx = phase % STRIDE
    q = (pid % tiles) * BLOCK_P + tl.arange(0, BLOCK_P)
    py = ry + STRIDE * (q // Wq)
    px = rx + STRIDE * (q % Wq)
    p = py * Wp + px
    pmask = (q < Hq * Wq) & (py < Hp) & (px < Wp)
    gy_base = gy_ptr + n * C_out * P_out
    acc = tl.zeros([BLOCK_J, BLOCK_P], dtype=tl.float32)

    if KERNEL_FMT:
        start0 = tl.load(seg_ptr + ci)
        end0 = tl.load(seg_ptr + ci + 1)
    for t in tl.static_range(KK):
        ny = py - t // KW
        nx = px - t % KW
        # output pixel o contributes to padded pixel o*STRIDE + tap; keep only in-range preimages (exact by phase).
        # The gathers read clamped (valid) addresses; the tap's sum is zeroed where the preimage is out of range.
        oy = ny // STRIDE
        ox = nx // STRIDE
        m = pmask & (ny >= 0) & (nx >= 0) & (oy < H_out) & (ox < W_out)
        off = tl.minimum(tl.maximum(oy, 0), H_out - 1) * W_out + tl.minimum(tl.maximum(ox, 0), W_out - 1)
        if KERNEL_FMT:
            start = start0
            end = end0
        else:
            start = tl.load(seg_ptr + ci * (KK + 1) + t)
            end = tl.load(seg_ptr + ci * (KK + 1) + t + 1)
        if STRIDE > 1:
            # a tap of another phase: empty loop (+ STRIDE * KH keeps the remainder's operand non-negative)
            hit = ((ry + STRIDE * KH - t // KW) % STRIDE == 0) & ((rx + STRIDE * KW - t % KW) % STRIDE == 0)
            end = tl.where(hit, end, start)
        acc_t = acc  # on top of acc, then kept only where the tap is in range (see the forward kernel)
        for j0 in range(start, end, BLOCK_J):
            j = j0 + tl.arange(0, BLOCK_J)
            jm = j < end
            co = tl.load(row_ptr_ + j, mask=jm, other=0)
            pv = tl.load(perm_ptr + j, mask=jm, other=0)
            if KERNEL_FMT:
                w = tl.load(vals_ptr + pv * KK + t, mask=jm, other=0.0)
            else:
                w = tl.load(vals_ptr + pv, mask=jm, other=0.0)
            g = tl.load(gy_base + co[:, None] * P_out + off[None, :])
            acc_t += w.to(tl.float32)[:, None] * g.to(tl.float32)
        acc = tl.where(m[None, :], acc_t, acc)

    acc = tl.sum(acc, axis=0)
    tl.store(gxp_ptr + (n * C_in + ci) * P_in + p, acc.to(gxp_ptr.dtype.element_ty), mask=pmask)


@triton.jit
def sparse_conv2d_wgrad_kernel(
    gy_ptr,
    x_ptr,
    part_ptr,  # [N * n_tiles, n_vals] partial sums (or [n_vals] with ATOMIC)
    seg_ptr,
    ch_ptr,
    C_in,
    H,
    W,
    C_out,
    H_out,
    W_out,
    n_vals,
    n_tiles,
    STRIDE: tl.constexpr,
    PAD: tl.constexpr,
    REFLECT: tl.constexpr,
    KH: tl.constexpr,
    KW: tl.constexpr,
    KERNEL_FMT: tl.constexpr,
    ATOMIC: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_J: tl.constexpr,
):
    co = tl.program_id(0)
    pid_p = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    KK: tl.constexpr = KH * KW
    HW = H * W
    P_out = H_out * W_out

    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < P_out
    pc = tl.minimum(p, P_out - 1)  # lanes past the end gather valid addresses; their grad_out is 0
    oy = pc // W_out
    ox = pc % W_out
    iy0 = oy * STRIDE - PAD
    ix0 = ox * STRIDE - PAD
    x_base = x_ptr + n * C_in * HW
    # the grad_out tile is loaded once and reused for every nonzero of the row
    g = tl.load(gy_ptr + (n * C_out + co) * P_out + p, mask=pmask, other=0.0).to(tl.float32)
    if ATOMIC:
        part_base = part_ptr
    else:
        part_base = part_ptr + (n * n_tiles + pid_p) * n_vals

    if KERNEL_FMT:
        start = tl.load(seg_ptr + co)
        end = tl.load(seg_ptr + co + 1)
    for t in tl.static_range(KK):
        iy, vy = source_index(iy0 + t // KW, H, REFLECT)
        ix, vx = source_index(ix0 + t % KW, W, REFLECT)
        off = iy * W + ix
        # zero padding: the tap's out-of-range pixels get grad 0 (once per tap), so the gathers need no mask
        g_t = tl.where(vy & vx, g, 0.0) if PAD > 0 and not REFLECT else g
        if not KERNEL_FMT:
            start = tl.load(seg_ptr + co * (KK + 1) + t)
            end = tl.load(seg_ptr + co * (KK + 1) + t + 1)
        for j0 in range(start, end, BLOCK_J):
            j = j0 + tl.arange(0, BLOCK_J)
            jm = j < end
            ci = tl.load(ch_ptr + j, mask=jm, other=0)
            dst = j * KK + t if KERNEL_FMT else j
            xv = tl.load(x_base + ci[:, None] * HW + off[None, :])
            s = tl.sum(xv.to(tl.float32) * g_t[None, :], axis=1)
            if ATOMIC:
                tl.atomic_add(part_base + dst, s, mask=jm)
            else:
                tl.store(part_base + dst, s, mask=jm)


# --------------------------------------------------------------------------------------------------------------------
# Host wrappers
# --------------------------------------------------------------------------------------------------------------------


def _seg_and_ch(packed: SparseConvWeight) -> tuple[torch.Tensor, torch.Tensor, bool]:
    if packed.format == "csr":
        return packed.tap_ptr, packed.cin, False
    return packed.row_ptr, packed.idx, True


def sparse_conv2d_forward(
    x: torch.Tensor,
    packed: SparseConvWeight,
    bias: torch.Tensor | None = None,
    stride: int = 1,
    padding: int = 0,
    padding_mode: str = "zeros",
    negative_slope: float | None = None,
    config: KernelConfig | None = None,
) -> torch.Tensor:
    """Forward only (no autograd): ``leaky_relu(conv(pad(x), W) + bias)``."""
    check_conv_args(x, packed, stride, padding, padding_mode)
    check_kernel_device(x)
    x = x.contiguous()
    n, cin, h, w = x.shape
    cout, _, kh, kw = packed.shape
    ho, wo = conv_output_size(h, w, kh, kw, stride, padding)
    cfg = config or default_config(ho * wo, x.device)
    out = torch.empty((n, cout, ho, wo), device=x.device, dtype=x.dtype)
    if out.numel() == 0:
        return out
    seg, ch, kfmt = _seg_and_ch(packed)
    vals = packed.values.detach().contiguous()
    b = bias.detach().contiguous() if bias is not None else vals  # dummy pointer when unused
    grid = (cout, triton.cdiv(ho * wo, cfg.block_p_fwd), n)
    sparse_conv2d_fwd_kernel[grid](
        x,
        out,
        vals,
        b,
        seg,
        ch,
        cin,
        h,
        w,
        cout,
        ho,
        wo,
        float(negative_slope) if negative_slope is not None else 0.0,
        STRIDE=stride,
        PAD=padding,
        REFLECT=(padding_mode == "reflect" and padding > 0),
        KH=kh,
        KW=kw,
        KERNEL_FMT=kfmt,
        HAS_BIAS=bias is not None,
        ACT=negative_slope is not None,
        BLOCK_P=cfg.block_p_fwd,
        BLOCK_J=cfg.block_j,
        num_warps=cfg.num_warps,
    )
    return out


def sparse_conv2d_input_grad(
    grad_out: torch.Tensor,
    packed: SparseConvWeight,
    input_shape: tuple[int, int, int, int],
    stride: int = 1,
    padding: int = 0,
    padding_mode: str = "zeros",
    config: KernelConfig | None = None,
) -> torch.Tensor:
    """Gradient w.r.t. the input of the (pre-activation) sparse conv: a transposed sparse convolution."""
    check_kernel_device(grad_out)
    grad_out = grad_out.contiguous()
    n, cin, h, w = input_shape
    cout, _, kh, kw = packed.shape
    ho, wo = grad_out.shape[2:]
    hp, wp = h + 2 * padding, w + 2 * padding
    cfg = config or default_config(ho * wo, grad_out.device)
    gxp = torch.empty((n, cin, hp, wp), device=grad_out.device, dtype=torch.float32)
    if gxp.numel():
        kfmt = packed.format == "kernel"
        seg = packed.col_ptr if kfmt else packed.col_tap_ptr
        tiles = triton.cdiv(triton.cdiv(hp, stride) * triton.cdiv(wp, stride), cfg.block_p_dgrad)
        grid = (cin, stride * stride * tiles, n)
        sparse_conv2d_dgrad_kernel[grid](
            grad_out,
            gxp,
            packed.values.detach().contiguous(),
            seg,
            packed.col_row,
            packed.col_perm,
            cin,
            hp,
            wp,
            cout,
            ho,
            wo,
            STRIDE=stride,
            KH=kh,
            KW=kw,
            KERNEL_FMT=kfmt,
            BLOCK_P=cfg.block_p_dgrad,
            BLOCK_J=cfg.block_j,
            num_warps=cfg.num_warps,
        )
    return unpad_input_grad(gxp, padding, padding_mode, h, w).to(grad_out.dtype).contiguous()


def sparse_conv2d_weight_grad(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    packed: SparseConvWeight,
    stride: int = 1,
    padding: int = 0,
    padding_mode: str = "zeros",
    config: KernelConfig | None = None,
) -> torch.Tensor:
    """Gradient w.r.t. ``packed.values`` only (shape ``[nnz]``, fp32 then cast to the values' dtype)."""
    check_kernel_device(grad_out, x)
    grad_out = grad_out.contiguous()
    x = x.contiguous()
    n, cin, h, w = x.shape
    cout, _, kh, kw = packed.shape
    ho, wo = grad_out.shape[2:]
    cfg = config or default_config(ho * wo, x.device)
    n_vals = packed.values.numel()
    n_tiles = triton.cdiv(ho * wo, cfg.block_p_wgrad)
    if n_vals == 0 or n == 0 or ho * wo == 0:
        return torch.zeros_like(packed.values)
    if cfg.wgrad_atomic:
        part = torch.zeros((n_vals,), device=x.device, dtype=torch.float32)
    else:
        # every slot is written exactly once (each (n, tile) program writes every value of its row)
        part = torch.empty((n * n_tiles, n_vals), device=x.device, dtype=torch.float32)
    seg, ch, kfmt = _seg_and_ch(packed)
    grid = (cout, n_tiles, n)
    sparse_conv2d_wgrad_kernel[grid](
        grad_out,
        x,
        part,
        seg,
        ch,
        cin,
        h,
        w,
        cout,
        ho,
        wo,
        n_vals,
        n_tiles,
        STRIDE=stride,
        PAD=padding,
        REFLECT=(padding_mode == "reflect" and padding > 0),
        KH=kh,
        KW=kw,
        KERNEL_FMT=kfmt,
        ATOMIC=cfg.wgrad_atomic,
        BLOCK_P=cfg.block_p_wgrad,
        BLOCK_J=cfg.block_j,
        num_warps=cfg.num_warps,
    )
    gv = part if cfg.wgrad_atomic else part.sum(0)
    if packed.tap_mask is not None:
        gv = gv * packed.tap_mask
    return gv.to(packed.values.dtype)


# --------------------------------------------------------------------------------------------------------------------
# Autograd
# --------------------------------------------------------------------------------------------------------------------


class SparseConv2dFunction(torch.autograd.Function):
    """Autograd over (x, values, bias); the index structure comes from ``packed``."""

    @staticmethod
    def forward(ctx, x, values, bias, packed, stride, padding, padding_mode, negative_slope, config):
        if negative_slope is not None and negative_slope < 0:
            raise ValueError("negative_slope must be >= 0 (the backward recovers the activation mask from the output)")
        p = packed.with_values(values.detach())
        y = sparse_conv2d_forward(x, p, bias, stride, padding, padding_mode, negative_slope, config)
        ctx.packed = p
        ctx.conf = (stride, padding, padding_mode, negative_slope, config, bias is not None)
        ctx.save_for_backward(x, values, y if negative_slope is not None else None)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        x, values, y = ctx.saved_tensors
        stride, padding, padding_mode, slope, config, has_bias = ctx.conf
        p = ctx.packed.with_values(values.detach())
        if slope is not None:
            gy = torch.where(y > 0, gy, gy * slope)
        gx = gv = gb = None
        if ctx.needs_input_grad[0]:
            gx = sparse_conv2d_input_grad(gy, p, tuple(x.shape), stride, padding, padding_mode, config)
        if ctx.needs_input_grad[1]:
            gv = sparse_conv2d_weight_grad(gy, x, p, stride, padding, padding_mode, config)
        if has_bias and ctx.needs_input_grad[2]:
            gb = gy.sum(dim=(0, 2, 3))
        return gx, gv, gb, None, None, None, None, None, None


def sparse_conv2d(
    x: torch.Tensor,
    packed: SparseConvWeight,
    bias: torch.Tensor | None = None,
    stride: int = 1,
    padding: int = 0,
    padding_mode: str = "zeros",
    negative_slope: float | None = None,
    config: KernelConfig | None = None,
) -> torch.Tensor:
    """Sparse conv (Triton), differentiable w.r.t. ``x``, ``packed.values`` and ``bias``.

    Same signature and semantics as ``reference.sparse_conv2d_reference`` (plus the optional ``config``).
    """
    check_conv_args(x, packed, stride, padding, padding_mode)
    return SparseConv2dFunction.apply(
        x, packed.values, bias, packed, stride, padding, padding_mode, negative_slope, config
    )

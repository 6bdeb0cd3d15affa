"""Block-sparse ("bsr") format and tensor-core Triton kernels vs the pure-PyTorch reference.

On CPU the kernels run through Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1), on CUDA natively.
Shapes are small and odd on purpose (37x29 images, 132 input channels, 3 and 4 output channels, partial edge blocks)
so that every masking and clamping path is hit while the file stays fast on one core.

Tolerances, relative to the largest reference magnitude: ``ieee`` / ``tf32x3`` 1e-5 (fp32 summation order only),
``tf32`` 5e-3 (operands rounded to 10 mantissa bits: 2**-11 relative each), ``bf16`` 3e-2 against the exact reference
(8 bits) but 1e-5 in the forward against the bf16-rounded reference, since bf16 products are exact in fp32. Under the
interpreter ``tl.dot`` is numpy fp32 whatever the precision (``test_interpreter_tf32_is_fp32`` pins that), so there
the tf32 tolerance is loose but still checked on a GPU.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from lipdeploy.kernels.bsr_format import (
    block_keep_mask,
    check_bsr_format,
    pack_bsr_weight,
    unpack_bsr_weight,
)
from lipdeploy.kernels.bsr_reference import bsr_conv2d_reference

pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
TOL = {"ieee": 1e-5, "tf32x3": 1e-5, "tf32": 5e-3, "bf16": 3e-2}


@pytest.fixture(autouse=True)
def _seed():
    """Every test draws the same numbers whatever ran before it (the tolerances are checked against these)."""
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def B():
    """The kernels module, imported lazily (after conftest set TRITON_INTERPRET)."""
    from lipdeploy.kernels import bsr_conv

    return bsr_conv


@pytest.fixture
def fast_interpreter():
    """Switch off the interpreter's int32 overflow check for one test: it wraps every integer op of the kernels'
    index math in int64 arithmetic plus a device assert and took half of the interpreted time (measured with cProfile:
    14.8 of 30 s of a weight-grad launch). ``test_index_math_does_not_overflow`` keeps it on."""
    try:
        from triton.runtime import interpreter
    except ImportError:  # pragma: no cover
        yield
        return
    builder = getattr(interpreter, "interpreter_builder", None)
    opts = getattr(builder, "options", None)
    if not INTERPRETED or opts is None or not hasattr(opts, "sanitize_overflow"):
        yield
        return
    builder.options = dataclasses.replace(opts, sanitize_overflow=False)
    try:
        yield
    finally:
        builder.options = opts


def block_mask(shape, block, density, seed, in_block=1.0):
    """0/1 float mask of ``shape`` made of whole ``block``s per tap, ``round(density * blocks)`` of them kept; with
    ``in_block < 1`` each kept block also loses random entries (a mask that is not block-structured)."""
    cout, cin, kh, kw = shape
    bo, bi = block
    nbo, nbi, kk = -(-cout // bo), -(-cin // bi), kh * kw
    g = torch.Generator().manual_seed(seed)
    total = nbo * nbi * kk
    keep = torch.zeros(total, dtype=torch.bool)
    keep[torch.randperm(total, generator=g)[: round(density * total)]] = True
    m = keep.view(nbo, nbi, kk)[:, None, :, None, :].expand(nbo, bo, nbi, bi, kk).reshape(nbo * bo, nbi * bi, kk)
    m = m[:cout, :cin].reshape(shape).float()
    if in_block < 1.0:
        m = m * (torch.rand(shape, generator=g) < in_block).float()
    return m


def close(a, b, what, tol):
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    a, b = a.detach(), b.detach()
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    err = float((a.float() - b.float()).abs().max()) if b.numel() else 0.0
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol:g} x {scale:.3g}"


# ---------------------------------------------------------------------------------------------------------------------
# format (pure PyTorch)
# ---------------------------------------------------------------------------------------------------------------------

SHAPES = [(4, 132, 3, 3), (3, 32, 1, 1), (40, 20, 3, 3), (16, 16, 3, 3), (5, 7, 1, 1), (128, 4, 1, 1)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("block", [(16, 16), (32, 16), (16, 8)])
@pytest.mark.parametrize("density", [0.0, 0.5, 0.9, 1.0])
def test_pack_unpack_roundtrip(shape, block, density):
    torch.manual_seed(0)
    w = torch.randn(shape)
    m = block_mask(shape, block, density, seed=1)
    p = pack_bsr_weight(w, m, block)
    check_bsr_format(p)
    assert torch.equal(unpack_bsr_weight(p), w * m), "unpack must be exact"
    nbo, nbi = p.grid
    assert p.num_blocks == round(density * nbo * nbi * shape[2] * shape[3])
    assert p.values.shape == (p.num_blocks, *block) and int(p.elem_mask.sum()) == int(m.sum())
    assert torch.equal(p.block_mask(), block_keep_mask(m, block))
    q = pack_bsr_weight(p.to_dense(), m, block)
    for name in ("values", "elem_mask", "row_ptr", "run_col", "run_taps", "run_block", "col_ptr", "col_run_row"):
        assert torch.equal(getattr(p, name), getattr(q, name)), name


def test_pack_any_mask_exactly_and_runs_in_cache_order():
    """A mask that is not block-structured is stored exactly (zeros and elem_mask inside kept blocks); blocks are sorted
    input-block major inside an output group, so a run's taps are adjacent."""
    shape = (20, 36, 3, 3)
    m = block_mask(shape, (16, 16), 0.5, seed=2, in_block=0.6)
    w = torch.randn(shape)
    p = pack_bsr_weight(w, m, (16, 16))
    check_bsr_format(p)
    assert torch.equal(p.to_dense(), w * m)
    assert int(p.elem_mask.sum()) == int(m.sum()) and not bool(p.elem_mask.all())
    key = (p.blk_row.long() * 3 + p.blk_col.long()) * 9 + p.blk_tap.long()
    assert torch.equal(key, torch.sort(key).values)
    # default mask = weight != 0; explicit zeros at mask positions are kept
    w0 = w * m
    w0[0, 0, 1, 1] = 0.0
    m0 = m.clone()
    m0[0, 0, 1, 1] = 1.0
    assert int(pack_bsr_weight(w0, m0).elem_mask.sum()) == int(m0.sum())
    assert int(pack_bsr_weight(w0).elem_mask.sum()) == int((w0 != 0).sum())


def test_to_dense_is_differentiable_and_moves():
    p = pack_bsr_weight(torch.randn(8, 24, 3, 3), block_mask((8, 24, 3, 3), (16, 8), 0.5, seed=3), (16, 8))
    v = p.values.clone().requires_grad_(True)
    p.with_values(v).to_dense().sum().backward()
    assert torch.equal(v.grad, p.elem_mask.float())
    q = p.to(dtype=torch.float64)
    assert q.values.dtype == torch.float64 and q.run_taps.dtype == torch.int32
    check_bsr_format(q)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(block=(12, 16)), "powers of two"),
        (dict(block=(16,)), "powers of two"),
        (dict(shape=(4, 4, 7, 7)), "at most 31 taps"),
        (dict(shape=(4, 4, 3)), "4-D"),
        (dict(mask_shape=(4, 4, 1, 1)), "mask shape"),
    ],
)
def test_pack_rejects_bad_arguments(kwargs, match):
    shape = kwargs.get("shape", (4, 4, 3, 3))
    w = torch.randn(shape)
    mask = torch.ones(kwargs["mask_shape"]) if "mask_shape" in kwargs else None
    with pytest.raises(ValueError, match=match):
        pack_bsr_weight(w, mask, kwargs.get("block", (16, 16)))


def test_ops_reject_bad_arguments(B):
    from lipdeploy.kernels.format import pack_conv_weight

    w = torch.randn(4, 8, 3, 3)
    x = torch.randn(1, 8, 5, 5, device=DEVICE)
    p = pack_bsr_weight(w, None).to(DEVICE)
    with pytest.raises(ValueError, match="precision"):
        bsr_conv2d_reference(x, p, precision="fp16")
    with pytest.raises(ValueError, match="precision"):
        B.bsr_conv2d(x, p, precision="tf64")
    with pytest.raises(ValueError, match="BsrConvWeight"):
        B.bsr_conv2d(x, pack_conv_weight(w).to(DEVICE))
    with pytest.raises(ValueError, match="channels"):
        B.bsr_conv2d(torch.randn(1, 7, 5, 5, device=DEVICE), p)


# ---------------------------------------------------------------------------------------------------------------------
# kernels vs reference: outputs, BN statistics and all gradients
# ---------------------------------------------------------------------------------------------------------------------

# (C_out, C_in, k, stride, padding, padding_mode, block, block density, H, W, in-block density)
CASES = [
    # 3x3, every block kept, reflection, odd 37x29 image (9 pixel tiles of 128)
    (16, 16, 3, 1, 1, "reflect", (16, 16), 1.0, 37, 29, 1.0),
    # 132-channel concat input (last input block 4 wide) -> 128 is too slow here: 4 outputs, half the blocks,
    # and a mask that is not block-structured
    (4, 132, 3, 1, 1, "reflect", (16, 16), 0.5, 13, 11, 0.7),
    # final 1x1 conv 32 -> 3 with 16x8 blocks (padded to 16 in the dot), 90% block sparsity
    (3, 32, 1, 1, 0, "zeros", (16, 8), 0.1, 37, 29, 1.0),
    # skip conv 1x1 -> 4 channels
    (4, 32, 1, 1, 0, "zeros", (16, 16), 0.5, 16, 16, 1.0),
    # stride-2 downsampling conv, zero padding, 32x16 blocks with a partial output block (20 of 32)
    (20, 20, 3, 2, 1, "zeros", (32, 16), 0.5, 37, 29, 1.0),
    # stride 2, reflection, 90% block sparsity, even image
    (24, 40, 3, 2, 1, "reflect", (16, 16), 0.1, 18, 14, 1.0),
    # 0% density: the output is the bias, the input gradient zero, no weight gradient
    (16, 24, 3, 1, 1, "reflect", (16, 8), 0.0, 9, 7, 1.0),
]


def _run(fn, x, p, bias, *args):
    """Loss through the output and both BN statistics, so every backward path (incl. the stats' gradient) is used."""
    x = x.detach().clone().requires_grad_(True)
    v = p.values.detach().clone().requires_grad_(True)
    b = bias.detach().clone().requires_grad_(True)
    y, stats = fn(x, p.with_values(v), b, *args, bn_stats=True)
    loss = (y * torch.linspace(-1, 1, y.numel(), device=y.device).view_as(y)).sum() + stats[0].sum() * 0.5
    loss = loss + stats[1].sum() * 0.01
    loss.backward()
    return y.detach(), stats.detach(), x.grad, v.grad, b.grad


@pytest.mark.parametrize(
    "case", CASES, ids=lambda c: "{}x{}k{}s{}{}b{}x{}d{}".format(*c[:3], c[3], c[5][0], *c[6], c[7])
)
def test_kernels_match_reference(B, fast_interpreter, case):
    cout, cin, k, stride, pad, mode, block, density, h, w, in_block = case
    torch.manual_seed(0)
    m = block_mask((cout, cin, k, k), block, density, seed=5, in_block=in_block)
    p = pack_bsr_weight(torch.randn(cout, cin, k, k) * m, m, block).to(DEVICE)
    x = torch.randn(2, cin, h, w, device=DEVICE)
    bias = torch.randn(cout, device=DEVICE)
    cfg = B.BsrConfig(block_p_fwd=128, block_p_dgrad=64, block_p_wgrad=16, wgrad_rows=5, num_warps=4)
    args = (stride, pad, mode, "ieee")
    got = _run(lambda *a, **kw: B.bsr_conv2d(*a, **kw, config=cfg), x, p, bias, *args)
    want = _run(bsr_conv2d_reference, x, p, bias, *args)
    for name, a, b in zip(("output", "stats", "grad x", "grad values", "grad bias"), got, want, strict=True):
        close(a, b, name, TOL["ieee"])
    if p.num_blocks:
        assert not bool(got[3][~p.elem_mask].any()), "weight gradient off the mask"
    else:
        assert got[3].numel() == 0 and not bool(got[2].any())


@pytest.mark.parametrize("precision", ["tf32", "tf32x3", "bf16"])
def test_precisions(B, fast_interpreter, precision):
    shape = (20, 24, 3, 3)
    m = block_mask(shape, (16, 8), 0.5, seed=6)
    p = pack_bsr_weight(torch.randn(shape) * m, m, (16, 8)).to(DEVICE)
    x = torch.rand(1, 24, 15, 13, device=DEVICE)
    bias = torch.randn(20, device=DEVICE)
    args = (2, 1, "reflect", precision)
    got = _run(B.bsr_conv2d, x, p, bias, *args)
    want = _run(bsr_conv2d_reference, x, p, bias, *args[:3], "ieee")
    for name, a, b in zip(("output", "stats", "grad x", "grad values", "grad bias"), got, want, strict=True):
        close(a, b, f"{precision} {name}", TOL[precision])
    if precision == "bf16":  # the forward rounds exactly like the reference: equal to fp32 summation order
        y, _ = bsr_conv2d_reference(x, p, bias, *args, bn_stats=True)
        close(got[0], y, "bf16 output vs bf16 reference", 1e-5)


@pytest.mark.skipif(not INTERPRETED, reason="a fact about Triton's interpreter")
def test_interpreter_tf32_is_fp32(B, fast_interpreter):
    """Under the interpreter tl.dot is numpy fp32 whatever input_precision says: the tf32 kernels are bit-identical
    to the ieee ones there, so their tf32 rounding is only exercised on a GPU."""
    shape = (16, 16, 3, 3)
    p = pack_bsr_weight(torch.randn(shape), None)
    x = torch.randn(1, 16, 9, 8)
    assert torch.equal(B.bsr_conv2d(x, p, precision="tf32"), B.bsr_conv2d(x, p, precision="ieee"))


def test_default_config_and_plain_output(B, fast_interpreter):
    """Default config, no bias, no statistics: a plain tensor out; the backward w.r.t. x and values only."""
    shape = (8, 16, 3, 3)
    m = block_mask(shape, (16, 16), 0.5, seed=7)
    p = pack_bsr_weight(torch.randn(shape) * m, m).to(DEVICE)
    x = torch.randn(1, 16, 11, 10, device=DEVICE, requires_grad=True)
    v = p.values.clone().requires_grad_(True)
    y = B.bsr_conv2d(x, p.with_values(v), None, 1, 1, "zeros", "ieee")
    assert isinstance(y, torch.Tensor) and y.shape == (1, 8, 11, 10)
    y.square().sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    v2 = p.values.clone().requires_grad_(True)
    y2 = bsr_conv2d_reference(x2, p.with_values(v2), None, 1, 1, "zeros", "ieee")
    y2.square().sum().backward()
    close(y, y2, "output", 1e-5)
    close(x.grad, x2.grad, "grad x", 1e-5)
    close(v.grad, v2.grad, "grad values", 1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_activations(fast_interpreter, dtype):
    """fp16 / bf16 activations: loaded as they are, multiplied at the selected precision, accumulated in fp32; the
    output takes the input's dtype (so it differs from the fp32 result by that dtype's rounding: one unit in the last
    place, since the interpreter's casts truncate). Through the package's lazy ``bsr_conv2d``."""
    from lipdeploy.kernels import bsr_conv2d

    p = pack_bsr_weight(torch.randn(8, 16, 3, 3), None).to(DEVICE)
    x = torch.randn(1, 16, 9, 7, device=DEVICE).to(dtype)
    y = bsr_conv2d(x, p, None, 1, 1, "reflect", "ieee")
    assert y.dtype == dtype
    close(y, bsr_conv2d_reference(x.float(), p, None, 1, 1, "reflect", "ieee"), str(dtype), torch.finfo(dtype).eps)


def test_weight_grad_is_deterministic(B, fast_interpreter):
    shape = (16, 32, 3, 3)
    m = block_mask(shape, (16, 16), 0.5, seed=8)
    p = pack_bsr_weight(torch.randn(shape) * m, m).to(DEVICE)
    x = torch.randn(2, 32, 12, 12, device=DEVICE)
    gy = torch.randn(2, 16, 12, 12, device=DEVICE)
    cfg = B.BsrConfig(32, 32, 16, wgrad_rows=2, num_warps=4)
    a = B.bsr_conv2d_weight_grad(gy, x, p, 1, 1, "reflect", "tf32", cfg)
    b = B.bsr_conv2d_weight_grad(gy, x, p, 1, 1, "reflect", "tf32", cfg)
    assert torch.equal(a, b)


def test_index_math_does_not_overflow(B):
    """One launch of each kernel with the interpreter's int32 overflow check on (the other tests switch it off)."""
    shape = (4, 20, 3, 3)
    p = pack_bsr_weight(torch.randn(shape), None, (16, 16)).to(DEVICE)
    x = torch.randn(1, 20, 7, 6, device=DEVICE, requires_grad=True)
    bias = torch.randn(4, device=DEVICE)
    y, stats = B.bsr_conv2d(x, p, bias, 2, 1, "reflect", "ieee", bn_stats=True)
    y.sum().backward()
    y2, stats2 = bsr_conv2d_reference(x.detach(), p, bias, 2, 1, "reflect", "ieee", bn_stats=True)
    close(y, y2, "output", 1e-5)
    close(stats, stats2, "stats", 1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# BsrConv2d
# ---------------------------------------------------------------------------------------------------------------------


def test_module_from_dense_trains_like_the_masked_conv(fast_interpreter):
    """``BsrConv2d.from_dense`` = the masked dense conv (forward, gradients only at the mask); both implementations;
    the state dict round-trips; ``bn_stats`` returns the statistics."""
    import torch.nn.functional as F

    from lipdeploy.kernels.bsr_module import BsrConv2d

    shape = (20, 24, 3, 3)
    m = block_mask(shape, (16, 8), 0.5, seed=9, in_block=0.8)
    w = torch.randn(shape, device=DEVICE)
    bias = torch.randn(20, device=DEVICE)
    x = torch.randn(1, 24, 10, 9, device=DEVICE)
    m = m.to(DEVICE)
    want = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), w * m, bias, stride=2)
    mods = {}
    for impl in ("triton", "torch"):
        mod = BsrConv2d.from_dense(w, m, bias, 2, 1, "reflect", block=(16, 8), precision="ieee", implementation=impl)
        y = mod.to(DEVICE)(x)
        close(y, want, f"{impl} output", 1e-5)
        y.square().sum().backward()
        assert not bool(mod.values.grad[~mod.elem_mask].any())
        assert torch.equal(mod.mask(), m) and torch.equal(mod.dense_weight().detach(), w * m)
        mods[impl] = mod
    close(mods["triton"].values.grad, mods["torch"].values.grad, "values grad", 1e-5)
    assert "block=16x8" in repr(mods["triton"])
    clone = BsrConv2d(mods["triton"].packed(), bias, 2, 1, "reflect", precision="ieee", implementation="torch")
    clone.load_state_dict(mods["triton"].state_dict())
    y, stats = clone(x, bn_stats=True)
    close(stats[0], want.sum(dim=(0, 2, 3)), "stats", 1e-5)
    with pytest.raises(ValueError, match="implementation"):
        BsrConv2d.from_dense(w, m, implementation="cuda")

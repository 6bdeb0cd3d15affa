"""Layer-level GPU benchmark: Triton sparse conv vs dense cuDNN on the DIP skip network's conv shapes.

Run (CUDA only):  python -m lipdeploy.bench.gpu.layers -o bench/results/gpu_layers.json  [--quick]

For every layer shape x sparsity x mask kind it times (median ms, triton.testing.do_bench):
- ``dense``:        reflection pad + F.conv2d + bias + LeakyReLU with PyTorch defaults (cuDNN; TF32 allowed for convs,
                    as PyTorch defaults it) -- the baseline users actually run;
- ``masked_dense``: the same with ``weight * mask`` recomputed per call (how masked IMP fitting runs);
- ``triton_csr`` / ``triton_kernel``: lipdeploy.kernels sparse conv (in-kernel reflection, fused bias + LeakyReLU),
                    unstructured CSR and kernel-granular formats;
each for the forward pass and for forward+backward (grad input, grad weight, grad bias). Reports effective GFLOP/s
(dense-equivalent and nonzero-only) and the speedup vs ``dense`` measured in the same run, plus the max abs error of
the sparse forward vs the fp32 reference. Masks: ``random`` (uniform) and ``imp`` (global-magnitude pruning of a weight
tensor with heavy-tailed, channel- and tap-structured magnitudes: a layer-level stand-in for an IMP ticket).

``--blocks``: block tickets instead, at ``--block-sparsities`` (default 0.9 0.5 0.75 0: the 2.5x target,
the never-slower check, then the rest), with random whole ``block32x16`` blocks (mask ``block32x16``: also a 16x16
block mask, so both bsr packings skip the same work). Rows, each forward and forward+backward:

- ``dense``:         PyTorch's defaults (cuDNN with TF32 allowed: the baseline of ``speedup_vs_dense``);
- ``dense_fp32``:    the same with ``torch.backends.cudnn.allow_tf32 = False`` (exact fp32 cuDNN);
- ``triton_csr``:    the CUDA-core kernels on the unstructured packing of the same mask;
- ``triton_bsr16`` / ``triton_bsr32``: the tensor-core kernels (``kernels.bsr_conv``, TF32) on 16x16 / 32x16 blocks,
  plus LeakyReLU (which the dense rows fuse into the measured layer too).

``max_abs_err`` is against the exact fp32 dense layer (TF32 rows differ by ~1e-3 there; ``block_density`` is the
kept share of 16x16 blocks).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lipdeploy.patterns import PATTERNS

from ..script import Results, needs_gpu, parser, refuse, script_environment
from ..timing import device_ms

SLOPE = 0.2
PAD_MODE = "reflect"

# (name, C_in, C_out, k, stride, input sizes) -- the shapes of the paper's skip network (down=up=[128]*5, skip=4)
LAYERS = [
    ("conv3x3_128_s1", 128, 128, 3, 1, (64, 128, 256, 512)),
    ("conv3x3_128_s2", 128, 128, 3, 2, (128, 256, 512)),
    ("conv1x1_128", 128, 128, 1, 1, (64, 128, 256, 512)),
    ("conv3x3_132_s1", 132, 128, 3, 1, (64, 128, 256, 512)),
]
QUICK_SIZES = (64, 256)
SPARSITIES = (0.5, 0.8, 0.9, 0.95, 0.98)
BLOCK_SPARSITIES = (0.9, 0.5, 0.75, 0.0)
"""``--blocks``: block sparsities, most important first (rows are saved as they come, a step cut off keeps them)."""
BLOCK_MASK = "block32x16"
BSR_BLOCKS = {"triton_bsr16": (16, 16), "triton_bsr32": (32, 16)}
"""``--blocks`` rows: backend label -> the bsr packing's block (Bo, Bi)."""


def make_mask(shape, sparsity: float, kind: str, gen: torch.Generator) -> torch.Tensor:
    """An unstructured mask of one layer keeping ``max(1, round((1 - sparsity) * numel))`` weights.

    ``random``: uniformly drawn from ``gen``; ``imp``: the largest of heavy-tailed magnitudes with per-output,
    per-input and per-tap structure: pruning them by magnitude leaves some channels / kernels much denser than others,
    and whole zero kernels, like a real ticket (a layer-level stand-in for IMP).
    """
    unstructured = PATTERNS["unstructured"]
    if kind == "random":
        return unstructured.random_masks({"w": shape}, sparsity, gen, protect=())["w"]
    if kind != "imp":
        raise ValueError(kind)
    cout, cin, kh, kw = shape
    t = torch.distributions.StudentT(3.0).sample((cout * cin * kh * kw,)).abs()
    rows = torch.exp(0.7 * torch.randn(cout, 1, 1, 1, generator=gen))
    cols = torch.exp(0.7 * torch.randn(1, cin, 1, 1, generator=gen))
    taps = torch.exp(0.3 * torch.randn(1, 1, kh, kw, generator=gen))
    return unstructured.magnitude_masks({"w": t.view(shape) * rows * cols * taps}, sparsity, protect=())["w"]


def _bench(fn, dev: torch.device, grad_to_none=None) -> float:
    return device_ms(fn, dev, rep_ms=50, warmup_ms=10, grad_to_none=grad_to_none)


def run(args: argparse.Namespace) -> Results:
    """Every requested layer shape x size; the results file is rewritten as rows come."""
    dev = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    meta = script_environment(
        gpu=torch.cuda.get_device_name() if dev.type == "cuda" else "cpu (Triton interpreter; smoke test only)",
        slope=SLOPE,
        padding_mode=PAD_MODE,
        batch=args.batch,
    )
    results = Results(args.output, meta, printer=lambda r: print_rows([r], header=False))
    for name, cin, cout, k, stride, sizes in LAYERS:
        if args.layers and name not in args.layers:
            continue
        if args.channels:  # smoke tests: the same layer kinds, narrower (132 -> 128 keeps its 4 extra inputs)
            cin, cout = args.channels + (cin - cout), args.channels
        if args.sizes:  # exactly the sizes asked for, whatever the layer's usual ones
            sizes = args.sizes
        elif args.quick:
            sizes = [hw for hw in sizes if hw in QUICK_SIZES]
        for hw in sizes:
            bench = bench_blocks if args.blocks else bench_shape
            bench(args, name, cin, cout, k, stride, hw, gen, dev, results.add)
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    return results


def _dense_fwd(x, w, b, stride, pad):
    xp = F.pad(x, (pad,) * 4, mode=PAD_MODE) if pad else x
    return F.leaky_relu(F.conv2d(xp, w, b, stride=stride), SLOPE)


def bench_shape(args, name, cin, cout, k, stride, hw, gen, dev, emit: Callable[..., None]) -> None:
    """All rows of one layer shape at one input size (dense baselines timed once, reused for every sparsity), handed
    to ``emit`` as they are measured (the dense row, then one batch per mask kind and sparsity)."""
    # deferred: the kernels need Triton, which main() checks for first (to refuse with one line, not a traceback)
    from lipdeploy.kernels.sparse_conv import config_grid

    # --tune: every kernel config of the grid (plus the default); otherwise the default config only
    configs = [None, *config_grid(dev)] if args.tune else [None]

    rows = []
    pad = k // 2
    x = torch.randn(args.batch, cin, hw, hw, device=dev)
    w = (torch.randn(cout, cin, k, k, device=dev) / (cin * k * k) ** 0.5).contiguous()
    b = torch.randn(cout, device=dev) * 0.1
    ho = (hw + 2 * pad - k) // stride + 1
    dense_flops = 2.0 * args.batch * cout * cin * k * k * ho * ho
    gy = torch.randn(args.batch, cout, ho, ho, device=dev)
    xg = x.clone().requires_grad_(True)
    wg = w.clone().requires_grad_(True)
    bg = b.clone().requires_grad_(True)
    t_dense = {
        "fwd": _bench(lambda: _dense_fwd(x, w, b, stride, pad), dev),
        "fwd+bwd": _bench(lambda: _dense_fwd(xg, wg, bg, stride, pad).backward(gy), dev, grad_to_none=[xg, wg, bg]),
    }
    base = dict(layer=name, hw=hw, cin=cin, cout=cout, k=k, stride=stride)

    def add(sp, kind, backend, t, nnz, err, **extra):
        for p_name, ms in t.items():
            mult = 1.0 if p_name == "fwd" else 3.0  # backward = grad input + grad weight, each a conv's worth
            rows.append(
                dict(
                    base,
                    sparsity=sp,
                    mask=kind,
                    backend=backend,
                    **{"pass": p_name},
                    ms=ms,
                    nnz=nnz,
                    gflops_dense_equiv=mult * dense_flops / ms / 1e6,
                    gflops_nonzero=mult * 2.0 * args.batch * nnz * ho * ho / ms / 1e6,
                    speedup_vs_dense=t_dense[p_name] / ms,
                    max_abs_err=err,
                    **extra,
                )
            )

    add(0.0, "dense", "dense", t_dense, w.numel(), 0.0)
    emit(*rows)
    for kind in args.masks:
        for sp in args.sparsities:
            n0 = len(rows)
            mask = make_mask(w.shape, sp, kind, gen).to(dev)
            t_masked = {
                "fwd": _bench(lambda m=mask: _dense_fwd(x, w * m, b, stride, pad), dev),
                "fwd+bwd": _bench(
                    lambda m=mask: _dense_fwd(xg, wg * m, bg, stride, pad).backward(gy), dev, grad_to_none=[xg, wg, bg]
                ),
            }
            add(sp, kind, "masked_dense", t_masked, int(mask.sum()), 0.0)
            for fmt in args.formats:
                for t, nnz, err, extra in _sparse_timings(x, xg, w, mask, b, bg, gy, fmt, configs, stride, pad, dev):
                    add(sp, kind, f"triton_{fmt}", t, nnz, err, **extra)
            emit(*rows[n0:])


def _sparse_timings(x, xg, w, mask, b, bg, gy, fmt: str, configs: list, stride: int, pad: int, dev: torch.device):
    """Per kernel config (``None``: the default one): the sparse kernels' forward and forward+backward ms on the
    ``fmt`` packing of ``w * mask``, its stored entries, the forward's max abs error vs the exact fp32 reference, and
    the row's config columns."""
    # deferred: the kernels need Triton, which main() checks for first (to refuse with one line, not a traceback)
    from lipdeploy.kernels import pack_conv_weight, sparse_conv2d, sparse_conv2d_reference
    from lipdeploy.kernels.sparse_conv import default_config

    packed = pack_conv_weight(w, mask, format=fmt)
    with torch.no_grad(), _exact_fp32():  # exact fp32 reference for the error column
        yr = sparse_conv2d_reference(x, packed, b, stride, pad, PAD_MODE, SLOPE)
    vg = packed.values.clone().requires_grad_(True)
    pg = packed.with_values(vg)
    ho = (x.shape[-1] + 2 * pad - w.shape[-1]) // stride + 1
    for cfg in configs:
        with torch.no_grad():
            y = sparse_conv2d(x, packed, b, stride, pad, PAD_MODE, SLOPE, cfg)
            err = (y - yr).abs().max().item()
        t = {
            "fwd": _bench(lambda p=packed, c=cfg: sparse_conv2d(x, p, b, stride, pad, PAD_MODE, SLOPE, c), dev),
            "fwd+bwd": _bench(
                lambda p=pg, c=cfg: sparse_conv2d(xg, p, bg, stride, pad, PAD_MODE, SLOPE, c).backward(gy),
                dev,
                grad_to_none=[xg, vg, bg],
            ),
        }
        tag = (cfg or default_config(ho * ho, dev)).tag
        yield t, packed.nnz, err, {"config": tag, "tuned": cfg is not None}


def block_mask(shape, sparsity: float, gen: torch.Generator) -> torch.Tensor:
    """Random whole ``BLOCK_MASK`` blocks of one layer, ``sparsity`` of them removed (all ones at 0)."""
    if sparsity <= 0:
        return torch.ones(shape)
    return PATTERNS[BLOCK_MASK].random_masks({"w": shape}, sparsity, gen, protect=())["w"]


@contextlib.contextmanager
def _exact_fp32():
    """cuDNN without TF32 (exact fp32 convolutions) inside, PyTorch's setting restored after."""
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = tf32


def _dense_fp32(x, w, b, stride, pad):
    with _exact_fp32():
        return _dense_fwd(x, w, b, stride, pad)


def bench_blocks(args, name, cin, cout, k, stride, hw, gen, dev, emit: Callable[..., None]) -> None:
    """``--blocks`` rows of one layer shape at one input size: dense TF32 (the baseline) and fp32 once, then per block
    sparsity csr and the bsr packings, forward and forward+backward, handed to ``emit`` as they are measured."""
    # deferred: the kernels need Triton, which main() checks for first (to refuse with one line, not a traceback)
    from lipdeploy.kernels import bsr_conv2d, pack_bsr_weight, pack_conv_weight, sparse_conv2d
    from lipdeploy.kernels.bsr_conv import default_bsr_config
    from lipdeploy.kernels.bsr_format import block_keep_mask
    from lipdeploy.kernels.sparse_conv import default_config

    pad = k // 2
    x = torch.randn(args.batch, cin, hw, hw, device=dev)
    w = (torch.randn(cout, cin, k, k, device=dev) / (cin * k * k) ** 0.5).contiguous()
    b = torch.randn(cout, device=dev) * 0.1
    ho = (hw + 2 * pad - k) // stride + 1
    dense_flops = 2.0 * args.batch * cout * cin * k * k * ho * ho
    gy = torch.randn(args.batch, cout, ho, ho, device=dev)
    xg, wg, bg = x.clone().requires_grad_(True), w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    base = dict(layer=name, hw=hw, cin=cin, cout=cout, k=k, stride=stride, mask=BLOCK_MASK)

    def timed(infer: Callable[[], torch.Tensor], train: Callable[[], torch.Tensor], leaf: torch.Tensor) -> dict:
        """ms of ``infer()`` (forward), and of ``train()`` (the same on the grad-tracking tensors) + backward."""
        return {
            "fwd": _bench(infer, dev),
            "fwd+bwd": _bench(lambda: train().backward(gy), dev, grad_to_none=[xg, bg, leaf]),
        }

    t_dense = timed(lambda: _dense_fwd(x, w, b, stride, pad), lambda: _dense_fwd(xg, wg, bg, stride, pad), wg)

    def rows(sp, backend, t, nnz, err, **extra) -> list[dict]:
        out = []
        for p_name, ms in t.items():
            mult = 1.0 if p_name == "fwd" else 3.0  # backward = grad input + grad weight, each a conv's worth
            out.append(
                dict(base, sparsity=sp, backend=backend, **{"pass": p_name}, ms=ms, nnz=nnz,
                     gflops_dense_equiv=mult * dense_flops / ms / 1e6,
                     gflops_nonzero=mult * 2.0 * args.batch * nnz * ho * ho / ms / 1e6,
                     speedup_vs_dense=t_dense[p_name] / ms, max_abs_err=err, **extra)
            )  # fmt: skip
        return out

    emit(*rows(0.0, "dense", t_dense, w.numel(), 0.0, precision="tf32" if dev.type == "cuda" else "fp32"))
    t = timed(lambda: _dense_fp32(x, w, b, stride, pad), lambda: _dense_fp32(xg, wg, bg, stride, pad), wg)
    emit(*rows(0.0, "dense_fp32", t, w.numel(), 0.0, precision="fp32"))
    for sp in args.block_sparsities:
        mask = block_mask(w.shape, sp, gen).to(dev)
        with torch.no_grad():
            want = _dense_fp32(x, w * mask, b, stride, pad)
        density = float(block_keep_mask(mask, (16, 16)).float().mean())
        packed = pack_conv_weight(w, mask, format="csr")
        vg = packed.values.clone().requires_grad_(True)
        pg = packed.with_values(vg)
        with torch.no_grad():
            err = (sparse_conv2d(x, packed, b, stride, pad, PAD_MODE, SLOPE) - want).abs().max().item()
        t = timed(
            lambda p=packed: sparse_conv2d(x, p, b, stride, pad, PAD_MODE, SLOPE),
            lambda p=pg: sparse_conv2d(xg, p, bg, stride, pad, PAD_MODE, SLOPE),
            vg,
        )
        cfg = default_config(ho * ho, dev).tag
        out = rows(sp, "triton_csr", t, packed.nnz, err, config=cfg, block_density=density, precision="fp32")
        for backend, block in BSR_BLOCKS.items():
            bp = pack_bsr_weight(w, mask, block)
            vb = bp.values.clone().requires_grad_(True)
            bpg = bp.with_values(vb)

            def bsr(xi, p, bi):  # + LeakyReLU: the dense rows time it too (the bsr kernels fuse bias, not the slope)
                return F.leaky_relu(bsr_conv2d(xi, p, bi, stride, pad, PAD_MODE, "tf32"), SLOPE)

            with torch.no_grad():
                err = (bsr(x, bp, b) - want).abs().max().item()
            t = timed(lambda p=bp: bsr(x, p, b), lambda p=bpg: bsr(xg, p, bg), vb)
            extra = dict(block=f"{block[0]}x{block[1]}", blocks=bp.num_blocks, block_density=density, precision="tf32")
            out += rows(sp, backend, t, bp.nnz, err, config=default_bsr_config(ho * ho, dev).tag, **extra)
        emit(*out)


def print_rows(rows, header=True) -> None:
    fmt = "{:<16} {:>4} {:>5} {:<6} {:<13} {:<7} {:>9} {:>9} {:>9} {:>7} {:>8}"
    if header:
        print(
            fmt.format("layer", "hw", "spars", "mask", "backend", "pass", "ms", "GF/s eq", "GF/s nz", "xdense", "err")
        )
    for r in rows:
        print(
            fmt.format(
                r["layer"],
                r["hw"],
                f"{r['sparsity']:.2f}",
                r["mask"],
                r["backend"],
                r["pass"],
                f"{r['ms']:.3f}",
                f"{r['gflops_dense_equiv']:.0f}",
                f"{r['gflops_nonzero']:.0f}",
                f"{r['speedup_vs_dense']:.2f}",
                f"{r['max_abs_err']:.1e}",
            ),
            flush=True,
        )


def best_configs(rows: list[dict]) -> list[dict]:
    """Per (layer, size, mask, sparsity, backend, pass): the fastest kernel config and its gain over the default one."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if "config" in r:
            key = (r["layer"], r["hw"], r["mask"], r["sparsity"], r["backend"], r["pass"])
            groups.setdefault(key, []).append(r)
    out = []
    for key, rs in groups.items():
        default = next(r for r in rs if not r["tuned"])
        best = min(rs, key=lambda r: r["ms"])
        out.append(
            dict(
                zip(("layer", "hw", "mask", "sparsity", "backend", "pass"), key, strict=True),
                best_config=best["config"],
                best_ms=best["ms"],
                default_config=default["config"],
                default_ms=default["ms"],
                gain_vs_default=default["ms"] / best["ms"],
                best_speedup_vs_dense=best["speedup_vs_dense"],
            )
        )
    return out


def main(argv: list[str] | None = None) -> int:
    quick = f"only input sizes {QUICK_SIZES}"
    ap = parser("lipdeploy.bench.gpu.layers", __doc__, device="cuda", quick=quick, channels=True)
    ap.add_argument("--sizes", type=int, nargs="*", help="these input sizes (instead of each layer's)")
    ap.add_argument("--layers", nargs="*", help="only these layer names: " + ", ".join(n for n, *_ in LAYERS))
    ap.add_argument("--sparsities", type=float, nargs="*", default=list(SPARSITIES))
    ap.add_argument("--masks", nargs="*", default=["random", "imp"], choices=["random", "imp"])
    ap.add_argument("--formats", nargs="*", default=["csr", "kernel"], choices=["csr", "kernel"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument(
        "--blocks",
        action="store_true",
        help="block tickets instead: dense TF32 / fp32, csr, bsr16, bsr32 at --block-sparsities",
    )
    ap.add_argument("--block-sparsities", type=float, nargs="*", default=list(BLOCK_SPARSITIES))
    ap.add_argument(
        "--tune",
        action="store_true",
        help="also time every kernel config of kernels.sparse_conv.config_grid (rows carry 'config'; keep it narrow: "
        "--layers/--sizes/--sparsities)",
    )
    args = ap.parse_args(argv)
    why = needs_gpu("gpu.layers", args.device)
    if why:
        return refuse(why)
    print_rows([], header=True)
    results = run(args)
    print()
    print_rows(results.rows, header=True)
    extra = {}
    if args.tune:
        extra["best_configs"] = best_configs(results.rows)
        print("\nbest kernel config per case (vs the default config, and vs dense cuDNN)")
        for b in extra["best_configs"]:
            print(
                f"{b['layer']:<16} {b['hw']:>4} {b['mask']:<6} {b['sparsity']:.2f} {b['backend']:<13} {b['pass']:<7} "
                f"{b['best_config']:<22} {b['best_ms']:8.3f} ms  x{b['gain_vs_default']:.2f} vs default  "
                f"x{b['best_speedup_vs_dense']:.2f} vs dense"
            )
    results.finish(**extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())

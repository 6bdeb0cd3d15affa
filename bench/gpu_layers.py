"""Layer-level GPU benchmark: Triton sparse conv vs dense cuDNN on the DIP skip network's conv shapes.

Run (CUDA only):  python -m lipdeploy.bench.gpu_layers -o bench/results/gpu_layers.json  [--quick]

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
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lipdeploy.fileio import atomic_write_json

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


def make_mask(shape, sparsity: float, kind: str, gen: torch.Generator) -> torch.Tensor:
    cout, cin, kh, kw = shape
    numel = cout * cin * kh * kw
    keep = max(1, round((1.0 - sparsity) * numel))
    if kind == "random":
        score = torch.rand(numel, generator=gen)
    elif kind == "imp":
        # heavy-tailed magnitudes with per-output, per-input and per-tap structure: pruning them by magnitude leaves
        # some channels / kernels much denser than others, and whole zero kernels, like a real ticket
        t = torch.distributions.StudentT(3.0).sample((numel,)).abs()
        rows = torch.exp(0.7 * torch.randn(cout, 1, 1, 1, generator=gen))
        cols = torch.exp(0.7 * torch.randn(1, cin, 1, 1, generator=gen))
        taps = torch.exp(0.3 * torch.randn(1, 1, kh, kw, generator=gen))
        score = (t.view(shape) * rows * cols * taps).flatten()
    else:
        raise ValueError(kind)
    m = torch.zeros(numel)
    m[torch.topk(score, keep).indices] = 1.0
    return m.view(shape)


def _bench(fn, dev: torch.device, grad_to_none=None) -> float:
    from .timing import device_ms

    return device_ms(fn, dev, rep_ms=50, warmup_ms=10, grad_to_none=grad_to_none)


def run(args) -> dict:
    import triton

    dev = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    meta = {
        "gpu": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu (Triton interpreter; smoke test only)",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "slope": SLOPE,
        "padding_mode": PAD_MODE,
        "batch": args.batch,
    }
    rows: list[dict] = []
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
            rows += bench_shape(args, name, cin, cout, k, stride, hw, gen, dev)
            _save(args.output, {"meta": meta, "rows": rows, "complete": False})  # a cut-off run keeps its rows
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    return {"meta": meta, "rows": rows, "complete": True}


def _save(path: Path | None, payload: dict) -> None:
    if path is not None:
        atomic_write_json(path, payload)


def _dense_fwd(x, w, b, stride, pad):
    xp = F.pad(x, (pad,) * 4, mode=PAD_MODE) if pad else x
    return F.leaky_relu(F.conv2d(xp, w, b, stride=stride), SLOPE)


def bench_shape(args, name, cin, cout, k, stride, hw, gen, dev) -> list[dict]:
    """All rows of one layer shape at one input size (dense baselines timed once, reused for every sparsity)."""
    from lipdeploy.kernels import pack_conv_weight, sparse_conv2d, sparse_conv2d_reference
    from lipdeploy.kernels.sparse_conv import config_grid, default_config

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
    print_rows(rows, header=False)
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
                packed = pack_conv_weight(w, mask, format=fmt)
                with torch.no_grad():
                    tf32 = torch.backends.cudnn.allow_tf32
                    torch.backends.cudnn.allow_tf32 = False  # exact fp32 reference for the error column
                    yr = sparse_conv2d_reference(x, packed, b, stride, pad, PAD_MODE, SLOPE)
                    torch.backends.cudnn.allow_tf32 = tf32
                vg = packed.values.clone().requires_grad_(True)
                pg = packed.with_values(vg)
                for cfg in configs:
                    with torch.no_grad():
                        y = sparse_conv2d(x, packed, b, stride, pad, PAD_MODE, SLOPE, cfg)
                        err = (y - yr).abs().max().item()
                    t = {
                        "fwd": _bench(
                            lambda p=packed, c=cfg: sparse_conv2d(x, p, b, stride, pad, PAD_MODE, SLOPE, c), dev
                        ),
                        "fwd+bwd": _bench(
                            lambda p=pg, c=cfg: sparse_conv2d(xg, p, bg, stride, pad, PAD_MODE, SLOPE, c).backward(gy),
                            dev,
                            grad_to_none=[xg, vg, bg],
                        ),
                    }
                    tag = (cfg or default_config(ho * ho, dev)).tag
                    add(sp, kind, f"triton_{fmt}", t, packed.nnz, err, config=tag, tuned=cfg is not None)
            print_rows(rows[n0:], header=False)
    return rows


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", type=Path, help="write JSON results here")
    ap.add_argument("--quick", action="store_true", help=f"only input sizes {QUICK_SIZES}")
    ap.add_argument("--sizes", type=int, nargs="*", help="these input sizes (instead of each layer's)")
    ap.add_argument("--layers", nargs="*", help="only these layer names: " + ", ".join(n for n, *_ in LAYERS))
    ap.add_argument("--sparsities", type=float, nargs="*", default=list(SPARSITIES))
    ap.add_argument("--masks", nargs="*", default=["random", "imp"], choices=["random", "imp"])
    ap.add_argument("--formats", nargs="*", default=["csr", "kernel"], choices=["csr", "kernel"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument(
        "--tune",
        action="store_true",
        help="also time every kernel config of kernels.sparse_conv.config_grid (rows carry 'config'; keep it narrow: "
        "--layers/--sizes/--sparsities)",
    )
    ap.add_argument("--channels", type=int, help=argparse.SUPPRESS)  # narrower layers, for smoke tests
    ap.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # "cpu": smoke test (TRITON_INTERPRET=1)
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_layers: needs a CUDA GPU (torch.cuda.is_available() is False); nothing was benchmarked",
            file=sys.stderr,
        )
        return 2
    try:
        import triton  # noqa: F401
    except ImportError:
        print("gpu_layers: needs the 'triton' package (pip install 'lipdeploy[triton]')", file=sys.stderr)
        return 2
    print_rows([], header=True)
    result = run(args)
    print()
    print_rows(result["rows"], header=True)
    if args.tune:
        result["best_configs"] = best_configs(result["rows"])
        print("\nbest kernel config per case (vs the default config, and vs dense cuDNN)")
        for b in result["best_configs"]:
            print(
                f"{b['layer']:<16} {b['hw']:>4} {b['mask']:<6} {b['sparsity']:.2f} {b['backend']:<13} {b['pass']:<7} "
                f"{b['best_config']:<22} {b['best_ms']:8.3f} ms  x{b['gain_vs_default']:.2f} vs default  "
                f"x{b['best_speedup_vs_dense']:.2f} vs dense"
            )
    if args.output:
        _save(args.output, result)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

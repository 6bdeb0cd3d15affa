"""Static report of the Triton kernels compiled for an H100 (sm_90), without a GPU.

``python -m lipdeploy.bench.gpu.kernel_sass [--grid] [-o rows.json]`` (run without ``TRITON_INTERPRET``)

For each kernel (forward, input grad, weight grad) x packing format x stride x kernel config it compiles the kernel
with Triton for sm_90 (Triton's bundled ptxas; nothing runs), then reads the cubin with the bundled ``cuobjdump``:

- resources: registers per thread, local memory (register spills), shared memory; and the resulting occupancy
  (resident warps per SM out of 64: 65,536 registers per SM, allocated per warp in units of 256);
- the instruction mix of the hot loop (the innermost loop, over the nonzeros of one tap, with the most FP
  instructions): total SASS instructions, FP instructions (FFMA/FMUL/FADD), multiplies (FFMA + FMUL: one per
  (nonzero, pixel) product; the weight grad's reduction FADDs are overhead, not work), global loads, integer work.

Why it matters: the sparse kernels run on CUDA cores and every nonzero costs at least a load and an FMA per pixel, so
``instructions per multiply`` in the hot loop bounds the kernel by issue rate (an SM issues 4 warp instructions per
clock, its FP32 units take 4 warp FMAs per clock): at 4 instructions per FMA the kernel cannot exceed 1/4 of FP32
peak, whatever the memory system does. These are compiler facts, not timings; the GPU benchmarks measure the rest.
"""

from __future__ import annotations

import os
import sys

from ..script import Results, parser, script_environment
from .bsr_sass import bsr_report, print_bsr_rows
from .sass import hot_loop, sass_row


def kernel_specs(kernel: str, fmt: str, stride: int, cfg) -> tuple[object, list[str], dict, int]:
    """(jit function, argument types, constexprs, num_warps) of one kernel variant, as the host wrappers launch it."""
    from lipdeploy.kernels import sparse_conv as S  # the Triton kernels' module imports triton: loaded to compile

    kfmt = fmt == "kernel"
    geo = dict(STRIDE=stride, KH=3, KW=3, KERNEL_FMT=kfmt)
    if kernel == "fwd":
        types = ["*fp32"] * 4 + ["*i32"] * 2 + ["i32"] * 6 + ["fp32"]
        consts = dict(geo, PAD=1, REFLECT=True, HAS_BIAS=True, ACT=True, BLOCK_P=cfg.block_p_fwd, BLOCK_J=cfg.block_j)
        return S.sparse_conv2d_fwd_kernel, types, consts, cfg.num_warps
    if kernel == "dgrad":
        types = ["*fp32"] * 3 + ["*i32"] * 3 + ["i32"] * 6
        consts = dict(geo, BLOCK_P=cfg.block_p_dgrad, BLOCK_J=cfg.block_j)
        return S.sparse_conv2d_dgrad_kernel, types, consts, cfg.num_warps
    if kernel == "wgrad":
        types = ["*fp32"] * 3 + ["*i32"] * 2 + ["i32"] * 8
        consts = dict(geo, PAD=1, REFLECT=True, ATOMIC=cfg.wgrad_atomic, BLOCK_P=cfg.block_p_wgrad, BLOCK_J=cfg.block_j)
        return S.sparse_conv2d_wgrad_kernel, types, consts, cfg.num_warps
    raise ValueError(kernel)


def compile_sm90(kernel: str, fmt: str, stride: int, cfg) -> bytes:
    """The cubin of one kernel variant for sm_90 (raises if Triton or ptxas cannot build it)."""
    # triton loads only to compile (the script's report and --help run without it)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("kernel_sass compiles real kernels: run it without TRITON_INTERPRET=1")
    fn, types, consts, num_warps = kernel_specs(kernel, fmt, stride, cfg)
    sig = dict(zip(fn.arg_names, types + ["constexpr"] * len(consts), strict=True))
    k = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    return k.asm["cubin"]


def report(configs, kernels=("fwd", "dgrad", "wgrad"), formats=("csr", "kernel"), strides=(1, 2)) -> list[dict]:
    rows = []
    for cfg in configs:
        for kernel in kernels:
            for fmt in formats:
                for stride in strides:
                    cubin = compile_sm90(kernel, fmt, stride, cfg)
                    rows.append(sass_row(kernel, fmt, stride, cfg, cubin, hot_loop(cubin)))
    return rows


def print_rows(rows: list[dict]) -> None:
    head = f"{'kernel':<6} {'fmt':<6} {'s':>1} {'config':<24} {'regs':>4} {'spill':>5} {'warps':>5} "
    print(head + f"{'loop ins':>8} {'mul':>4} {'ldg':>4} {'int':>4} {'ins/mul':>7} {'fp share':>8}")
    for r in rows:
        h = r["hot_loop"]
        print(
            f"{r['kernel']:<6} {r['format']:<6} {r['stride']:>1} {r['config']:<24} {r['registers']:>4} "
            f"{r['spill_bytes']:>5} {r['warps_per_sm']:>5} {h['instructions']:>8} {h['multiplies']:>4} "
            f"{h['global_loads']:>4} {h['integer']:>4} {h['instructions_per_multiply'] or 0:>7.2f} "
            f"{h['fp_issue_share']:>8.1%}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    ap = parser("lipdeploy.bench.gpu.kernel_sass", __doc__)
    ap.add_argument("--grid", action="store_true", help="every config of kernels.sparse_conv.config_grid (slow)")
    ap.add_argument("--kernels", nargs="+", default=["fwd", "dgrad", "wgrad"], choices=["fwd", "dgrad", "wgrad"])
    ap.add_argument("--formats", nargs="+", default=["csr", "kernel"], choices=["csr", "kernel"])
    ap.add_argument("--strides", nargs="+", type=int, default=[1, 2], choices=[1, 2])
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("kernel_sass: unset TRITON_INTERPRET (it compiles the real kernels; nothing runs)", file=sys.stderr)
        return 2
    import torch  # here, not at the top: importing the kernels imports triton (start-up time)

    from lipdeploy.kernels.sparse_conv import config_grid, default_config

    cuda = torch.device("cuda")
    configs = config_grid(cuda) if args.grid else [default_config(64 * 64, cuda), default_config(256 * 256, cuda)]
    configs = list(dict.fromkeys(configs))
    results = Results(args.output, script_environment(target="sm_90 (compiled offline, nothing run)"))
    rows = report(configs, args.kernels, args.formats, args.strides)
    print_rows(rows)
    results.rows.extend(rows)
    # the bsr tensor-core kernels (MMA counts, registers, spills)
    bsr_rows = bsr_report(args.kernels, args.strides)
    print_bsr_rows(bsr_rows)
    results.rows.extend(bsr_rows)
    results.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())

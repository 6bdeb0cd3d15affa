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

import collections
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from ..script import Results, parser, script_environment

REGS_PER_SM = 65536
MAX_WARPS_PER_SM = 64
REG_ALLOC_UNIT = 256  # registers are allocated per warp in units of 256

_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)(.*?);")
_FP = ("FFMA", "FMUL", "FADD", "FMNMX")
_INT = ("IMAD", "IADD", "LEA", "SHF", "ISETP", "LOP", "VIADD", "SEL", "IABS", "IMNMX", "VIMNMX", "PRMT", "SGXT")


def _cuobjdump_path() -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")


def kernel_specs(kernel: str, fmt: str, stride: int, cfg) -> tuple[object, list[str], dict, int]:
    """(jit function, argument types, constexprs, num_warps) of one kernel variant, as the host wrappers launch it."""
    from lipdeploy.kernels import sparse_conv as S

    kfmt = fmt == "kernel"
    geo = dict(STRIDE=stride, KH=3, KW=3, KERNEL_FMT=kfmt)
    if kernel == "fwd":
        types = ["*fp32"] * 4 + ["*i32"] * 2 + ["i32"] * 6 + ["fp32"]
        consts = dict(geo, PAD=1, REFLECT=True, HAS_BIAS=True, ACT=True, BLOCK_P=cfg.block_p_fwd, BLOCK_J=cfg.block_j)
        return S._sparse_conv2d_fwd_kernel, types, consts, cfg.num_warps
    if kernel == "dgrad":
        types = ["*fp32"] * 3 + ["*i32"] * 3 + ["i32"] * 6
        consts = dict(geo, BLOCK_P=cfg.block_p_dgrad, BLOCK_J=cfg.block_j)
        return S._sparse_conv2d_dgrad_kernel, types, consts, cfg.num_warps
    if kernel == "wgrad":
        types = ["*fp32"] * 3 + ["*i32"] * 2 + ["i32"] * 8
        consts = dict(geo, PAD=1, REFLECT=True, ATOMIC=cfg.wgrad_atomic, BLOCK_P=cfg.block_p_wgrad, BLOCK_J=cfg.block_j)
        return S._sparse_conv2d_wgrad_kernel, types, consts, cfg.num_warps
    raise ValueError(kernel)


def compile_sm90(kernel: str, fmt: str, stride: int, cfg) -> bytes:
    """The cubin of one kernel variant for sm_90 (raises if Triton or ptxas cannot build it)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("kernel_sass compiles real kernels: run it without TRITON_INTERPRET=1")
    fn, types, consts, num_warps = kernel_specs(kernel, fmt, stride, cfg)
    sig = dict(zip(fn.arg_names, types + ["constexpr"] * len(consts), strict=True))
    k = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    return k.asm["cubin"]


def _cuobjdump(cubin: bytes, flag: str) -> str:
    tool = _cuobjdump_path()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        Path(path).write_bytes(cubin)
        return subprocess.run([tool, flag, path], capture_output=True, text=True, check=True).stdout


def resources(cubin: bytes, num_warps: int) -> dict:
    """Registers, spills (local memory bytes), shared memory and resident warps per SM."""
    text = _cuobjdump(cubin, "-res-usage")
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", text)
    if not m:
        raise RuntimeError(f"cuobjdump printed no resource usage:\n{text[-500:]}")
    regs, _, shared, local = (int(v) for v in m.groups())
    per_warp = -(-regs * 32 // REG_ALLOC_UNIT) * REG_ALLOC_UNIT
    blocks = min(32, REGS_PER_SM // (per_warp * num_warps), MAX_WARPS_PER_SM // num_warps)
    return {"registers": regs, "spill_bytes": local, "shared_bytes": shared, "warps_per_sm": blocks * num_warps}


def sass_instructions(cubin: bytes) -> list[tuple[int, str, str]]:
    """(address, opcode, operands) of every SASS instruction."""
    return [(int(a, 16), op, rest) for a, op, rest in _LINE.findall(_cuobjdump(cubin, "-sass"))]


def _mix(body: list[tuple[int, str, str]]) -> dict:
    ops = collections.Counter(op.split(".")[0] for _, op, _ in body)
    fp = sum(ops[o] for o in _FP)
    ldg = ops["LDG"]
    integer = sum(n for o, n in ops.items() if o.startswith(_INT))
    muls = ops["FFMA"] + ops["FMUL"]  # one per (nonzero, pixel) product; FADDs of reductions are not work
    return {
        "instructions": len(body),
        "fp": fp,
        "ffma": ops["FFMA"],
        "multiplies": muls,
        "instructions_per_multiply": round(len(body) / muls, 2) if muls else None,
        "global_loads": ldg,
        "integer": integer,
        "instructions_per_fp": round(len(body) / fp, 2) if fp else None,
        "fp_issue_share": round(fp / len(body), 3) if body else 0.0,
    }


def inner_loops(ins: list) -> list[tuple[int, int]]:
    """(start, end) addresses of the innermost loops of ``sass_instructions``' output (loops = backward branches)."""
    loops = []
    for addr, op, rest in ins:
        if op.startswith("BRA"):
            m = re.search(r"0x([0-9a-f]+)", rest)
            if m and int(m.group(1), 16) < addr:
                loops.append((int(m.group(1), 16), addr))
    return [(a, b) for a, b in loops if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in loops)]


def sass_row(kernel: str, fmt: str, stride: int, cfg, cubin: bytes, loop: dict, **variant) -> dict:
    """One result row of a compiled kernel: what was compiled (``variant``: e.g. block and precision), its config,
    its resources and its hot loop (the rows of ``kernel_sass`` and ``bsr_sass`` share these keys)."""
    return {
        "kernel": kernel,
        "format": fmt,
        "stride": stride,
        **variant,
        "config": cfg.tag,
        **asdict(cfg),
        **resources(cubin, cfg.num_warps),
        "hot_loop": loop,
    }


def hot_loop(cubin: bytes) -> dict:
    """Instruction mix of the innermost loop with the most FP instructions (loops = backward branches)."""
    ins = sass_instructions(cubin)
    inner = inner_loops(ins)
    if not inner:
        return {**_mix([]), "loops": 0}
    bodies = [[i for i in ins if a <= i[0] <= b] for a, b in inner]
    best = max(bodies, key=lambda body: _mix(body)["fp"])
    return {**_mix(best), "loops": len(inner)}


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
    import torch

    from lipdeploy.kernels.sparse_conv import config_grid, default_config

    cuda = torch.device("cuda")
    configs = config_grid(cuda) if args.grid else [default_config(64 * 64, cuda), default_config(256 * 256, cuda)]
    configs = list(dict.fromkeys(configs))
    results = Results(args.output, script_environment(target="sm_90 (compiled offline, nothing run)"))
    rows = report(configs, args.kernels, args.formats, args.strides)
    print_rows(rows)
    results.rows.extend(rows)
    # the bsr tensor-core kernels (MMA counts, registers, spills); imported here: bsr_sass builds on this module
    from .bsr_sass import bsr_report, print_bsr_rows

    bsr_rows = bsr_report(args.kernels, args.strides)
    print_bsr_rows(bsr_rows)
    results.rows.extend(bsr_rows)
    results.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Static sm_90 report of the block-sparse ("bsr") tensor-core kernels, without a GPU.

``python -m lipdeploy.bench.gpu.bsr_sass [-o rows.json]`` (run without ``TRITON_INTERPRET``); ``kernel_sass`` appends
the same rows to bench/results/kernel_sass_sm90.json.

Each kernel of ``kernels/bsr_conv.py`` (forward, input grad, weight grad) x stride x block shape x precision is compiled
for sm_90 with Triton's bundled ptxas (nothing runs) and its cubin read with the bundled ``cuobjdump``
(``kernel_sass.resources`` / ``sass_instructions``): registers, spills, shared memory, resident warps, and the hot loop
(the innermost loop with the most tensor-core instructions): HGMMA (Hopper's warpgroup wgmma), HMMA (mma.sync), the
warpgroup syncs around the wgmma, global loads (LDG; LDGSTS where Triton software-pipelined the loop into
asynchronous global-to-shared copies, as in the weight grad) and the loop's total instruction count.

Why it matters: the point of the bsr kernels is that their inner loop is tensor-core MMAs and not CUDA-core FMAs (the
csr/kernel formats' bound: one FMA per gathered load). A silent fallback -- Triton lowering a ``tl.dot`` to FMAs
because a shape, layout or dtype does not fit an MMA -- would keep every test green and lose the 8-16x; this report,
and tests/test_bsr_compile.py which guards it, read the fact off the machine code.
"""

from __future__ import annotations

import collections
import os
import sys

from ..script import Results, parser, script_environment
from .sass import inner_loops, mix, sass_instructions, sass_row

MMA_OPS = ("HGMMA", "HMMA")

# the block shapes of block tickets, and the precisions at the default block
BLOCKS = ((16, 16), (32, 16), (16, 8))
PRECISIONS = ("tf32", "bf16", "tf32x3", "ieee")


def bsr_kernel_specs(kernel: str, stride: int, block: tuple[int, int], precision: str, cfg):
    """(jit function, argument types, constexprs, num_warps) of one bsr kernel variant, as the host wrappers launch
    it for a 3x3 reflection-padded conv (the DIP's), bias and BatchNorm statistics on."""
    from lipdeploy.kernels import bsr_conv as K  # imports triton: only when compiling

    bo, bi = block
    common = dict(BO=bo, BI=bi, PRECISION=precision, EMULATE_BF16=False)
    if kernel == "fwd":
        types = ["*fp32"] * 5 + ["*i32"] * 4 + ["i32"] * 7
        consts = dict(STRIDE=stride, PAD=1, REFLECT=True, KH=3, KW=3, HAS_BIAS=True, STATS=True, **common)
        return K.bsr_conv2d_fwd_kernel, types, dict(consts, BLOCK_P=cfg.block_p_fwd), cfg.num_warps
    if kernel == "dgrad":
        types = ["*fp32"] * 3 + ["*i32"] * 4 + ["i32"] * 6
        consts = dict(STRIDE=stride, KH=3, KW=3, **common)
        return K.bsr_conv2d_dgrad_kernel, types, dict(consts, BLOCK_P=cfg.block_p_dgrad), cfg.num_warps
    if kernel == "wgrad":
        types = ["*fp32"] * 3 + ["*i32"] * 3 + ["i32"] * 9
        consts = dict(STRIDE=stride, PAD=1, REFLECT=True, KW=3, **common)
        return K.bsr_conv2d_wgrad_kernel, types, dict(consts, BLOCK_P=cfg.block_p_wgrad), cfg.num_warps
    raise ValueError(f"unknown bsr kernel {kernel!r}")


def compile_bsr_sm90(kernel: str, stride: int, block: tuple[int, int], precision: str, cfg) -> bytes:
    """The cubin of one bsr kernel variant for sm_90 (raises if Triton or ptxas cannot build it)."""
    # triton loads only to compile (the script's report and --help run without it)
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("bsr_sass compiles real kernels: run it without TRITON_INTERPRET=1")
    fn, types, consts, num_warps = bsr_kernel_specs(kernel, stride, block, precision, cfg)
    sig = dict(zip(fn.arg_names, types + ["constexpr"] * len(consts), strict=True))
    k = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    return k.asm["cubin"]


def mma_loop(cubin: bytes) -> dict:
    """The innermost loop (a backward branch with no loop inside) with the most tensor-core instructions: its
    instruction mix (``sass.mix``: instructions, FP, global loads, integer) plus HGMMA / HMMA counts and
    warpgroup syncs; and the whole kernel's MMA counts (``kernel_hgmma`` / ``kernel_hmma``)."""
    ins = sass_instructions(cubin)
    inner = inner_loops(ins)

    def counts(body):
        ops = collections.Counter(op.split(".")[0] for _, op, _ in body)
        return {
            "hgmma": ops["HGMMA"],
            "hmma": ops["HMMA"],
            "warpgroup_syncs": ops["WARPGROUP"] + ops["WARPSYNC"],
            "shared_stores": ops["STS"],
            "async_copies": ops["LDGSTS"],  # global -> shared loads of a software-pipelined loop (the weight grad)
        }

    whole = counts(ins)
    bodies = [[i for i in ins if a <= i[0] <= b] for a, b in inner] or [[]]
    best = max(bodies, key=lambda body: (counts(body)["hgmma"] + counts(body)["hmma"], mix(body)["fp"]))
    return {
        **mix(best),
        **counts(best),
        "loops": len(inner),
        "kernel_hgmma": whole["hgmma"],
        "kernel_hmma": whole["hmma"],
    }


def bsr_report(kernels=("fwd", "dgrad", "wgrad"), strides=(1, 2), blocks=BLOCKS, precisions=PRECISIONS) -> list[dict]:
    """Rows for every kernel x stride x block at TF32 (the default), and every precision at 16x16 blocks, stride 1,
    with the GPU default config (128-pixel tiles, 4 warps). Rows carry the keys of ``kernel_sass.report``'s rows
    (format ``"bsr"``) plus ``block``, ``precision`` and the MMA counts in ``hot_loop``."""
    import torch  # here, not at the top: importing the kernels imports triton (start-up time)

    from lipdeploy.kernels.bsr_conv import default_bsr_config

    cfg = default_bsr_config(256 * 256, torch.device("cuda"))
    variants = [(k, s, b, "tf32") for k in kernels for s in strides for b in blocks]
    variants += [(k, 1, (16, 16), p) for k in kernels for p in precisions if p != "tf32" and 1 in strides]
    rows = []
    for kernel, stride, block, precision in variants:
        cubin = compile_bsr_sm90(kernel, stride, block, precision, cfg)
        loop = mma_loop(cubin)
        # useful multiply-adds of one pass through the hot loop: a run with all 9 taps kept (forward, input grad) or
        # one pixel tile (weight grad), per warp instruction issued for it; the csr kernels' counterpart is
        # 32 / instructions_per_multiply (32 lanes, one FMA each): 6.0 at their 5.3 instructions per multiply
        tile = (
            cfg.block_p_wgrad if kernel == "wgrad" else 9 * (cfg.block_p_fwd if kernel == "fwd" else cfg.block_p_dgrad)
        )
        macs = tile * block[0] * block[1]
        issued = loop["instructions"] * cfg.num_warps
        loop["macs_per_warp_instruction"] = round(macs / issued, 1) if issued else None
        variant = {"block": f"{block[0]}x{block[1]}", "precision": precision}
        rows.append(sass_row(kernel, "bsr", stride, cfg, cubin, loop, **variant))
    return rows


def print_bsr_rows(rows: list[dict]) -> None:
    head = f"{'kernel':<6} {'s':>1} {'block':<6} {'prec':<7} {'regs':>4} {'spill':>5} {'warps':>5} "
    print(head + f"{'loop ins':>8} {'HGMMA':>5} {'HMMA':>5} {'ldg':>4} {'FP':>4} {'MAC/ins':>7}")
    for r in rows:
        h = r["hot_loop"]
        print(
            f"{r['kernel']:<6} {r['stride']:>1} {r['block']:<6} {r['precision']:<7} {r['registers']:>4} "
            f"{r['spill_bytes']:>5} {r['warps_per_sm']:>5} {h['instructions']:>8} {h['hgmma']:>5} {h['hmma']:>5} "
            f"{h['global_loads'] + h['async_copies']:>4} {h['fp']:>4} {h['macs_per_warp_instruction'] or 0:>7.1f}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    args = parser("lipdeploy.bench.gpu.bsr_sass", __doc__).parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("bsr_sass: unset TRITON_INTERPRET (it compiles the real kernels; nothing runs)", file=sys.stderr)
        return 2
    results = Results(args.output, script_environment(target="sm_90 (compiled offline, nothing run)"))
    rows = bsr_report()
    print_bsr_rows(rows)
    results.rows.extend(rows)
    results.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())

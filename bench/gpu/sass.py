"""Reading SASS offline: resources, instruction mix and hot loops of a cubin compiled for sm_90 (no GPU needed).

Shared by :mod:`.kernel_sass` (the CUDA-core csr/kernel-format kernels) and :mod:`.bsr_sass` (the tensor-core bsr
kernels); see kernel_sass's docstring for why instruction counts matter.
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import tempfile
from dataclasses import asdict
from pathlib import Path

REGS_PER_SM = 65536
MAX_WARPS_PER_SM = 64
REG_ALLOC_UNIT = 256  # registers are allocated per warp in units of 256

_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)(.*?);")
_FP = ("FFMA", "FMUL", "FADD", "FMNMX")
_INT = ("IMAD", "IADD", "LEA", "SHF", "ISETP", "LOP", "VIADD", "SEL", "IABS", "IMNMX", "VIMNMX", "PRMT", "SGXT")


def cuobjdump_path() -> str:
    import triton  # only where SASS is read: the module's parsers run without triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")


def _cuobjdump(cubin: bytes, flag: str) -> str:
    tool = cuobjdump_path()
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


def mix(body: list[tuple[int, str, str]]) -> dict:
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
        return {**mix([]), "loops": 0}
    bodies = [[i for i in ins if a <= i[0] <= b] for a, b in inner]
    best = max(bodies, key=lambda body: mix(body)["fp"])
    return {**mix(best), "loops": len(inner)}

"""The Triton kernels compile for an H100 (sm_90) without a GPU: Triton's bundled ptxas, no interpreter, no launch."""

import os
import subprocess
import sys

import pytest

CODE = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import lipdeploy.kernels.sparse_conv as S

T = GPUTarget("cuda", 90, 32)


def comp(fn, types, consts, num_warps=4):
    sig = dict(zip(fn.arg_names, types + ["constexpr"] * len(consts)))
    k = triton.compile(ASTSource(fn, sig, consts), target=T, options={"num_warps": num_warps})
    assert k.asm["cubin"], fn


geo = dict(KH=3, KW=3, STRIDE=2)
for kfmt in (False, True):
    comp(S._sparse_conv2d_fwd_kernel, ["*fp32"] * 4 + ["*i32"] * 2 + ["i32"] * 6 + ["fp32"],
         dict(STRIDE=2, PAD=1, REFLECT=True, KH=3, KW=3, KERNEL_FMT=kfmt, HAS_BIAS=True, ACT=True, BLOCK_P=256,
              BLOCK_J=8))
    comp(S._sparse_conv2d_dgrad_kernel, ["*fp32"] * 3 + ["*i32"] * 3 + ["i32"] * 6,
         dict(STRIDE=2, KH=3, KW=3, KERNEL_FMT=kfmt, BLOCK_P=256, BLOCK_J=8))
    comp(S._sparse_conv2d_wgrad_kernel, ["*fp32"] * 3 + ["*i32"] * 2 + ["i32"] * 8,
         dict(STRIDE=2, PAD=1, REFLECT=True, KH=3, KW=3, KERNEL_FMT=kfmt, ATOMIC=kfmt, BLOCK_P=512, BLOCK_J=8))
print("COMPILED")
"""


def test_kernels_compile_for_sm90():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env, timeout=300)
    if r.returncode != 0 and ("ptxas" in r.stderr.lower() and "not found" in r.stderr.lower()):
        pytest.skip("no ptxas available for an offline sm_90 compile")
    assert r.returncode == 0 and "COMPILED" in r.stdout, r.stderr[-3000:]


SASS_CODE = r"""
import json, sys
import torch
from lipdeploy.bench.kernel_sass import report
from lipdeploy.kernels.sparse_conv import default_config
rows = report([default_config(256 * 256, torch.device("cuda"))], ("fwd", "dgrad", "wgrad"), ("csr",), (1, 2))
print(json.dumps(rows))
"""


def test_default_configs_compile_without_spills_and_a_lean_hot_loop():
    """Static sm_90 facts of the 256x256 default config (kernel_sass; no GPU): no register spills, every kernel has
    its gather loops, and the hot loops stay under 7 (forward, input grad) and 10 (weight grad) SASS instructions per
    multiply (5.3, 5.8, 7.7 with Triton 3.9; the kernels before this bound issued 11.6, 12.1 and 12.5 -- see
    bench/results/kernel_sass_sm90*.json)."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", SASS_CODE], capture_output=True, text=True, env=env, timeout=300)
    if r.returncode != 0 and ("ptxas" in r.stderr.lower() or "cuobjdump" in r.stderr.lower()):
        pytest.skip("no bundled ptxas / cuobjdump for an offline sm_90 report")
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    rows = json.loads(r.stdout.strip().splitlines()[-1])
    want = {(k, s) for k in ("fwd", "dgrad", "wgrad") for s in (1, 2)}
    assert {(row["kernel"], row["stride"]) for row in rows} == want
    for row in rows:
        loop = row["hot_loop"]
        assert row["spill_bytes"] == 0 and row["registers"] <= 255, row
        assert loop["loops"] >= 9 and loop["fp"] > 0 and loop["global_loads"] > 0, row  # one gather loop per tap
        assert loop["instructions_per_multiply"] < (10.0 if row["kernel"] == "wgrad" else 7.0), row

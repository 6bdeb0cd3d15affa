"""The Triton kernels compile for an H100 (sm_90) without a GPU: Triton's bundled ptxas, no interpreter, no launch."""

import os
import subprocess
import sys

import pytest

CODE = r"""
from lipdeploy.bench.gpu.kernel_sass import compile_sm90
from lipdeploy.kernels.sparse_conv import KernelConfig

for fmt in ("csr", "kernel"):
    cfg = KernelConfig(256, 256, 512, num_warps=4, wgrad_atomic=fmt == "kernel", block_j=8)
    for kernel in ("fwd", "dgrad", "wgrad"):
        assert compile_sm90(kernel, fmt, 2, cfg), (kernel, fmt)
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
from lipdeploy.bench.gpu.kernel_sass import report
from lipdeploy.kernels.sparse_conv import KernelConfig, default_config
lean = KernelConfig(1024, 1024, 1024, num_warps=4, block_j=2)  # 8 pixels per thread: the fewest instructions
configs = list(dict.fromkeys([default_config(256 * 256, torch.device("cuda")), lean]))
rows = report(configs, ("fwd", "dgrad", "wgrad"), ("csr",), (1, 2))
print(json.dumps(rows))
"""
LEAN = "p1024-1024-1024.j2.w4"


def test_default_configs_compile_without_spills_and_a_lean_hot_loop():
    """Static sm_90 facts (kernel_sass; no GPU): the 256x256 default config and the 8-pixel-per-thread config compile
    without register spills and with their gather loops; the 8-pixel config's hot loops stay under 7 (forward, input
    grad) and 10 (weight grad) SASS instructions per multiply (5.3, 5.8, 7.7 with Triton 3.9; the kernels before this
    bound issued 11.6, 12.1 and 12.5 -- see bench/results/kernel_sass_sm90*.json). It guards the kernels' code, not
    the default: the H100 timed the 2-pixel default (8.5 per multiply in the forward) 11-14% faster."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", SASS_CODE], capture_output=True, text=True, env=env, timeout=300)
    if r.returncode != 0 and ("ptxas" in r.stderr.lower() or "cuobjdump" in r.stderr.lower()):
        pytest.skip("no bundled ptxas / cuobjdump for an offline sm_90 report")
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    rows = json.loads(r.stdout.strip().splitlines()[-1])
    want = {(k, s) for k in ("fwd", "dgrad", "wgrad") for s in (1, 2)}
    for config in {row["config"] for row in rows}:
        assert {(row["kernel"], row["stride"]) for row in rows if row["config"] == config} == want, config
    assert LEAN in {row["config"] for row in rows}
    for row in rows:
        loop = row["hot_loop"]
        assert row["spill_bytes"] == 0 and row["registers"] <= 255, row
        assert loop["loops"] >= 9 and loop["fp"] > 0 and loop["global_loads"] > 0, row  # one gather loop per tap
        if row["config"] == LEAN:
            assert loop["instructions_per_multiply"] < (10.0 if row["kernel"] == "wgrad" else 7.0), row

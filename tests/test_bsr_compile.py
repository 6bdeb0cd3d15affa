"""The bsr kernels' hot loops run on tensor cores on an H100 (sm_90): compiled offline with Triton's bundled ptxas and
read with its cuobjdump (bench/gpu/bsr_sass.py; no GPU, no interpreter, nothing launched).

A ``tl.dot`` that Triton cannot map onto an MMA (a shape, layout or dtype that does not fit) silently becomes CUDA-core
FMAs: every numerical test stays green and the speed is gone. This guards the machine code instead.
"""

import json
import os
import subprocess
import sys

import pytest

CODE = r"""
import json
from lipdeploy.bench.gpu.bsr_sass import bsr_report
rows = bsr_report(("fwd", "dgrad", "wgrad"), (2,), blocks=((16, 16), (16, 8)), precisions=())
rows += bsr_report(("fwd",), (1,), blocks=(), precisions=("bf16",))
print(json.dumps(rows))
"""


def test_bsr_hot_loops_use_tensor_cores_without_spills():
    """Default GPU config (128-pixel tiles, 4 warps), 3x3 reflection-padded conv, TF32 (and bf16 for the forward).

    Forward and input grad put the pixel tile on the MMA's M side (M = 128), so they must compile to Hopper's wgmma
    (HGMMA): 4 per tap at 16x16 tf32 blocks, one loop over runs with all 9 taps unrolled (36 measured with Triton
    3.9). The weight grad's MMA is Bo x Bi (M = 16): mma.sync (HMMA). No FP32 FMA may remain in a hot loop (the
    fallback), and nothing spills (80 / 92 / 92 registers measured for forward / input grad / weight grad at 16x16).
    """
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env, timeout=600)
    if r.returncode != 0 and ("ptxas" in r.stderr.lower() or "cuobjdump" in r.stderr.lower()):
        pytest.skip("no bundled ptxas / cuobjdump for an offline sm_90 compile")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(rows) == 7
    for row in rows:
        loop = row["hot_loop"]
        what = (row["kernel"], row["stride"], row["block"], row["precision"])
        assert row["spill_bytes"] == 0 and row["registers"] <= 255, (what, row)
        assert loop["ffma"] == 0, (what, "FP32 FMAs in the hot loop: tl.dot fell back to CUDA cores", loop)
        if row["kernel"] in ("fwd", "dgrad"):
            # one wgmma group per kept tap at least, all 9 taps in the loop over runs
            assert loop["hgmma"] >= 9 and loop["hmma"] == 0, (what, loop)
            assert loop["global_loads"] > 0, (what, loop)  # the gathers are in the loop, not hoisted
        else:
            assert loop["hmma"] > 0, (what, loop)
            assert loop["global_loads"] + loop["async_copies"] > 0, (what, loop)

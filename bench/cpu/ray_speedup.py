"""Ray executor speedup on one machine: the same job set on a local Ray instance of 1 and of 2 CPUs, one run.

    OMP_NUM_THREADS=1 python -m lipdeploy.bench.cpu.ray_speedup [--iters 200] [-o bench/results/ray_speedup.json]

The jobs: the cpu preset's dense DIP and deep decoder fits of its three images (``quality/dense/*``,
``quality/dd-k128/*``, ``quality/dd-k64/*``: 9 fits, one torch thread each), shortened to ``--iters``. Wall time
includes Ray's start-up. Each run writes into a fresh temporary folder; the PSNRs of both runs are compared (fits are
seeded and deterministic on CPU, so they must be equal). Needs the ``ray`` extra.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from fnmatch import fnmatchcase
from pathlib import Path

import torch

from ..harness import Bench
from ..harness.executor import RayExecutor
from ..harness.presets import get_preset
from ..rows import RowStore
from ..script import Results, parser, script_environment

PATTERNS = ("quality/dense/*", "quality/dd-k128/*", "quality/dd-k64/*")


def main(argv: list[str] | None = None) -> int:
    ap = parser("lipdeploy.bench.cpu.ray_speedup", __doc__)
    ap.add_argument("--iters", type=int, default=200, help="iterations per fit")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="local Ray CPUs per run")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    preset = get_preset("cpu").replace(iters=args.iters)
    results = Results(args.output, script_environment(script="ray_speedup", iters=args.iters, jobs=list(PATTERNS)))
    psnrs = {}
    for workers in args.workers:
        with tempfile.TemporaryDirectory() as tmp:
            load = os.getloadavg()
            t0 = time.perf_counter()
            bench = Bench(preset, Path(tmp), runners=["torch-cpu"], executor=RayExecutor(local_cpus=workers))
            stats = bench.run(progress=False, only=lambda job: any(fnmatchcase(job.key, p) for p in PATTERNS))
            wall = time.perf_counter() - t0
            rows, _ = RowStore.read_all(Path(tmp))
            psnrs[workers] = sorted((r["job"], r["value"]) for r in rows if r.get("metric") == "psnr_best")
        results.add(
            {"workers": workers, "wall_s": round(wall, 1), "ran": stats.ran, "failed": len(stats.failed),
             "loadavg_before": [round(x, 2) for x in load], "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
        )  # fmt: skip
        print(f"{workers} worker(s): {wall:.1f} s, {stats.ran} jobs", flush=True)
    base = results.rows[0]["wall_s"]
    speedup = {str(r["workers"]): round(base / r["wall_s"], 2) for r in results.rows}
    same = len({tuple(v) for v in psnrs.values()}) == 1
    results.finish(speedup_vs_first=speedup, identical_psnrs=same)
    print(f"speedup vs {args.workers[0]} worker(s): {speedup}; identical PSNRs: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

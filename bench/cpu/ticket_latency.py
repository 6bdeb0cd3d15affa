"""ONNX Runtime CPU latency of given tickets' exports, against the first one (the dense baseline), in one run.

    python -m lipdeploy.bench.cpu.ticket_latency DENSE.pt TICKET.pt ... [--size 128] [--threads 2] [--rounds 30]
        [-o results.json]

Each ticket is exported as ``lipdeploy export`` does (exact compaction, dense weight storage: ONNX Runtime densifies
sparse initializers anyway) into a temporary folder; the sessions are timed in alternation (round-robin, so background
load hits all alike) on the same noise input, and each row gives the median with min / quartiles / max and the
ratio dense median / ticket median (> 1: faster than dense). Rows also record density, kept parameters after
compaction and the load average, since only ratios measured in one quiet run mean anything.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from lipdeploy.errors import InputError
from lipdeploy.export import export_onnx, ort_session
from lipdeploy.networks import make_input
from lipdeploy.ticket import load_ticket

from ..script import Results, parser, refuse, script_environment
from .edge_latency import session_times


def main(argv: list[str] | None = None) -> int:
    ap = parser("lipdeploy.bench.cpu.ticket_latency", __doc__)
    ap.add_argument("tickets", nargs="+", type=Path, help="ticket files; the first is the baseline (dense)")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args(argv)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "output"}
    settings["tickets"] = [str(t) for t in args.tickets]
    results = Results(args.output, script_environment(script="ticket_latency", **settings))
    sessions, feeds, info = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, path in enumerate(args.tickets):
            try:
                ticket = load_ticket(path)
            except InputError as exc:
                return refuse(f"error: {exc}")
            name = f"{i}:{path.parent.name}/{path.stem}"
            model = Path(tmp) / f"m{i}.onnx"
            summary = export_onnx(ticket, model, weights_format="dense", test_size=(args.size, args.size))
            # round-robin: spinning workers of the idle sessions would steal the cores (see ort_session)
            sessions[name] = ort_session(model, threads=args.threads, spin=False)
            x = make_input(ticket.arch, args.size, args.size, seed=0).numpy().astype(np.float32)
            feeds[name] = {sessions[name].get_inputs()[0].name: x}
            info[name] = {"ticket": str(path), "density": round(ticket.density, 6), "onnx_bytes": summary.file_bytes}
        load = os.getloadavg()
        times = session_times(sessions, feeds, args.warmup, args.rounds)
    base = statistics.median(times[next(iter(times))])
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=4)
        med = statistics.median(ts)
        results.add(
            {**info[name], "name": name, "median_ms": round(med, 3), "min_ms": round(min(ts), 3),
             "q1_ms": round(q[0], 3), "q3_ms": round(q[2], 3), "max_ms": round(max(ts), 3),
             "speedup_vs_first": round(base / med, 3), "loadavg_start": [round(v, 2) for v in load]}
        )  # fmt: skip
        print(f"{name:40s} density {info[name]['density']:.3f}  {med:8.2f} ms  x{base / med:.2f} vs first")
    results.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())

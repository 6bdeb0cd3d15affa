"""Edge latency of exported tickets: ONNX Runtime, CPU, 2 threads (``python -m lipdeploy.bench.cpu.edge_latency``).

For the paper's DIP network (or ``--quick``: a small skip net) it builds, from one random initialisation:

- ``dense``: the unpruned network (the baseline every ratio divides by);
- ``imp-unstructured-90``: global L1 magnitude pruning of the init weights to 90% sparsity (how one IMP round prunes;
  the masks are made here directly, no fitting);
- ``kernel-90``: whole (output, input) 3x3 kernels pruned by IMP's kernel scores (mean |w|), 90% of the kernels of
  every 3x3 conv (1x1 convs pruned unstructured to 90%, where a kernel is one weight);
- ``channel-50``: 50% of the output channels of every conv but the image conv, pruned by IMP's channel scores.

The masks come from the patterns' one-shot magnitude pruning (:mod:`lipdeploy.patterns`). The committed results were
measured with per-layer L2-norm kernel and channel choices: the same densities (kernel-90 within one kernel per layer),
different kernels and channels kept.

Each is exported with :func:`lipdeploy.export.export_onnx` (compacted graph; dense fp32, sparse fp32, sparse fp16
files) and timed in ONNX Runtime (``intra_op_num_threads=2``, default graph optimisations) at each size: warm-up runs,
then rounds that alternate between all models (so machine load hits every model alike; worker spinning off, see
:func:`lipdeploy.export.ort_session`), median per model. Reported:
latency, speedup over dense, and the FLOP-fraction ideals: ``ideal_nonzero`` = dense conv FLOPs / nonzero conv FLOPs
(what a perfect sparse kernel would give) and ``ideal_compact`` = dense / compacted dense conv FLOPs (what removing
channels alone can give; ONNX Runtime has no sparse convolution, so this is the reachable bound for ORT).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from lipdeploy.analysis import layer_stats
from lipdeploy.compaction import analyze_compaction
from lipdeploy.export import export_onnx, ort_session
from lipdeploy.fileio import atomic_write_text
from lipdeploy.masks import Mask
from lipdeploy.networks import SkipSpec, conv_layers, make_input
from lipdeploy.patterns import PATTERNS
from lipdeploy.ticket import Ticket, ticket_from_model

from ..script import parser, script_environment

THREADS = 2


def make_tickets(spec: SkipSpec, seed: int = 0) -> dict[str, Ticket]:
    """The four compared tickets of one seeded initialisation (see the module docstring)."""
    torch.manual_seed(seed)
    model = spec.build()
    weights = {f"{n}.weight": c.weight.detach() for n, c in conv_layers(model).items()}
    image_conv = list(weights)[-1]
    # every conv but the image conv loses half its output channels; the image conv stays whole (its 3 colours)
    channel = PATTERNS["channel"].magnitude_masks(
        {n: w for n, w in weights.items() if n != image_conv}, 0.5, scope="layer", protect=()
    )
    channel[image_conv] = torch.ones_like(weights[image_conv])
    out = {"dense": ticket_from_model(model, spec, masks=Mask.ones_like(model), made_by="edge_latency: unpruned init")}
    for name, masks in [
        ("imp-unstructured-90", PATTERNS["unstructured"].magnitude_masks(weights, 0.9)),
        ("kernel-90", PATTERNS["kernel"].magnitude_masks(weights, 0.9, scope="layer", protect=())),
        ("channel-50", channel),
    ]:
        out[name] = ticket_from_model(model, spec, masks=masks, made_by=f"edge_latency: {name} pruning of init")
    return out


def _flops(ticket: Ticket, h: int, w: int, compact_macs: int | None) -> dict[str, float]:
    rows = layer_stats(ticket, h, w)
    dense = sum(r.flops_dense for r in rows)
    nonzero = sum(r.flops_nonzero for r in rows)
    return {"conv_gflops_dense": dense / 1e9, "conv_gflops_nonzero": nonzero / 1e9, "compact_macs": compact_macs}


def _compact_macs(ticket: Ticket, h: int, w: int) -> tuple[int, int]:
    rep = analyze_compaction(ticket, height=h, width=w)
    return rep.macs_before, rep.macs_after


def session_times(sessions: dict[str, Any], feeds: dict[str, dict], warmup: int, rounds: int) -> dict[str, list[float]]:
    """Per-run latencies (ms) per session after ``warmup`` runs; rounds alternate between sessions, so background
    load hits all alike."""
    for name, sess in sessions.items():
        for _ in range(warmup):
            sess.run(None, feeds[name])
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, sess in sessions.items():
            t = time.perf_counter()
            sess.run(None, feeds[name])
            times[name].append(1e3 * (time.perf_counter() - t))
    return times


def time_sessions(sessions: dict[str, Any], feeds: dict[str, dict], warmup: int, rounds: int) -> dict[str, float]:
    """Median latency (ms) per session (:func:`session_times`)."""
    return {name: statistics.median(v) for name, v in session_times(sessions, feeds, warmup, rounds).items()}


def run(spec: SkipSpec, sizes: list[int], warmup: int, rounds: int, workdir: Path) -> dict[str, Any]:
    tickets = make_tickets(spec)
    results: dict[str, Any] = {"tickets": {}, "latency": {}}
    paths: dict[str, Path] = {}
    for name, ticket in tickets.items():
        entry: dict[str, Any] = {"density": ticket.density, "made_by": ticket.provenance.get("made_by")}
        files = {}
        for label, kw in [
            ("dense_fp32", dict(weights_format="dense")),
            ("sparse_fp32", dict(weights_format="sparse")),
            ("sparse_fp16", dict(weights_format="sparse", dtype="fp16")),
        ]:
            path = workdir / f"{name}.{label}.onnx"
            s = export_onnx(ticket, path, force=True, **kw)
            files[label] = s.file_bytes
            if label == "sparse_fp32":
                entry["parity_max_abs"] = s.parity_max_abs
                entry["removed"] = s.removed.get("totals", {})
                paths[name] = path
        entry["file_bytes"] = files
        entry["file_ratio_vs_own_dense_fp32"] = {k: v / files["dense_fp32"] for k, v in files.items()}
        results["tickets"][name] = entry
    dense_file = results["tickets"]["dense"]["file_bytes"]["dense_fp32"]
    for entry in results["tickets"].values():
        entry["file_ratio_vs_unpruned_dense_fp32"] = {k: v / dense_file for k, v in entry["file_bytes"].items()}

    for size in sizes:
        # round-robin over 2-thread sessions: spinning workers of the idle ones would steal the cores (ort_session)
        sessions = {name: ort_session(str(p), threads=THREADS, spin=False) for name, p in paths.items()}
        feeds = {}
        for name, sess in sessions.items():
            code = make_input(spec, size, size, seed=0).numpy()
            feeds[name] = {sess.get_inputs()[0].name: code}
        med = time_sessions(sessions, feeds, warmup, rounds)
        rows = {}
        for name, ticket in tickets.items():
            before, after = _compact_macs(ticket, size, size)
            fl = _flops(ticket, size, size, after)
            ideal_nonzero = fl["conv_gflops_dense"] / max(fl["conv_gflops_nonzero"], 1e-12)
            dense_before, _ = _compact_macs(tickets["dense"], size, size)
            ideal_compact = dense_before / max(after, 1)
            speedup = med["dense"] / med[name]
            rows[name] = {
                "median_ms": med[name],
                "speedup_vs_dense": speedup,
                "ideal_nonzero": ideal_nonzero,
                "ideal_compact": ideal_compact,
                "achieved_over_ideal_compact": speedup / ideal_compact,
                "achieved_over_ideal_nonzero": speedup / ideal_nonzero,
                "conv_gflops_dense": fl["conv_gflops_dense"],
                "conv_gflops_nonzero": fl["conv_gflops_nonzero"],
                "compact_gmacs": after / 1e9,
            }
        results["latency"][f"{size}x{size}"] = rows
    return results


def print_table(res: dict[str, Any]) -> None:
    console = Console()
    t = Table(title="file sizes (ratio to the unpruned dense fp32 export)")
    for col in ("ticket", "density", "dense fp32", "sparse fp32", "sparse fp16", "parity"):
        t.add_column(col)
    for name, e in res["tickets"].items():
        r = e["file_ratio_vs_unpruned_dense_fp32"]
        b = e["file_bytes"]
        t.add_row(
            name,
            f"{e['density']:.3f}",
            f"{b['dense_fp32'] / 1e6:.2f} MB ({r['dense_fp32']:.3f})",
            f"{b['sparse_fp32'] / 1e6:.2f} MB ({r['sparse_fp32']:.3f})",
            f"{b['sparse_fp16'] / 1e6:.2f} MB ({r['sparse_fp16']:.3f})",
            f"{e['parity_max_abs']:.1e}",
        )
    console.print(t)
    for size, rows in res["latency"].items():
        t = Table(title=f"ONNX Runtime CPU, {THREADS} threads, {size}")
        for col in ("ticket", "median ms", "speedup", "ideal (compact)", "achieved/ideal", "ideal (nonzero)"):
            t.add_column(col)
        for name, r in rows.items():
            t.add_row(
                name,
                f"{r['median_ms']:.1f}",
                f"{r['speedup_vs_dense']:.2f}x",
                f"{r['ideal_compact']:.2f}x",
                f"{r['achieved_over_ideal_compact']:.2f}",
                f"{r['ideal_nonzero']:.2f}x",
            )
        console.print(t)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    default_out = Path(__file__).resolve().parents[1] / "results" / "edge_latency_cpu.json"
    quick = "small skip net instead of the paper's (smoke test)"
    p = parser("lipdeploy.bench.cpu.edge_latency", __doc__, output=default_out, quick=quick)
    p.add_argument("--sizes", default="128,256", help="square image sizes (multiples of 32)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    spec = (
        SkipSpec(in_channels=16, channels_down=(32,) * 5, channels_up=(32,) * 5, channels_skip=(4,) * 5)
        if args.quick
        else SkipSpec()
    )
    sizes = [int(s) for s in args.sizes.split(",")]
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        res = run(spec, sizes, args.warmup, args.rounds, Path(tmp))
    res["setup"] = script_environment(
        network=spec.describe(),
        threads=THREADS,
        warmup=args.warmup,
        rounds=args.rounds,
        wall_s=time.time() - t0,
        note="ratios measured in one run, rounds interleaved across models, ORT worker spinning off; sparse fp32 "
        "file timed (unpacked by ORT constant folding at load, as fast as the dense-format compacted file)",
    )
    print_table(res)
    # not a row list: one nested record (tickets' files, latency per size), written once at the end
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.output, json.dumps(res, indent=2, default=float) + "\n")
    print(f"wrote {args.output}")
    return res


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()

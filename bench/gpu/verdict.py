"""Issue 4's GPU targets, checked against the benchmark JSON of one GPU session (no GPU needed to read them).

``python -m lipdeploy.bench.gpu.verdict bench/results/gpu_session`` reads ``gpu_target_*.json``, ``gpu_tune_*.json``,
``gpu_layers_*.json`` (layer rows) and ``gpu_network_*.json`` (network rows) from that folder and prints, per card,
one line per target:

1. a 128 -> 128 3x3 layer at 256x256 and 90% sparsity runs >= 2.5x faster than dense (forward; the better of the two
   packing formats, per mask kind);
2. the whole fitting step at 90% sparsity runs >= 2x faster than dense (the ``auto`` dispatcher's network, per mask);
3. at 50% sparsity nothing is slower than dense (the ``auto`` network, forward and fitting step; a 3% allowance for
   timing noise, stated in the line).

Each line says PASS, FAIL or MISSING (the run did not reach that case) with the measured ratio, so a session with a
GPU turns its numbers into the issue's verdict, and the README's, in one command.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

NOISE = 0.97  # "not slower": a ratio >= 0.97 counts as a tie (do_bench medians of ~0.1-5 ms vary by ~1-3%)


def _rows(folder: Path, pattern: str) -> dict[str, list[dict]]:
    """Card name (from the file name) -> rows of every matching JSON file."""
    out: dict[str, list[dict]] = {}
    for path in sorted(folder.glob(pattern)):
        card = path.stem.split("_", 2)[-1]
        data = json.loads(path.read_text())
        out.setdefault(card, []).extend(data["rows"])
    return out


def _line(name: str, ratio: float | None, need: float, detail: str) -> dict:
    status = "MISSING" if ratio is None else ("PASS" if ratio >= need else "FAIL")
    return {"target": name, "status": status, "ratio": ratio, "need": need, "detail": detail}


def verdicts(layer_rows: list[dict], network_rows: list[dict]) -> list[dict]:
    out = []
    for mask in ("imp", "random"):
        cand = [
            r
            for r in layer_rows
            if r["layer"] == "conv3x3_128_s1"
            and r["hw"] == 256
            and r["mask"] == mask
            and r["sparsity"] == 0.9
            and r["pass"] == "fwd"
            and r["backend"].startswith("triton")
        ]
        best = max(cand, key=lambda r: r["speedup_vs_dense"], default=None)
        detail = f"{best['backend']} {best.get('config', '')} {best['ms']:.4f} ms".strip() if best else "no rows"
        out.append(
            _line(f"layer 128->128 3x3 @256, 90% {mask}, forward", best and best["speedup_vs_dense"], 2.5, detail)
        )
    auto = [r for r in network_rows if r.get("variant") == "auto" and r.get("size") == 256 and "error" not in r]
    for mask in ("imp", "random"):
        r = next((r for r in auto if r["mask"] == mask and r["sparsity"] == 0.9), None)
        ratio = r and r["step_speedup"]
        detail = f"auto {r['step_ms']:.3f} ms, {r.get('sparse_layers_fit', '?')} sparse convs" if r else "no row"
        out.append(_line(f"fitting step @256, 90% {mask}", ratio, 2.0, detail))
    for mask in ("imp", "random"):
        r = next((r for r in auto if r["mask"] == mask and r["sparsity"] == 0.5), None)
        ratio = r and min(r["forward_speedup"], r["step_speedup"] or r["forward_speedup"])
        detail = f"forward x{r['forward_speedup']}, step x{r['step_speedup']} (>= {NOISE} counts as a tie)" if r else ""
        out.append(_line(f"nothing slower @256, 50% {mask} (auto network)", ratio, NOISE, detail or "no row"))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lipdeploy.bench.gpu.verdict", description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="a gpu_session results folder")
    args = ap.parse_args(argv)
    layers = _rows(args.folder, "gpu_layers_*.json")
    for pattern in ("gpu_target_*.json", "gpu_tune_*.json"):  # the config sweep's best config counts too
        for card, rows in _rows(args.folder, pattern).items():
            layers.setdefault(card, []).extend(rows)
    networks = _rows(args.folder, "gpu_network_*.json")
    cards = sorted(set(layers) | set(networks))
    if not cards:
        print(f"gpu_verdict: {args.folder}: no gpu_layers/gpu_target/gpu_network JSON files", file=sys.stderr)
        return 2
    for card in cards:
        print(f"== {card}")
        for v in verdicts(layers.get(card, []), networks.get(card, [])):
            ratio = "-" if v["ratio"] is None else f"x{v['ratio']:.2f}"
            print(f"{v['status']:<7} {v['target']:<48} {ratio:>7} (need x{v['need']})  {v['detail']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Quality of structured tickets through IMP on one small crop: how far each sparsity pattern can be pruned.

    python -m lipdeploy.bench.cpu.structured_imp [--patterns unstructured block channel] [--rounds 14] [--iters 300]
        [--size 64] [--image astronaut] [--work DIR] -o bench/results/structured_imp_64px.json

One IMP chain per pattern (the paper's network, global ranking, 20% of the remaining weights per round, rewind to
init), each round fitted to the *noisy observation* (``target="observation"``), so a round's best-over-iterations PSNR
to the clean image is the denoising quality of that round's ticket trained from its initial weights: the number a
LIP is judged by. ``random-<pattern>`` chains prune random units of the pattern at the same per-round kept counts.
Every row names the pattern, round, density, PSNR (best and final) and seconds; the first row of every chain is the
same dense fit (round 0). Chains are resumable (``--work``: the round tickets, large, kept out of the results file).

This is a small, fast setting (a 64x64 crop, 300 iterations per round, one image), chosen so that all patterns to
95.6% sparsity (14 rounds) fit in well under a core-hour each; the cpu preset (``lipdeploy bench --preset cpu``)
measures the same frontier at 128x128 on three images with separate evaluation fits.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from lipdeploy.fit import FitConfig
from lipdeploy.images import centre_crop, standard_image
from lipdeploy.imp import ImpConfig, find_ticket
from lipdeploy.masks import Mask
from lipdeploy.networks import paper_skip
from lipdeploy.tasks import make_task
from lipdeploy.ticket import ticket_from_model

from ..plots import style_of
from ..script import Results, parser, script_environment


def chain_rows(pattern: str, random: bool, args, work: Path) -> list[dict]:
    """Run (or resume) one IMP chain and return its rows, one per round."""
    spec = paper_skip()
    torch.manual_seed(args.seed)
    model = spec.build()
    start = ticket_from_model(model, spec, Mask.ones_like(model), source_format="dense", seed=args.seed)
    clean, _ = centre_crop(standard_image(args.image), args.size, args.size)
    name = f"random-{pattern}" if random else pattern
    imp = ImpConfig(rounds=args.rounds, granularity=pattern, random=random, target="observation")
    fit_config = FitConfig(iters=args.iters, seed=args.seed)
    find_ticket(start, clean, make_task("denoise"), work / name, imp, fit_config, image_name=args.image)
    summary = json.loads((work / name / "imp.json").read_text())
    return [
        {
            "chain": name,
            "pattern": pattern,
            "random": random,
            "round": r["round"],
            "density": r["density"],
            "sparsity": round(1 - r["density"], 6),
            "psnr_best": r["psnr_best"],
            "psnr_final": r["psnr_final"],
            "fit_seconds": r["fit_seconds"],
        }
        for r in summary["rounds"]
    ]


def main(argv: list[str] | None = None) -> int:
    ap = parser("lipdeploy.bench.cpu.structured_imp", __doc__)
    ap.add_argument("--patterns", nargs="+", default=["unstructured", "block", "channel"])
    ap.add_argument("--random", nargs="*", default=["block"], help="patterns to also prune at random (baseline)")
    ap.add_argument("--rounds", type=int, default=14)
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--image", default="astronaut")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("out/structured_imp"), help="round tickets (resumable)")
    args = ap.parse_args(argv)
    settings = {k: v for k, v in vars(args).items() if k not in ("output", "work")}
    results = Results(
        args.output, script_environment(script="structured_imp", torch_threads=torch.get_num_threads(), **settings)
    )
    chains = [(p, False) for p in args.patterns] + [(p, True) for p in args.random]
    for pattern, random in chains:
        results.add(*chain_rows(pattern, random, args, args.work))
    results.finish(summary=frontier(results.rows))
    if args.output is not None:
        print(f"plot: {plot(results.rows, args.output.with_suffix('.png'), settings)}")
    return 0


def plot(rows: list[dict], path: Path, settings: dict) -> Path:
    """PSNR vs sparsity, one line per chain (the report's family colours), dense and dense - 0.5 dB as references."""
    # matplotlib.pyplot takes ~3.5 s to import: loaded only when a plot is drawn
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"), with matplotlib (see above)

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    dense = next(r["psnr_best"] for r in rows if r["round"] == 0)
    for chain in dict.fromkeys(r["chain"] for r in rows):
        mine = sorted((r for r in rows if r["chain"] == chain), key=lambda r: r["sparsity"])
        st = style_of(chain)
        xs = [100 * r["sparsity"] for r in mine]
        ax.plot(xs, [r["psnr_best"] for r in mine], marker=st["marker"], color=st["color"], label=chain, ms=4)
    ax.axhline(dense, color="grey", lw=1, label="dense")
    ax.axhline(dense - 0.5, color="grey", lw=1, ls=":", label="dense - 0.5 dB")
    ax.set_xlabel("sparsity (% of conv weights pruned)")
    ax.set_ylabel("denoising PSNR, best over iterations (dB)")
    ax.set_title(
        f"IMP per pattern: {settings['image']} {settings['size']}x{settings['size']}, {settings['iters']} its/round"
    )
    ax.set_ylim(max(min(r["psnr_best"] for r in rows) - 0.5, dense - 6), None)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def frontier(rows: list[dict], margin_db: float = 0.5) -> dict[str, dict]:
    """Per chain: the sparsest round within ``margin_db`` of the dense fit (round 0), and its PSNR."""
    out: dict[str, dict] = {}
    for chain in dict.fromkeys(r["chain"] for r in rows):
        mine = [r for r in rows if r["chain"] == chain]
        dense = next(r["psnr_best"] for r in mine if r["round"] == 0)
        ok = [r for r in mine if r["psnr_best"] is not None and r["psnr_best"] >= dense - margin_db]
        best = max(ok, key=lambda r: r["sparsity"]) if ok else None
        out[chain] = {
            "dense_psnr": dense,
            "sparsest_within_margin": best and best["sparsity"],
            "its_psnr": best and best["psnr_best"],
            "margin_db": margin_db,
        }
    return out


if __name__ == "__main__":
    sys.exit(main())

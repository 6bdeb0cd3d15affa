"""CPU fitting-step benchmark: lipdeploy's fitting engine vs a plain PyTorch DIP loop, same network, one run.

    python -m lipdeploy.bench.cpu.fit_step [--sizes 64 128] [--steps 12] [-o bench/results/cpu_fit_step.json]

The plain loop is the minimal DIP loop (Adam lr 0.01, MSE, perturbed noise input, default Adam); the engine runs its
full step (input perturbation, loss, backtracking check + weight snapshot, output averaging, PSNR tracking against a
ground truth). Both time each step with ``perf_counter``; the two alternate in blocks (plain, engine, plain, engine) so
background load hits both alike, and the medians are compared. ratio = engine / plain (< 1: the engine is faster).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lipdeploy.fit import FitConfig, fit
from lipdeploy.imp import prune
from lipdeploy.masks import Mask
from lipdeploy.networks import make_input, paper_skip
from lipdeploy.tasks import Denoise
from lipdeploy.ticket import ticket_from_model

from ..script import Results, parser, script_environment


def plain_loop(spec, size: int, steps: int, seed: int = 0) -> list[float]:
    """The minimal DIP loop, per-step seconds."""
    torch.manual_seed(seed)
    net = spec.build().train()
    x0 = make_input(spec, size, size, seed=seed)
    target = torch.rand(1, 3, size, size)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        out = net(x0 + torch.randn_like(x0) / 30.0)
        loss = F.mse_loss(out, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return times


def engine_loop(spec, size: int, steps: int, seed: int = 0, density: float = 1.0) -> list[float]:
    """lipdeploy.fit on the same network (a ticket at ``density``), with ground truth tracking on; per-step seconds."""
    torch.manual_seed(seed)
    model = spec.build()
    masks = Mask.ones_like(model)
    ticket = ticket_from_model(model, spec, masks)
    if density < 1.0:
        w = {n: ticket.init[n] for n in masks}
        m = masks
        while sum(int(v.sum()) for v in m.values()) > density * sum(v.numel() for v in m.values()):
            m = prune(w, m, 0.2)
        ticket = ticket.replace(masks=m)
    clean = torch.rand(1, 3, size, size)
    obs = Denoise().observe(clean)
    res = fit(ticket, obs, FitConfig(iters=steps, seed=seed, log_every=10**9), gt=clean, progress=False)
    return res.step_times


def main(argv: list[str] | None = None) -> dict:
    ap = parser("lipdeploy.bench.cpu.fit_step", __doc__, output=Path("bench/results/cpu_fit_step.json"))
    ap.formatter_class = argparse.RawDescriptionHelpFormatter
    ap.description = __doc__
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--steps", type=int, default=12, help="steps per block (first step of each block is warm-up)")
    ap.add_argument("--blocks", type=int, default=2, help="alternating blocks per method")
    ap.add_argument("--sparse-density", type=float, default=0.107, help="also time a ticket at this density (0: skip)")
    args = ap.parse_args(argv)

    spec = paper_skip()
    meta = script_environment(
        benchmark="cpu_fit_step",
        network=spec.describe(),
        steps_per_block=args.steps,
        blocks=args.blocks,
        note="medians of per-step wall times; other processes on the machine add noise to both alike",
    )
    results = Results(args.output, meta, printer=lambda r: print(json.dumps(r)))
    for size in args.sizes:
        plain, engine, engine_sparse = [], [], []
        for _ in range(args.blocks):
            plain += sorted(plain_loop(spec, size, args.steps))[: args.steps - 1]  # drop the slowest (warm-up)
            engine += sorted(engine_loop(spec, size, args.steps))[: args.steps - 1]
            if args.sparse_density:
                engine_sparse += sorted(engine_loop(spec, size, args.steps, density=args.sparse_density))[
                    : args.steps - 1
                ]
        p_ms = 1000 * statistics.median(plain)
        e_ms = 1000 * statistics.median(engine)
        row = {
            "size": size,
            "plain_ms_per_step": round(p_ms, 2),
            "engine_ms_per_step": round(e_ms, 2),
            "ratio_engine_over_plain": round(e_ms / p_ms, 3),
        }
        if engine_sparse:
            s_ms = 1000 * statistics.median(engine_sparse)
            row["engine_ticket_ms_per_step"] = round(s_ms, 2)
            row["ticket_density"] = args.sparse_density
            row["ratio_ticket_engine_over_plain"] = round(s_ms / p_ms, 3)
        results.add(row)
    return results.finish()


if __name__ == "__main__":
    main()

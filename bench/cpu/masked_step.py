"""CPU fitting step of a masked ticket vs the dense network: what keeping pruned weights at zero costs, one run.

    python -m lipdeploy.bench.cpu.masked_step [--sizes 64] [--repeats 6] [--steps 5] [-o FILE.json]

Three steps of the engine (:class:`lipdeploy.fit.EagerStep`: input perturbation, loss, backward, backtracking check +
weight snapshot, output average, PSNR tracking, Adam) on the paper network, one thread:

- ``dense``: the unpruned network (nothing to mask);
- ``masked_hooks``: a ticket (global magnitude pruning, ``--density``) whose pruned gradients are zeroed by a gradient
  hook per layer (``lipdeploy.masks.freeze_pruned``: what the engine did before);
- ``masked_fused``: the same ticket, its pruned gradients zeroed after backward in one fused pass
  (:class:`lipdeploy.fit_result.PrunedGradients`: what the engine does).

The variants take turns in blocks of ``--steps`` steps, ``--repeats`` rounds, the order rotated each round, so that
the load of a shared machine hits all alike; each block's median step time is taken, and the ratios are formed within
a round (masked / dense of the same round), then their median over rounds is reported with its range. Two clocks:
the process's CPU time (``*_cpu_ms``, the primary numbers: with one thread it counts the step's own work, not the
time other processes hold the core) and wall time (``*_wall_ms``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from lipdeploy.fit import EagerStep, FitConfig, simulate
from lipdeploy.fit_result import PrunedGradients
from lipdeploy.imp import prune
from lipdeploy.masks import Mask, apply_masks_, freeze_pruned
from lipdeploy.networks import make_input, paper_skip
from lipdeploy.tasks import Denoise
from lipdeploy.ticket import Ticket, ticket_from_model

from ..script import Results, parser, script_environment

VARIANTS = ("dense", "masked_hooks", "masked_fused")


def make_step(ticket: Ticket, size: int, variant: str, seed: int = 0) -> EagerStep:
    """The engine's eager step on ``ticket`` at ``size`` x ``size``, its pruned gradients masked the ``variant`` way."""
    model = ticket.build("init", bn="image").train()
    masks = {n: m for n, m in ticket.masks.items() if not bool(m.all())}
    apply_masks_(model, masks)
    pruned = PrunedGradients()
    if variant == "masked_hooks":
        freeze_pruned(model, masks)  # the hooks live as long as the model
    elif variant == "masked_fused":
        params = dict(model.named_parameters())
        for name, mask in masks.items():
            pruned.add(params[name], mask)
    clean = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))
    task = Denoise()
    config = FitConfig(iters=10**6, seed=seed)
    return EagerStep(
        model, simulate(task, clean, seed), task, make_input(ticket.arch, size, size, seed=seed), config,
        input_noise_std=task.input_noise_std, generator=torch.Generator().manual_seed(seed + 1), gt=clean,
        pruned=pruned,
    )  # fmt: skip


def block_ms(step: EagerStep, steps: int) -> dict[str, float]:
    """Median milliseconds of ``steps`` steps, in CPU time (``cpu``) and wall time (``wall``)."""
    cpu, wall = [], []
    for _ in range(steps):
        c0, w0 = time.process_time(), time.perf_counter()
        step.run()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return {"cpu": 1000 * statistics.median(cpu), "wall": 1000 * statistics.median(wall)}


def tickets(density: float, seed: int = 0) -> tuple[Ticket, Ticket]:
    """The paper network dense, and pruned to ``density`` by global magnitude pruning of its initial weights."""
    spec = paper_skip()
    torch.manual_seed(seed)
    model = spec.build()
    dense = ticket_from_model(model, spec, Mask.ones_like(model))
    masks = prune({n: dense.init[n] for n in dense.masks}, dense.masks, 1 - density)
    return dense, dense.replace(masks=masks)


def measure(size: int, density: float, repeats: int, steps: int) -> dict:
    dense, masked = tickets(density)
    runners = {v: make_step(dense if v == "dense" else masked, size, v) for v in VARIANTS}
    for step in runners.values():
        block_ms(step, 2)  # warm-up: allocations, Adam's state
    rounds = []
    for r in range(repeats):
        order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
        rounds.append({v: block_ms(runners[v], steps) for v in order})
    row = {"size": size, "density": round(masked.density, 4), "repeats": repeats, "steps_per_block": steps}
    for clock in ("cpu", "wall"):
        for v in VARIANTS:
            row[f"{v}_{clock}_ms"] = round(statistics.median(r[v][clock] for r in rounds), 1)
        for num, den in (("masked_hooks", "dense"), ("masked_fused", "dense"), ("masked_fused", "masked_hooks")):
            ratios = [r[num][clock] / r[den][clock] for r in rounds]
            row[f"{clock}_ratio_{num}_over_{den}"] = round(statistics.median(ratios), 3)
            row[f"{clock}_ratio_{num}_over_{den}_range"] = [round(min(ratios), 3), round(max(ratios), 3)]
    return row


def main(argv: list[str] | None = None) -> dict:
    ap = parser("lipdeploy.bench.cpu.masked_step", __doc__, output=Path("bench/results/cpu_masked_step.json"))
    ap.formatter_class = argparse.RawDescriptionHelpFormatter
    ap.description = __doc__
    ap.add_argument("--sizes", type=int, nargs="+", default=[64])
    ap.add_argument("--density", type=float, default=0.107, help="ticket density (0.107: 10 IMP rounds)")
    ap.add_argument("--repeats", type=int, default=6, help="rounds of interleaved blocks")
    ap.add_argument("--steps", type=int, default=5, help="steps per block")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    meta = script_environment(
        benchmark="cpu_masked_step",
        network=paper_skip().describe(),
        threads=1,
        note="block medians of per-step CPU and wall times; ratios formed within a round of interleaved blocks",
    )
    results = Results(args.output, meta, printer=lambda r: print(json.dumps(r)))
    for size in args.sizes:
        results.add(measure(size, args.density, args.repeats, args.steps))
    return results.finish()


if __name__ == "__main__":
    main()

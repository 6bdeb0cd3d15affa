"""CPU fitting step of a masked ticket vs the dense network: what keeping pruned weights at zero costs, one run.

    python -m lipdeploy.bench.cpu.masked_step [--sizes 64 128] [--rounds 30] [-o FILE.json]

Three steps of the engine (:class:`lipdeploy.fit.EagerStep`: input perturbation, loss, backward, backtracking check +
weight snapshot, output average, PSNR tracking, Adam) on the paper network, one thread:

- ``dense``: the unpruned network (nothing to mask);
- ``masked_hooks``: a ticket (global magnitude pruning, ``--density``) whose pruned gradients are zeroed by a gradient
  hook per layer (:func:`mask_with_hooks`, the baseline this benchmark measures the fused pass against);
- ``masked_fused``: the same ticket, its pruned gradients zeroed after backward in one fused pass
  (:class:`lipdeploy.fit_result.PrunedGradients`: what the engine does).

The variants take turns step by step: each of ``--rounds`` rounds runs one step of each, in an order rotated every
round, so that the load of a shared machine hits all alike. Ratios are formed within a round (masked / dense of the
same round) and their median over rounds is reported with the quartiles; ``*_ms`` are medians over rounds, and
``*_min_ratio`` the ratio of the fastest steps. Two clocks: the process's CPU time (``cpu_*``, the primary numbers:
with one thread it counts the step's own work, not the time other processes hold the core) and wall time
(``wall_*``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lipdeploy.fit import EagerStep, FitConfig, simulate
from lipdeploy.fit_result import PrunedGradients
from lipdeploy.imp import prune
from lipdeploy.masks import Mask, apply_masks_
from lipdeploy.networks import SkipSpec, make_input, paper_skip
from lipdeploy.tasks import Denoise
from lipdeploy.ticket import Ticket, ticket_from_model

from ..script import Results, parser, script_environment

VARIANTS = ("dense", "masked_hooks", "masked_fused")


def mask_with_hooks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> list[RemovableHandle]:
    """The baseline: a gradient hook per masked weight (``grad * mask``: an extra autograd node and a new gradient
    tensor each), which gives the gradients :class:`lipdeploy.fit_result.PrunedGradients` gives in one fused pass
    after backward. Returns the hooks' handles."""
    params = dict(model.named_parameters())
    handles = []
    for name, mask in masks.items():
        m = mask.to(params[name].device, params[name].dtype)
        handles.append(params[name].register_hook(lambda grad, m=m: grad * m))
    return handles


def make_step(ticket: Ticket, size: int, variant: str, seed: int = 0) -> EagerStep:
    """The engine's eager step on ``ticket`` at ``size`` x ``size``, its pruned gradients masked the ``variant`` way."""
    model = ticket.build("init", bn="image").train()
    masks = {n: m for n, m in ticket.masks.items() if not bool(m.all())}
    apply_masks_(model, masks)
    pruned = PrunedGradients()
    if variant == "masked_hooks":
        mask_with_hooks(model, masks)  # the hooks live as long as the model
    elif variant == "masked_fused":
        pruned = PrunedGradients.of(model, masks)
    clean = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))
    task = Denoise()
    config = FitConfig(iters=10**6, seed=seed)
    return EagerStep(
        model, simulate(task, clean, seed), task, make_input(ticket.arch, size, size, seed=seed), config,
        input_noise_std=task.input_noise_std, generator=torch.Generator().manual_seed(seed + 1), gt=clean,
        pruned=pruned,
    )  # fmt: skip


def step_ms(step: EagerStep) -> dict[str, float]:
    """Milliseconds of one step, in CPU time (``cpu``) and wall time (``wall``)."""
    c0, w0 = time.process_time(), time.perf_counter()
    step.run()
    return {"cpu": 1000 * (time.process_time() - c0), "wall": 1000 * (time.perf_counter() - w0)}


def network(channels: int | None) -> SkipSpec:
    """The paper network, or (smoke tests) the same with ``channels`` channels per level."""
    if channels is None:
        return paper_skip()
    return SkipSpec(channels_down=(channels,) * 5, channels_up=(channels,) * 5)


def tickets(spec: SkipSpec, density: float, seed: int = 0) -> tuple[Ticket, Ticket]:
    """``spec`` dense, and pruned to ``density`` by global magnitude pruning of its initial weights."""
    torch.manual_seed(seed)
    model = spec.build()
    dense = ticket_from_model(model, spec, Mask.ones_like(model))
    masks = prune({n: dense.init[n] for n in dense.masks}, dense.masks, 1 - density)
    return dense, dense.replace(masks=masks)


def measure(spec: SkipSpec, size: int, density: float, rounds: int) -> dict:
    dense, masked = tickets(spec, density)
    runners = {v: make_step(dense if v == "dense" else masked, size, v) for v in VARIANTS}
    for step in runners.values():
        for _ in range(2):
            step.run()  # warm-up: allocations, Adam's state
    times = []
    for r in range(rounds):
        order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
        times.append({v: step_ms(runners[v]) for v in order})
    row = {"size": size, "density": round(masked.density, 4), "rounds": rounds}
    for clock in ("cpu", "wall"):
        for v in VARIANTS:
            row[f"{clock}_{v}_ms"] = round(statistics.median(t[v][clock] for t in times), 1)
        for num, den in (("masked_hooks", "dense"), ("masked_fused", "dense"), ("masked_fused", "masked_hooks")):
            ratios = [t[num][clock] / t[den][clock] for t in times]
            q1, median, q3 = statistics.quantiles(ratios, n=4)
            key = f"{clock}_{num}_over_{den}"
            row[f"{key}_ratio"] = round(median, 3)
            row[f"{key}_quartiles"] = [round(q1, 3), round(q3, 3)]
            row[f"{key}_min_ratio"] = round(min(t[num][clock] for t in times) / min(t[den][clock] for t in times), 3)
    return row


def main(argv: list[str] | None = None) -> dict:
    ap = parser(
        "lipdeploy.bench.cpu.masked_step", __doc__, output=Path("bench/results/cpu_masked_step.json"), channels=True
    )
    ap.formatter_class = argparse.RawDescriptionHelpFormatter
    ap.description = __doc__
    ap.add_argument("--sizes", type=int, nargs="+", default=[64])
    ap.add_argument("--density", type=float, default=0.107, help="ticket density (0.107: 10 IMP rounds)")
    ap.add_argument("--rounds", type=int, default=30, help="rounds of one step per variant")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    spec = network(args.channels)
    meta = script_environment(
        benchmark="cpu_masked_step",
        network=spec.describe(),
        threads=1,
        note="per-step CPU and wall times, variants interleaved step by step; ratios formed within a round",
    )
    results = Results(args.output, meta, printer=lambda r: print(json.dumps(r)))
    for size in args.sizes:
        results.add(measure(spec, size, args.density, args.rounds))
    return results.finish()


if __name__ == "__main__":
    main()

"""The benchmark's view of the engine: make methods' networks as tickets, fit them, find tickets.

Every method is a :class:`~lipdeploy.ticket.Ticket` (the dense DIP and the deep decoders with all-ones masks), so one
code path fits, times, exports and stores them all, and every stored-bytes number is a real file's size.

Fitting goes through :func:`lipdeploy.fit.fit`, ticket finding through :func:`lipdeploy.imp.find_ticket` (the
paper's IMP at unstructured, kernel or channel granularity) and :func:`lipdeploy.imp.prune` (random baseline).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lipdeploy import imp
from lipdeploy.fit import FitConfig, FitResult, fit
from lipdeploy.limits import check_work
from lipdeploy.masks import Mask
from lipdeploy.networks import ArchSpec, DeepDecoderSpec
from lipdeploy.tasks import Observation, Task
from lipdeploy.ticket import Ticket, ticket_from_model

# Counts fits run in this process: tests use it to prove that a resumed run recomputes nothing.
COUNTERS = {"fits": 0, "finds": 0}


def dense_ticket(arch: ArchSpec, seed: int, **provenance: Any) -> Ticket:
    """The network at its seeded random initialisation, all weights kept. LIPs rewind to exactly these weights."""
    torch.manual_seed(seed)
    model = arch.build()
    return ticket_from_model(model, arch, masks=Mask.ones_like(model), seed=seed, **provenance)


def param_count(ticket: Ticket) -> int:
    """Parameters a fit optimises that can be nonzero: kept conv weights + biases + BatchNorm affine."""
    pruned = set(ticket.masks)
    other = sum(
        v.numel()
        for k, v in ticket.init.items()
        if k not in pruned and (k.endswith(".weight") or k.endswith(".bias")) and "running" not in k
    )
    return ticket.kept_count + other


def dense_param_count(ticket: Ticket) -> int:
    """All parameters of the (unpruned) architecture."""
    return sum(v.numel() for k, v in ticket.init.items() if k.endswith(".weight") or k.endswith(".bias"))


def dd_params(k: int, depth: int = 5, out_channels: int = 3) -> int:
    """Deep decoder parameters (DOMAIN.md): (d+1)(k^2 + 2k) + 3k; conv weights without bias plus BN affine."""
    return (depth + 1) * (k * k + 2 * k) + out_channels * k


def matched_dd_k(params: int, depth: int = 5) -> int:
    """Integer k whose deep decoder's parameter count is closest to ``params``."""
    a, b = depth + 1, 2 * (depth + 1) + 3
    k0 = (-b + math.sqrt(b * b + 4 * a * params)) / (2 * a)
    cands = {max(1, math.floor(k0)), max(1, math.ceil(k0))}
    return min(sorted(cands), key=lambda k: abs(dd_params(k, depth) - params))


def dd_ticket(k: int, depth: int, seed: int) -> Ticket:
    return dense_ticket(DeepDecoderSpec(k=k, depth=depth), seed)


@dataclass
class FitOutcome:
    """What the benchmark keeps of a fit: numbers and the PSNR-over-time curve (best so far)."""

    psnr_best: float
    psnr_final: float
    ssim_best: float
    ssim_final: float
    seconds: float
    iterations: int
    step_ms_median: float
    curve: list[tuple[int, float, float]]  # (iteration, seconds, best PSNR so far)
    fitted: dict[str, torch.Tensor] | None = None


def run_fit(
    ticket: Ticket,
    obs: Observation,
    gt: torch.Tensor | None,
    task: Task,
    iters: int,
    lr: float,
    seed: int,
    log_every: int,
    keep_weights: bool = False,
) -> FitOutcome:
    """Fit ``ticket`` (from its initial weights, under its masks) and summarise.

    The curve's time axis is the fit's own elapsed seconds at each log step (``history[i]["seconds"]``; results
    written before fits logged it fall back to ``iteration x seconds per iteration``). Deep decoders get no input
    perturbation (their reference fits none); DIP networks the task's.
    """
    check_work(ticket.arch, *obs.out_size, training=True, what="a benchmark fit")  # before the fit allocates
    COUNTERS["fits"] += 1
    noise = 0.0 if isinstance(ticket.arch, DeepDecoderSpec) else None
    cfg = FitConfig(iters=iters, lr=lr, seed=seed, log_every=log_every, input_noise_std=noise)
    res: FitResult = fit(ticket, obs, cfg, gt=gt, task=task, progress=False)
    per = res.seconds / max(1, res.iterations)
    curve = [
        (int(h["iter"]), h.get("seconds", h["iter"] * per), float(h["psnr"]))
        for h in res.history
        if h.get("psnr") is not None
    ]
    return FitOutcome(
        psnr_best=_f(res.psnr_best),
        psnr_final=_f(res.psnr_final),
        ssim_best=_f(res.ssim_best),
        ssim_final=_f(res.ssim_final),
        seconds=res.seconds,
        iterations=res.iterations,
        step_ms_median=res.step_ms_median,
        curve=curve,
        fitted=res.state_dict if keep_weights else None,
    )


def _f(x: float | None) -> float:
    return math.nan if x is None else float(x)


# --------------------------------------------------------------------------------------------------- ticket finding


@dataclass
class FoundTickets:
    """Round files ``round_XX.pt`` (density 0.8^k; round 0 = dense) and how they were found."""

    paths: dict[int, Path]
    finder: str
    seconds: float


def find_tickets(
    dense: Ticket,
    clean: torch.Tensor,
    task: Task,
    out_dir: Path,
    rounds: int,
    granularity: str,
    random: bool,
    iters: int,
    lr: float,
    seed: int,
    log_every: int,
    image_name: str,
    obs_seed: int,
) -> FoundTickets:
    """IMP tickets after 0..``rounds`` rounds of pruning 20% of the remaining weights, rewound to ``dense``'s init.

    Unstructured / kernel / channel: :func:`lipdeploy.imp.find_ticket` (the paper's IMP; resumable per round: a
    killed run continues after its last complete round file). ``random``: the random-pruning baseline. Pruning units
    at random needs no fitted weights (scores are random), so the bench applies :func:`lipdeploy.imp.prune` with
    ``random=True`` round after round without fitting; the masks have exactly IMP's kept counts per round.
    """
    COUNTERS["finds"] += 1
    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    if random:
        paths: dict[int, Path] = {}
        masks = dense.masks
        for r in range(1, rounds + 1):
            gen = torch.Generator().manual_seed(seed * 1000 + r)
            masks = imp.prune(dense.init, masks, imp.ImpConfig().rate, "global", granularity, True, gen)
            path = imp.round_path(out_dir, r)
            if not path.exists():
                prov = {
                    "round": r,
                    "pruning": "random (global, uniform over kept units)",
                    "image": image_name,
                    "sparsity": None,
                }
                t = dense.replace(masks=masks, provenance=prov)
                t.provenance["sparsity"] = round(t.sparsity, 6)
                t.save(path)
            paths[r] = path
        return FoundTickets(paths, "lipdeploy.imp.prune(random=True)", time.perf_counter() - t0)

    def counted(_r, _path, _res) -> None:
        COUNTERS["fits"] += 1

    cfg = FitConfig(iters=iters, lr=lr, seed=seed, log_every=log_every)
    icfg = imp.ImpConfig(rounds=rounds, granularity=granularity)
    files = imp.find_ticket(
        dense, clean, task, out_dir, icfg, cfg, image_name=image_name, obs_seed=obs_seed, on_round=counted
    )
    paths = {}
    for p in files:
        m = imp.ROUND_RE.fullmatch(p.name)
        if m:
            paths[int(m.group(1))] = p
    return FoundTickets(paths, "lipdeploy.imp.find_ticket", time.perf_counter() - t0)

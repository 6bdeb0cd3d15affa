"""Finding lottery image priors by iterative magnitude pruning (IMP), as in the paper, with structured variants.

Round 0 fits the dense network; every later round prunes ``rate`` of the remaining convolution weights by the previous
round's fitted magnitudes, rewinds the kept weights to the initial ones (or to iteration k of the dense fit) and fits
again. Each round's ticket is written as ``round_XX.pt`` as soon as its fit ends, holding its masks, the rewind-point
weights as ``init``, its fitted weights (what the next round prunes from) and its provenance (including its PSNR), so
after k rounds the density is 0.8^k and ``round_00`` is the dense DIP itself. Rerunning continues after the last
complete round file (files are written atomically, so a file that exists is complete).

Pruning plug-ins (:data:`PRUNERS`): units are single weights (``unstructured``), whole k x k kernels (``kernel``) or
whole output channels (``channel``); a unit's score is its mean |w| over its positions (the L1 norm per weight), so
global pruning compares 1x1 and 3x3 kernels, and channels of different fan-in, fairly (a raw norm would empty the
small-fan-in layers first). ``random`` scores units at random: the random-pruning baseline at the same densities.
Targets count weights, not units, so densities follow 0.8^k at every granularity (up to one unit). Every layer keeps
at least its best unit, and the output convolution is never pruned by output channel (that would delete a colour):
under ``channel`` it is pruned by kernel.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from .errors import InputError
from .fileio import atomic_write_text
from .fit import FitConfig, FitResult, fit, simulate
from .masks import Masks
from .tasks import Task
from .ticket import Ticket, load_ticket

Scope = Literal["global", "layer"]
Granularity = Literal["unstructured", "kernel", "channel"]
Target = Literal["paper", "clean", "observation"]
ROUND_RE = re.compile(r"round_(\d+)\.(pt|safetensors)$")


@dataclass
class ImpConfig:
    """IMP settings; the defaults are the paper's (global unstructured L1, 20% per round, rewind to init)."""

    rounds: int = 5
    rate: float = 0.2
    scope: Scope = "global"
    granularity: Granularity = "unstructured"
    rewind_iter: int = 0
    target: Target = "paper"
    random: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.rate < 1.0:
            raise InputError(None, f"pruning rate must be in (0, 1), got {self.rate}")
        if self.rounds < 0:
            raise InputError(None, f"rounds must be >= 0, got {self.rounds}")
        if self.rewind_iter < 0:
            raise InputError(None, f"rewind iteration must be >= 0, got {self.rewind_iter}")
        if self.scope not in ("global", "layer"):
            raise InputError(None, f"scope must be global or layer, got {self.scope!r}")
        if self.granularity not in PRUNERS:
            raise InputError(None, f"granularity must be one of {', '.join(PRUNERS)}, got {self.granularity!r}")

    def fit_target(self, task: Task) -> str:
        """'clean' or 'observation': the paper fits the clean image for denoising, the observation otherwise."""
        if self.target == "paper":
            return "clean" if task.name == "denoise" else "observation"
        return self.target


# --------------------------------------------------------------------------------------------------- pruning


def _units(t: torch.Tensor, granularity: str) -> torch.Tensor:
    """View a conv weight [O, I, kh, kw] as [units, positions]."""
    if granularity == "unstructured":
        return t.reshape(-1, 1)
    if granularity == "kernel":
        return t.reshape(t.shape[0] * t.shape[1], -1)
    if granularity == "channel":
        return t.reshape(t.shape[0], -1)
    raise ValueError(f"unknown granularity {granularity!r}")


PRUNERS: dict[str, str] = {
    "unstructured": "single weights",
    "kernel": "whole k x k kernels (output, input pairs)",
    "channel": "whole output channels",
}


def prune(
    weights: Mapping[str, torch.Tensor],
    masks: Masks,
    rate: float,
    scope: Scope = "global",
    granularity: Granularity = "unstructured",
    random: bool = False,
    generator: torch.Generator | None = None,
) -> Masks:
    """New masks with ``rate`` of the currently kept weights removed, lowest-scoring units first.

    ``weights``: the (fitted) weights to score, by prunable name; ``masks``: the current masks (same names). With
    ``scope="global"`` units of all layers compete; with ``"layer"`` each layer loses ``rate`` of its own weights.
    """
    names = list(masks)
    last = names[-1]
    per_layer = []  # (name, granularity, unit view of mask, scores, kept per unit, candidate flags)
    for name in names:
        m = masks[name].float()
        w = weights[name].detach().float().cpu() * m
        gran = "kernel" if (granularity == "channel" and name == last) else granularity
        mu, wu = _units(m, gran), _units(w, gran)
        kept = mu.sum(1)
        if random:
            scores = torch.rand(kept.shape, generator=generator)
        else:
            scores = wu.abs().sum(1) / mu.shape[1]
        alive = kept > 0
        cand = alive.clone()
        if bool(alive.any()):  # every layer keeps its best unit
            best = torch.where(alive, scores, torch.full_like(scores, -1.0)).argmax()
            cand[best] = False
        per_layer.append((name, gran, mu, scores, kept, cand))

    prune_flags: dict[str, torch.Tensor] = {
        name: torch.zeros(mu.shape[0], dtype=torch.bool) for name, _, mu, *_ in per_layer
    }
    groups = [per_layer] if scope == "global" else [[entry] for entry in per_layer]
    for group in groups:
        total_kept = sum(float(e[4].sum()) for e in group)
        target = round(rate * total_kept)
        if target <= 0:
            continue
        scores = torch.cat([e[3][e[5]] for e in group])
        sizes = torch.cat([e[4][e[5]] for e in group])
        owner = torch.cat([torch.full((int(e[5].sum()),), gi, dtype=torch.long) for gi, e in enumerate(group)])
        index = torch.cat([torch.nonzero(e[5]).flatten() for e in group])
        order = torch.argsort(scores, stable=True)
        csum = torch.cumsum(sizes[order], 0)
        # the shortest prefix reaching the target, or one shorter if that lands closer (units larger than 1 weight)
        n = int(torch.searchsorted(csum, torch.tensor(float(target)), right=False)) + 1
        n = min(n, len(order))
        if n > 1 and abs(float(csum[n - 2]) - target) < abs(float(csum[n - 1]) - target):
            n -= 1
        chosen = order[:n]
        for gi, e in enumerate(group):
            sel = chosen[owner[chosen] == gi]
            prune_flags[e[0]][index[sel]] = True

    out: Masks = {}
    for name, _gran, mu, *_ in per_layer:
        keep_units = (~prune_flags[name]).float()[:, None]
        out[name] = (mu * keep_units).reshape(masks[name].shape).contiguous()
    return out


# --------------------------------------------------------------------------------------------------- IMP loop


def round_path(out_dir: Path, r: int, ext: str = ".pt") -> Path:
    return out_dir / f"round_{r:02d}{ext}"


def existing_rounds(out_dir: Path) -> dict[int, Path]:
    """Complete round files in ``out_dir`` (writes are atomic, so existing = complete), contiguous from 0."""
    found: dict[int, Path] = {}
    if out_dir.is_dir():
        for p in out_dir.iterdir():
            m = ROUND_RE.fullmatch(p.name)
            if m:
                found.setdefault(int(m.group(1)), p)
    out: dict[int, Path] = {}
    r = 0
    while r in found:
        out[r] = found[r]
        r += 1
    return out


def _settings(
    task: Task, image_name: str, fit_config: FitConfig, imp: ImpConfig, arch: Any, obs_seed: int
) -> dict[str, Any]:
    """What must stay the same for a resumed run to continue the same IMP sequence."""
    return {
        "task": task.name,
        "task_params": task.params(),
        "image": image_name,
        "seed": fit_config.seed,
        "observation_seed": obs_seed,
        "iters": fit_config.iters,
        "lr": fit_config.lr,
        "input_noise_std": fit_config.input_noise_std,
        "ema": fit_config.ema,
        "rate": imp.rate,
        "scope": imp.scope,
        "granularity": imp.granularity,
        "rewind_iter": imp.rewind_iter,
        "target": imp.fit_target(task),
        "random": imp.random,
        "arch": arch.to_dict(),
    }


def find_ticket(
    start: Ticket,
    clean: torch.Tensor,
    task: Task,
    out_dir: str | Path,
    imp: ImpConfig,
    fit_config: FitConfig | None = None,
    *,
    image_name: str = "image",
    obs_seed: int | None = None,
    ext: str = ".pt",
    progress: bool = False,
    on_round: Callable[[int, Path, FitResult], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[Path]:
    """Run IMP on ``clean`` (cropped to the network's stride) and write ``round_00`` .. ``round_{rounds}``.

    ``start``: the network to prune (its ``init`` is the original initialisation; its masks the starting point,
    normally dense). The observation is simulated from ``clean`` with ``obs_seed`` (default: the fit seed). Existing
    complete rounds in ``out_dir`` made with the same settings are kept and the run continues after the last one.
    Returns the paths of all round files up to ``imp.rounds``.
    """
    fit_config = fit_config or FitConfig()
    # Pruning ranks the fitted weights in the reference layout, which only the masked dense network keeps.
    fit_config = dataclasses.replace(fit_config, backend="dense")
    obs_seed = fit_config.seed if obs_seed is None else obs_seed
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    say = log or (lambda _msg: None)
    from . import __version__

    settings = _settings(task, image_name, fit_config, imp, start.arch, obs_seed)
    observation = simulate(task, clean, obs_seed)
    target = task.clean_target(clean) if imp.fit_target(task) == "clean" else observation
    if imp.rewind_iter > fit_config.iters:
        raise InputError(None, f"rewind iteration {imp.rewind_iter} is beyond the {fit_config.iters} iterations")

    done = existing_rounds(out_dir)
    original_init = start.init
    masks = start.masks
    prev: Ticket | None = None
    rewind_file = out_dir / f"rewind_iter_{imp.rewind_iter}.pt"
    rewind_state: dict[str, torch.Tensor] | None = None
    if done:
        first = load_ticket(done[0])
        _check_same(done[0], first.provenance.get("settings"), settings)
        original_init = first.init
        last_r = max(done)
        prev = load_ticket(done[last_r]) if last_r else first
        if prev.fitted is None:
            raise InputError(done[last_r], "round ticket holds no fitted weights: cannot continue from it")
        if imp.rewind_iter > 0:
            if not rewind_file.exists():
                raise InputError(rewind_file, "missing: cannot continue an IMP run with rewinding without it")
            rewind_state = torch.load(rewind_file, map_location="cpu", weights_only=True)
        rows = [_summary_row(r, p, load_ticket(p).provenance) for r, p in sorted(done.items())]
        say(f"{out_dir}: rounds 0-{last_r} already complete; continuing from round {last_r + 1}")
        start_round = last_r + 1
    else:
        start_round = 0
        rows = []

    for r in range(start_round, imp.rounds + 1):
        if r == 0:
            round_masks = masks
            init = original_init
        else:
            assert prev is not None and prev.fitted is not None
            # random baseline: one generator per round, so a resumed run equals an uninterrupted one
            gen = torch.Generator().manual_seed(fit_config.seed * 1000 + r)
            round_masks = prune(prev.fitted, prev.masks, imp.rate, imp.scope, imp.granularity, imp.random, gen)
            init = rewind_state if rewind_state is not None else original_init
        ticket = Ticket(arch=start.arch, init=init, masks=round_masks)
        snap = {imp.rewind_iter} if (r == 0 and imp.rewind_iter > 0) else set()
        result = fit(
            ticket,
            target,
            fit_config,
            gt=clean,
            task=task,
            progress=progress,
            description=f"round {r}/{imp.rounds} density {ticket.density:.4f}",
            snapshot_at=snap,
        )
        if r == 0 and imp.rewind_iter > 0:
            rewind_state = {k: v.cpu() for k, v in result.snapshots[imp.rewind_iter].items()}
            from .fileio import atomic_output

            with atomic_output(rewind_file) as tmp:
                torch.save(rewind_state, tmp)
        provenance = {
            "tool": "lipdeploy find",
            "lipdeploy_version": __version__,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "round": r,
            "density": round(ticket.density, 6),
            "sparsity": round(1 - ticket.density, 6),
            "init": "original initialisation"
            if (r == 0 or imp.rewind_iter == 0)
            else f"weights at iteration {imp.rewind_iter} of the dense fit (rewind point)",
            "parent": round_path(out_dir, r - 1, ext).name if r else None,
            "pruning": "random" if imp.random else f"{imp.scope} L1 magnitude",
            "psnr_best": result.psnr_best,
            "psnr_final": result.psnr_final,
            "ssim_best": result.ssim_best,
            "ssim_final": result.ssim_final,
            "psnr_measured": f"{task.metric_label}, vs the clean image; fit target: {settings['target']}",
            "fit_seconds": round(result.seconds, 2),
            "settings": settings,
            **{
                k: settings[k]
                for k in ("task", "image", "rate", "seed", "granularity", "scope", "rewind_iter", "iters")
            },
        }
        ticket = ticket.replace(fitted=result.state_dict, provenance=provenance)
        path = round_path(out_dir, r, ext)
        ticket.save(path)
        say(
            f"round {r}: density {ticket.density:.4f}, PSNR best {_fmt(result.psnr_best)} / final "
            f"{_fmt(result.psnr_final)} dB, {result.seconds:.1f} s -> {path}"
        )
        if on_round is not None:
            on_round(r, path, result)
        prev = ticket
        rows = [row for row in rows if row["round"] != r] + [_summary_row(r, path, provenance)]
        atomic_write_text(out_dir / "imp.json", json.dumps({"settings": settings, "rounds": rows}, indent=2) + "\n")
    return [p for r, p in sorted(existing_rounds(out_dir).items()) if r <= imp.rounds]


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _check_same(path: Path, old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> None:
    if old is None:
        raise InputError(path, "not written by 'lipdeploy find' (no settings in its provenance): use another folder")
    old_n, new_n = json.loads(json.dumps(old, default=str)), json.loads(json.dumps(new, default=str))
    diff = [k for k in new_n if old_n.get(k) != new_n.get(k)]
    if diff:
        k = diff[0]
        raise InputError(
            path,
            f"the folder holds rounds made with different settings ({k}: {old_n.get(k)!r} there, {new_n.get(k)!r} "
            "now); use another output folder",
        )


def _summary_row(r: int, path: Path, prov: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("density", "psnr_best", "psnr_final", "ssim_best", "ssim_final", "fit_seconds")
    return {"round": r, "file": path.name, **{k: prov.get(k) for k in keys}}


__all__ = ["ImpConfig", "PRUNERS", "existing_rounds", "find_ticket", "prune", "round_path"]

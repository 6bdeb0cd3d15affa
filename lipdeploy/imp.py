"""Finding lottery image priors by iterative magnitude pruning (IMP), as in the paper, with structured variants.

Round 0 fits the dense network; every later round prunes ``rate`` of the remaining convolution weights by the previous
round's fitted magnitudes, rewinds the kept weights to the initial ones (or to iteration k of the dense fit) and fits
again. Each round's ticket is written as ``round_XX.pt`` as soon as its fit ends, holding its masks, the rewind-point
weights as ``init``, its fitted weights (what the next round prunes from) and its provenance (including its PSNR), so
after k rounds the density is 0.8^k and ``round_00`` is the dense DIP itself. Rerunning continues after the last
complete round file (files are written atomically, so a file that exists is complete).

Pruning patterns come from the registry :data:`lipdeploy.patterns.PATTERNS` (``ImpConfig.granularity`` names one):
units are single weights (``unstructured``), whole k x k kernels (``kernel``) or whole output channels (``channel``),
or whatever a registered plug-in defines; a unit's score is its mean |w| over its positions (the L1 norm per weight),
so global pruning compares 1x1 and 3x3 kernels, and channels of different fan-in, fairly (a raw norm would empty the
small-fan-in layers first). ``random`` scores units at random: the random-pruning baseline at the same densities.
Targets count weights, not units, so densities follow 0.8^k at every granularity (up to one unit). Every layer keeps
at least its best unit, and the output convolution is never pruned by output channel (that would delete a colour):
under ``channel`` it is pruned by kernel.

Two patterns score differently (each module's docstring says why). ``block`` (16 x 16 channels of one kernel tap;
``block32x16`` and ``block16x8`` too) ranks blocks by the RMS of their weights (the L2 norm per element), so edge
blocks of layers whose channel counts are not multiples of the block compete fairly with full ones; its block size is
recorded in the settings and provenance as ``block: [Bo, Bi]``. ``channel`` divides each layer's scores by their
mean and keeps a minimum width per layer, so that global ranking cannot drain the decoder to one channel; its settings
name that rule (``channel_rule``), so a folder of channel rounds made by another rule is not continued with it.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from . import __version__
from .errors import InputError
from .fileio import atomic_output, atomic_write_text
from .fit import MASKED, FitConfig, FitResult, fit, simulate
from .masks import Mask, Masks
from .multi_image import image_records, stack_observations
from .patterns import PATTERNS, get_pattern
from .patterns import prune as prune_by_pattern
from .runlock import folder_locked, image_digest, load_rewind_state, resume_settings
from .tasks import Observation, Task
from .ticket import Ticket, load_ticket

Scope = Literal["global", "layer"]
Granularity = str  # a name registered in lipdeploy.patterns.PATTERNS
Target = Literal["paper", "clean", "observation"]
ROUND_RE = re.compile(r"round_(\d+)\.(pt|safetensors)$")
Log = Callable[[str], None]


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
        if self.granularity not in PATTERNS:
            names = ", ".join(sorted(PATTERNS))
            raise InputError(None, f"granularity must be one of {names}, got {self.granularity!r}")

    def fit_target(self, task: Task) -> str:
        """'clean' or 'observation': the paper fits the clean image for denoising, the observation otherwise."""
        if self.target == "paper":
            return "clean" if task.name == "denoise" else "observation"
        return self.target


# --------------------------------------------------------------------------------------------------- pruning


def prune(
    weights: Mapping[str, torch.Tensor],
    masks: Masks,
    rate: float,
    scope: Scope = "global",
    granularity: Granularity = "unstructured",
    random: bool = False,
    generator: torch.Generator | None = None,
) -> Mask:
    """New masks with ``rate`` of the currently kept weights removed, lowest-scoring units of the pattern called
    ``granularity`` first (see :func:`lipdeploy.patterns.prune`; the output layer is the last one).

    ``weights``: the (fitted) weights to score, by prunable name; ``masks``: the current masks (same names). With
    ``scope="global"`` units of all layers compete; with ``"layer"`` each layer loses ``rate`` of its own weights.
    """
    return prune_by_pattern(weights, masks, rate, get_pattern(granularity), scope, random, generator)


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
    task: Task, image_name: str | list[str], fit_config: FitConfig, imp: ImpConfig, arch: Any, obs_seed: int
) -> dict[str, Any]:
    """What must stay the same for a resumed run to continue the same IMP sequence."""
    extra = get_pattern(imp.granularity).settings()  # {} for most patterns, so their earlier runs still resume
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
        **extra,
    }


def _image_list(
    clean: torch.Tensor | Sequence[torch.Tensor], image_name: str | Sequence[str]
) -> tuple[list[torch.Tensor], list[str]]:
    """The images to fit (each ``[1, 3, H, W]``) and their names, checked: as many names as images, one size."""
    if isinstance(clean, torch.Tensor):
        images = list(clean.split(1)) if clean.dim() == 4 and clean.shape[0] > 1 else [clean]
    else:
        images = list(clean)
    names = [image_name] if isinstance(image_name, str) else [str(n) for n in image_name]
    if not images:
        raise InputError(None, "no images to fit")
    if len(images) > 1 and len(names) == 1:
        names = [f"{names[0]}[{i}]" for i in range(len(images))]
    if len(names) != len(images):
        raise InputError(None, f"{len(names)} image names for {len(images)} images")
    sizes = {tuple(img.shape[2:]) for img in images}
    if len(sizes) > 1:
        listed = ", ".join(f"{n} {img.shape[3]}x{img.shape[2]}" for n, img in zip(names, images, strict=True))
        raise InputError(None, f"the images must have one size to be fitted together ({listed}); see common_size")
    return images, names


@dataclass
class _Problem:
    """What every round fits: the ground truth (the images, one batch), the fit target, the resume settings."""

    clean: torch.Tensor
    target: Observation
    settings: dict[str, Any]
    images: list[torch.Tensor]
    names: list[str]

    @property
    def multi(self) -> bool:
        return len(self.images) > 1


@dataclass
class _Chain:
    """Where the round chain stands: the original initialisation, the last round written, the rewind-point weights,
    the summary rows so far and the next round to fit."""

    original_init: dict[str, torch.Tensor]
    prev: Ticket | None = None
    rewind_state: dict[str, torch.Tensor] | None = None
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    next_round: int = 0


def _output_folder(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def _imp_fit_config(fit_config: FitConfig, multi: bool) -> FitConfig:
    """``fit_config`` on the masked network (pruning ranks the fitted weights in the reference layout, which only
    the masked network keeps); several images on the eager step (the captured step tracks one ground truth)."""
    fit_config = dataclasses.replace(fit_config, backend=MASKED)
    if multi and fit_config.capture == "auto":
        return dataclasses.replace(fit_config, capture="off")
    if multi and fit_config.capture != "off":
        capture = fit_config.capture
        raise InputError(None, f"several images are fitted by the eager step only, not capture {capture!r}")
    return fit_config


def _problem(
    task: Task,
    images: list[torch.Tensor],
    names: list[str],
    fit_config: FitConfig,
    imp: ImpConfig,
    arch: Any,
    obs_seed: int,
) -> _Problem:
    """The ground truth, the fit target (the clean image for denoising by the paper's rule, else the simulated
    observation; image i's with seed ``obs_seed + i``) and the settings a resumed run must match."""
    if len(images) == 1:
        clean = images[0]
        settings = _settings(task, names[0], fit_config, imp, arch, obs_seed)
        settings.update(resume_settings(clean, fit_config))  # the image's content and every fit setting
        observation = simulate(task, clean, obs_seed)
        target = task.clean_target(clean) if imp.fit_target(task) == "clean" else observation
        return _Problem(clean, target, settings, images, names)
    clean = torch.cat(images)  # the ground truth: PSNR/SSIM are the mean over images
    settings = _settings(task, names, fit_config, imp, arch, obs_seed)
    settings.update(resume_settings(clean, fit_config))
    settings["image_sha256"] = [image_digest(img) for img in images]
    if imp.fit_target(task) == "clean":
        target = stack_observations([task.clean_target(img) for img in images])
    else:
        target = stack_observations([simulate(task, img, obs_seed + i) for i, img in enumerate(images)])
    return _Problem(clean, target, settings, images, names)


def _resume(
    out_dir: Path, start: Ticket, settings: Mapping[str, Any], imp: ImpConfig, rewind_file: Path, say: Log
) -> _Chain:
    """The chain to continue: a fresh one, or after the complete rounds in ``out_dir`` (made with ``settings``, else
    refused), with their rewind-point weights when rewinding."""
    done = existing_rounds(out_dir)
    if not done:
        return _Chain(original_init=start.init)
    first = load_ticket(done[0])
    check_same_settings(done[0], first.provenance.get("settings"), settings)
    last_r = max(done)
    prev = load_ticket(done[last_r]) if last_r else first
    if prev.fitted is None:
        raise InputError(done[last_r], "round ticket holds no fitted weights: cannot continue from it")
    rewind_state = None
    if imp.rewind_iter > 0:
        if not rewind_file.exists():
            raise InputError(rewind_file, "missing: cannot continue an IMP run with rewinding without it")
        rewind_state = load_rewind_state(rewind_file)
    rows = [_summary_row(r, p, load_ticket(p).provenance) for r, p in sorted(done.items())]
    if last_r >= imp.rounds:
        say(f"{out_dir}: rounds 0-{last_r} already complete, nothing to do (more rounds continue the chain)")
    else:
        say(f"{out_dir}: rounds 0-{last_r} already complete; continuing from round {last_r + 1}")
    return _Chain(first.init, prev, rewind_state, rows, last_r + 1)


def _round_ticket(r: int, start: Ticket, chain: _Chain, imp: ImpConfig, seed: int) -> Ticket:
    """Round ``r``'s ticket before its fit: round 0 the start; later rounds prune the previous round's fitted weights
    and rewind the kept ones (to the original initialisation or the rewind point)."""
    if r == 0:
        return Ticket(arch=start.arch, init=chain.original_init, masks=start.masks)
    prev = chain.prev
    assert prev is not None and prev.fitted is not None
    # random baseline: one generator per round, so a resumed run equals an uninterrupted one
    gen = torch.Generator().manual_seed(seed * 1000 + r)
    masks = prune(prev.fitted, prev.masks, imp.rate, imp.scope, imp.granularity, imp.random, gen)
    init = chain.rewind_state if chain.rewind_state is not None else chain.original_init
    return Ticket(arch=start.arch, init=init, masks=masks)


def _save_rewind(rewind_file: Path, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The rewind-point weights on the CPU, written (atomically) to ``rewind_file``."""
    rewind_state = {k: v.cpu() for k, v in weights.items()}
    with atomic_output(rewind_file) as tmp:
        torch.save(rewind_state, tmp)
    return rewind_state


PROVENANCE_SETTINGS = (
    "task", "image", "rate", "seed", "granularity", "scope", "rewind_iter", "iters", "block", "channel_rule",
)  # fmt: skip
"""The settings a round's provenance repeats at its top level (those in the run's settings)."""


def _provenance(
    r: int, ticket: Ticket, result: FitResult, imp: ImpConfig, problem: _Problem, task: Task, parent: str | None
) -> dict[str, Any]:
    """Round ``r``'s provenance: the tool, its density, how it was initialised and pruned, its metrics, the run's
    settings (and the images of a multi-image run)."""
    settings = problem.settings
    return {
        "tool": "lipdeploy find",
        "lipdeploy_version": __version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "round": r,
        "density": round(ticket.density, 6),
        "sparsity": round(1 - ticket.density, 6),
        "init": "original initialisation"
        if (r == 0 or imp.rewind_iter == 0)
        else f"weights at iteration {imp.rewind_iter} of the dense fit (rewind point)",
        "parent": parent,
        "pruning": "random" if imp.random else f"{imp.scope} {get_pattern(imp.granularity).score_name}",
        "psnr_best": result.psnr_best,
        "psnr_final": result.psnr_final,
        "ssim_best": result.ssim_best,
        "ssim_final": result.ssim_final,
        "psnr_measured": f"{task.metric_label}, vs the clean image; fit target: {settings['target']}",
        "fit_seconds": round(result.seconds, 2),
        "settings": settings,
        **({"images": image_records(problem.names, problem.images)} if problem.multi else {}),
        **{k: settings[k] for k in PROVENANCE_SETTINGS if k in settings},
    }


@folder_locked("out_dir")
def find_ticket(
    start: Ticket,
    clean: torch.Tensor | Sequence[torch.Tensor],
    task: Task,
    out_dir: str | Path,
    imp: ImpConfig,
    fit_config: FitConfig | None = None,
    *,
    image_name: str | Sequence[str] = "image",
    obs_seed: int | None = None,
    ext: str = ".pt",
    progress: bool = False,
    on_round: Callable[[int, Path, FitResult], None] | None = None,
    log: Log | None = None,
) -> list[Path]:
    """Run IMP on ``clean`` (cropped to the network's stride) and write ``round_00`` .. ``round_{rounds}``.

    ``start``: the network to prune (its ``init`` is the original initialisation; its masks the starting point,
    normally dense). The observation is simulated from ``clean`` with ``obs_seed`` (default: the fit seed). Existing
    complete rounds in ``out_dir`` made with the same settings are kept and the run continues after the last one.
    Returns the paths of all round files up to ``imp.rounds``. Every round fits the masked network (backend
    ``"masked"``, whatever ``fit_config.backend`` says): pruning ranks the fitted weights in the reference layout.

    Several images (the paper's multi-image IMP; ``clean`` a list of ``[1, 3, H, W]`` images of one size, e.g. from
    :func:`lipdeploy.multi_image.common_size`, ``image_name`` a list of as many names): one network and one noise
    input fit them all, the loss being the sum of the per-image MSEs, and each round prunes one mask for all of them.
    Image i's observation is simulated with seed ``obs_seed + i``; the PSNR/SSIM recorded are the mean over images.
    The settings (what a resumed run must match) hold the list of names and of content hashes, and each ticket's
    provenance lists the images (``images``: name, sha256, size). A single image (a tensor, or a list of one) runs
    exactly as before and writes the same settings and provenance.
    """
    fit_config = fit_config or FitConfig()
    obs_seed = fit_config.seed if obs_seed is None else obs_seed
    out_dir = _output_folder(out_dir)
    say = log or (lambda _msg: None)
    images, names = _image_list(clean, image_name)
    fit_config = _imp_fit_config(fit_config, multi=len(images) > 1)
    problem = _problem(task, images, names, fit_config, imp, start.arch, obs_seed)
    if imp.rewind_iter > fit_config.iters:
        raise InputError(None, f"rewind iteration {imp.rewind_iter} is beyond the {fit_config.iters} iterations")
    rewind_file = out_dir / f"rewind_iter_{imp.rewind_iter}.pt"
    chain = _resume(out_dir, start, problem.settings, imp, rewind_file, say)
    for r in range(chain.next_round, imp.rounds + 1):
        ticket = _round_ticket(r, start, chain, imp, fit_config.seed)
        snap = {imp.rewind_iter} if (r == 0 and imp.rewind_iter > 0) else set()
        result = fit(
            ticket,
            problem.target,
            fit_config,
            gt=problem.clean,
            task=task,
            progress=progress,
            description=f"round {r}/{imp.rounds} density {ticket.density:.4f}",
            snapshot_at=snap,
        )
        if r == 0 and imp.rewind_iter > 0:
            chain.rewind_state = _save_rewind(rewind_file, result.snapshots[imp.rewind_iter])
        parent = round_path(out_dir, r - 1, ext).name if r else None
        provenance = _provenance(r, ticket, result, imp, problem, task, parent)
        ticket = ticket.replace(fitted=result.state_dict, provenance=provenance)
        path = round_path(out_dir, r, ext)
        ticket.save(path)
        say(
            f"round {r}: density {ticket.density:.4f}, PSNR best {_fmt(result.psnr_best)} / final "
            f"{_fmt(result.psnr_final)} dB, {result.seconds:.1f} s -> {path}"
        )
        if on_round is not None:
            on_round(r, path, result)
        chain.prev = ticket
        chain.rows = [row for row in chain.rows if row["round"] != r] + [_summary_row(r, path, provenance)]
        summary = {"settings": problem.settings, "rounds": chain.rows}
        atomic_write_text(out_dir / "imp.json", json.dumps(summary, indent=2) + "\n")
    return [p for r, p in sorted(existing_rounds(out_dir).items()) if r <= imp.rounds]


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def check_same_settings(
    path: Path, old: Mapping[str, Any] | None, new: Mapping[str, Any], command: str = "lipdeploy find"
) -> None:
    """Refuse to resume a chain in a folder whose first round (``path``) was made with other settings."""
    if old is None:
        raise InputError(path, f"not written by '{command}' (no settings in its provenance): use another folder")
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


__all__ = ["ImpConfig", "existing_rounds", "find_ticket", "prune", "round_path"]

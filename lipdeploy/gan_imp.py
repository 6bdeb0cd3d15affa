"""GAN IMP: lottery tickets of a pre-trained generator, found as the paper's PGAN_random_IMP.py means to find them.

Per round r (round 0 is the dense pair): retrain G and D from the *pre-trained* weights under their masks with WGAN-GP
(:mod:`lipdeploy.gan_train`); then prune 20% of the remaining weights of the inner Conv2d of every equalized conv, of
G and of D, each network ranked globally by magnitude (linear layers and biases never; ``random``: the random
baseline at the same per-round counts), and rewind both to the pre-trained weights for the next round. G's density
after r rounds is 0.8^r: 20, 36, 48.8, 59, 67.2, 73.8, 79% sparsity after 1-7 rounds. (The published script prunes at
random whatever its option says, saves empty state dicts and drops D's fromRGB masks on rewind: DOMAIN.md.)

Each round writes ``round_XX.discriminator.pt`` (D's masks and retrained weights, plain tensors) and then
``round_XX.pt``: a generator ticket (the pre-trained weights as ``init``, the retrained ones as ``fitted``, G's masks,
provenance with D's density, the losses, the data hash and every setting). The ticket is written last, so a round is
complete when its ticket exists; a rerun with the same settings continues after the last complete round.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .discriminator import DiscriminatorSpec, discriminator_state, prunable_discriminator_names
from .errors import InputError
from .fileio import atomic_output, atomic_write_text
from .gan_train import GanTrainConfig, train_wgan_gp
from .generator import PGANSpec
from .generator_files import GeneratorCheckpoint, is_checkpoint_content
from .imp import check_same_settings, existing_rounds, prune, round_path
from .runlock import folder_locked, image_digest
from .ticket import Ticket, load_ticket, read_tensor_file

DISCRIMINATOR_FORMAT = "lipdeploy.discriminator-round"
StateDict = dict[str, torch.Tensor]


@dataclasses.dataclass(frozen=True)
class DiscriminatorStart:
    """The discriminator GAN IMP retrains: its spec, its pre-trained (or freshly initialised) weights, and where
    they come from (``"checkpoint"`` or ``"fresh, seed S"``)."""

    spec: DiscriminatorSpec
    state: StateDict
    origin: str


def fresh_discriminator(spec: DiscriminatorSpec, seed: int) -> DiscriminatorStart:
    """A newly initialised discriminator (the zoo's N(0, 1) weights) from ``seed``."""
    torch.manual_seed(seed)  # init_equalized_ draws from the global generator, as the zoo does
    model = spec.build()
    return DiscriminatorStart(
        spec, {k: v.detach().clone() for k, v in model.state_dict().items()}, f"fresh, seed {seed}"
    )


def checkpoint_discriminator(path: Path, spec: PGANSpec, fresh: bool, seed: int) -> DiscriminatorStart:
    """The discriminator of the generator file ``path`` (its ``netD``), or a fresh one when ``fresh``."""
    content, _ = read_tensor_file(path)
    if fresh:
        return fresh_discriminator(_matching_spec(spec), seed)
    if not is_checkpoint_content(content) or "netD" not in content:
        raise InputError(path, "holds no discriminator (netD), which GAN IMP retrains with the generator; pass "
                         "--fresh-discriminator to start one from scratch")  # fmt: skip
    checkpoint = GeneratorCheckpoint.from_content(path, content)
    state = discriminator_state(checkpoint.nets["netD"])
    try:
        d_spec = DiscriminatorSpec.from_config(checkpoint.config, state)
        model = d_spec.build()
        model.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        problem = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise InputError(path, f"its netD does not match the discriminator its config describes ({problem})") from None
    return DiscriminatorStart(d_spec, {k: v.detach().clone() for k, v in model.state_dict().items()}, "checkpoint")


def _matching_spec(spec: PGANSpec) -> DiscriminatorSpec:
    """The zoo's discriminator for a generator: the same widths and growth, minibatch stddev on (the celebA-HQ
    configs' choice)."""
    return DiscriminatorSpec(
        depth_scale0=spec.depth_scale0, depth_other_scales=spec.depth_other_scales, alpha=spec.alpha,
        leaky_relu_leak=spec.leaky_relu_leak, dim_input=spec.dim_output, minibatch_stddev=True,
        equalized_lr=spec.equalized_lr,
    )  # fmt: skip


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the names, shapes and float32 values of a state dict (what a resumed run must start from)."""
    h = hashlib.sha256()
    for key in sorted(state):
        value = state[key].detach().cpu().contiguous()
        h.update(f"{key}{tuple(value.shape)}".encode())
        h.update(value.to(torch.float32).numpy().tobytes() if value.is_floating_point() else value.numpy().tobytes())
    return h.hexdigest()


def discriminator_path(out_dir: Path, r: int) -> Path:
    return out_dir / f"round_{r:02d}.discriminator.pt"


def _save_discriminator(path: Path, masks: Mapping[str, torch.Tensor], fitted: StateDict) -> None:
    packed = {f"mask/{k}": torch.from_numpy(np.packbits(v.reshape(-1).numpy().astype(bool))) for k, v in masks.items()}
    record = {
        "format": DISCRIMINATOR_FORMAT,
        "shapes": {k: list(v.shape) for k, v in masks.items()},
        "tensors": {**packed, **{f"fitted/{k}": v.detach().cpu().contiguous() for k, v in fitted.items()}},
    }
    with atomic_output(path) as tmp:
        torch.save(record, tmp)


def load_discriminator_round(path: Path, spec: DiscriminatorSpec) -> tuple[StateDict, StateDict]:
    """D's masks and retrained weights from a round's discriminator file, checked against ``spec``."""
    content, _ = read_tensor_file(path)
    if content.get("format") != DISCRIMINATOR_FORMAT or not isinstance(content.get("tensors"), dict):
        raise InputError(path, "not a discriminator round file of lipdeploy find --generator")
    with torch.device("meta"):
        ref = spec.build().state_dict()
    tensors = content["tensors"]
    masks: StateDict = {}
    for name in prunable_discriminator_names(spec.build()):
        bits = tensors.get(f"mask/{name}")
        shape = ref[name].shape
        if not isinstance(bits, torch.Tensor) or bits.numel() * 8 < shape.numel():
            raise InputError(path, f"no mask of the right size for {name!r}")
        flat = np.unpackbits(bits.numpy().astype(np.uint8), count=shape.numel())
        masks[name] = torch.from_numpy(flat.astype(np.float32)).reshape(shape)
    fitted = {k[len("fitted/") :]: v for k, v in tensors.items() if k.startswith("fitted/")}
    if set(fitted) != set(ref) or any(tuple(fitted[k].shape) != tuple(ref[k].shape) for k in ref):
        raise InputError(path, "its discriminator weights do not match the discriminator's architecture")
    return masks, fitted


def _settings(generator: Ticket, disc: DiscriminatorStart, data: torch.Tensor, data_name: str, rate: float,
              random: bool, train: GanTrainConfig) -> dict[str, Any]:  # fmt: skip
    """What a resumed run must share with the rounds already in the folder."""
    return {
        "method": "GAN IMP (WGAN-GP retraining, G and D pruned each globally by magnitude, rewind to pre-trained)",
        "generator_arch": generator.arch.to_dict(),
        "generator_sha256": state_digest(generator.init),
        "discriminator_arch": disc.spec.to_dict(),
        "discriminator": disc.origin,
        "discriminator_sha256": state_digest(disc.state),
        "data": data_name,
        "data_images": int(data.shape[0]),
        "data_sha256": image_digest(data),
        "rate": rate,
        "random": random,
        "train": {k: v for k, v in train.to_dict().items() if k != "device"},
    }


@folder_locked("out_dir")
def find_gan_ticket(
    generator: Ticket,
    disc: DiscriminatorStart,
    data: torch.Tensor,
    out_dir: str | Path,
    rounds: int,
    train: GanTrainConfig,
    *,
    rate: float = 0.2,
    random: bool = False,
    data_name: str = "images",
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    ext: str = ".pt",
) -> list[Path]:
    """Run GAN IMP (module docstring) on ``data`` (``[N, 3, R, R]`` on [-1, 1]) into ``out_dir``: rounds 0..rounds.

    ``generator``: the pre-trained generator as a dense ticket (its ``init`` the weights every round rewinds to);
    ``disc``: the discriminator to retrain beside it; ``ext``: the tickets' format (``.pt`` or ``.safetensors``; the
    discriminator files are ``.pt``). Returns the round tickets' paths.
    """
    if rounds < 0:
        raise InputError(None, f"rounds must be >= 0, got {rounds}")
    if not 0 < rate < 1:
        raise InputError(None, f"pruning rate must be in (0, 1), got {rate}")
    res = generator.arch.resolution
    if tuple(data.shape[1:]) != (generator.arch.dim_output, res, res):
        raise InputError(
            None, f"training images must be {generator.arch.dim_output}x{res}x{res}, got {list(data.shape[1:])}"
        )
    if disc.spec.resolution != res:
        raise InputError(
            None, f"the discriminator judges {disc.spec.resolution}-pixel images, the generator makes {res}"
        )
    out_dir = Path(out_dir)
    say = log or (lambda _msg: None)
    settings = _settings(generator, disc, data, data_name, rate, random, train)
    done = existing_rounds(out_dir)
    g_masks = {k: torch.ones_like(v) for k, v in generator.masks.items()}
    d_masks = {k: torch.ones_like(disc.state[k]) for k in prunable_discriminator_names(disc.spec.build())}
    prev: tuple[StateDict, StateDict] | None = None  # the last round's retrained G and D
    start = 0
    rows = []
    if done:
        first = load_ticket(done[0])
        check_same_settings(done[0], first.provenance.get("settings"), settings, "lipdeploy find --generator")
        last = max(done)
        last_ticket = load_ticket(done[last])
        d_file = discriminator_path(out_dir, last)
        if last_ticket.fitted is None or not d_file.is_file():
            raise InputError(done[last], "round is incomplete (no retrained weights or no discriminator file)")
        d_masks, d_fitted = load_discriminator_round(d_file, disc.spec)
        g_masks, prev = last_ticket.masks, (last_ticket.fitted, d_fitted)
        rows = [_summary_row(k, p, load_ticket(p).provenance) for k, p in sorted(done.items())]
        start = last + 1
        say(f"{out_dir}: rounds 0-{last} already complete" + ("" if last < rounds else ", nothing to do"))
    for r in range(start, rounds + 1):
        if prev is not None:
            gen = torch.Generator().manual_seed(train.seed * 1000 + r)  # random baseline: one generator per round
            g_masks = prune(prev[0], g_masks, rate, "global", "unstructured", random, gen)
            d_masks = prune(prev[1], d_masks, rate, "global", "unstructured", random, gen)
        g_fit, d_fit, row = _round(
            generator, disc, data, out_dir, r, rounds, g_masks, d_masks, train, settings, progress, say, ext
        )
        prev = (g_fit, d_fit)
        rows.append(row)
        atomic_write_text(out_dir / "imp.json", json.dumps({"settings": settings, "rounds": rows}, indent=2) + "\n")
    return [p for r, p in sorted(existing_rounds(out_dir).items()) if r <= rounds]


def _round(generator, disc, data, out_dir, r, rounds, g_masks, d_masks, train, settings, progress, say, ext):
    """Retrain the rewound pair under the round's masks, write the discriminator file and then the ticket."""
    g_model = generator.arch.build()
    g_model.load_state_dict(generator.init)
    d_model = disc.spec.build()
    d_model.load_state_dict(disc.state)
    ticket = Ticket(arch=generator.arch, init=generator.init, masks=g_masks)
    d_density = sum(float(m.sum()) for m in d_masks.values()) / sum(m.numel() for m in d_masks.values())
    losses = train_wgan_gp(
        g_model, d_model, data, train, g_masks=g_masks, d_masks=d_masks, progress=progress,
        description=f"round {r}/{rounds} density {ticket.density:.4f}",
    )  # fmt: skip
    g_fitted = {k: v.detach().cpu().clone() for k, v in g_model.state_dict().items()}
    d_fitted = {k: v.detach().cpu().clone() for k, v in d_model.state_dict().items()}
    from . import __version__  # the package's own version: lipdeploy/__init__ imports the public API (cycle)

    provenance = {
        "tool": "lipdeploy find --generator",
        "lipdeploy_version": __version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "round": r,
        "density": round(ticket.density, 6),
        "sparsity": round(1 - ticket.density, 6),
        "discriminator_density": round(d_density, 6),
        "discriminator_file": discriminator_path(out_dir, r).name,
        "init": "the pre-trained generator (every round rewinds to it)",
        "fitted": f"retrained under the masks: {train.epochs} epochs of WGAN-GP",
        "parent": round_path(out_dir, r - 1, ext).name if r else None,
        "pruning": "random" if settings["random"] else "global magnitude, G and D each",
        "losses": losses,
        "settings": settings,
    }
    _save_discriminator(discriminator_path(out_dir, r), d_masks, d_fitted)
    ticket = ticket.replace(fitted=g_fitted, provenance=provenance)
    path = round_path(out_dir, r, ext)
    ticket.save(path)
    say(f"round {r}: G density {ticket.density:.4f}, D density {d_density:.4f}, W {losses['wasserstein']:.4f}, "
        f"{losses['seconds']:.1f} s -> {path}")  # fmt: skip
    return g_fitted, d_fitted, _summary_row(r, path, provenance)


def _summary_row(r: int, path: Path, prov: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("density", "discriminator_density", "losses")
    return {"round": r, "file": path.name, **{k: prov.get(k) for k in keys}}


__all__ = [
    "DiscriminatorStart",
    "checkpoint_discriminator",
    "discriminator_path",
    "find_gan_ticket",
    "fresh_discriminator",
    "load_discriminator_round",
    "state_digest",
]

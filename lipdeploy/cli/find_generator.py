"""``lipdeploy find --generator``: GAN IMP (:mod:`lipdeploy.gan_imp`) on a pre-trained progressive GAN.

The discriminator comes from the checkpoint's ``netD`` (the zoo's DNet, :mod:`lipdeploy.discriminator`); a file
without one is refused unless ``--fresh-discriminator`` starts D from the zoo's initialisation (seeded by --seed).
Training images: ``--data DIR`` or ``skimage:lfw_faces[:train|:test]`` (the demo generator's default: its training
faces), fitted to the generator's resolution.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..discriminator import DiscriminatorSpec, discriminator_state
from ..errors import InputError
from ..faces import FACES_PREFIX, training_images
from ..gan_imp import DiscriminatorStart, find_gan_ticket, fresh_discriminator
from ..gan_train import GanTrainConfig
from ..generator import PGANSpec
from ..generator_files import GeneratorCheckpoint, is_checkpoint_content
from ..generator_prior import load_generator
from ..runlock import check_output_folder
from ..ticket import read_tensor_file
from .generator_options import GeneratorSource
from .options import Reporter

EXAMPLE_DATA = f"{FACES_PREFIX}:train"  # the demo generator's training faces


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


def find_with_generator(
    *,
    source: GeneratorSource,
    net: str | None,
    data: str | None,
    out_dir: Path,
    rounds: int,
    rate: float,
    epochs: int,
    batch: int,
    lr: float,
    random: bool,
    fresh: bool,
    seed: int,
    device: str,
    quiet: bool,
    as_json: bool,
    ext: str = ".pt",
) -> None:
    """The ``find`` command for ``--generator`` / ``--example-generator`` (module docstring)."""
    log = Reporter()
    train = GanTrainConfig(epochs=epochs, batch=batch, lr=lr, seed=seed, device=device)
    check_output_folder(out_dir)
    gen_path = source.path()
    if data is None:
        if not source.example:
            raise InputError(None, "GAN IMP needs training images: --data DIR or --data skimage:lfw_faces")
        data = EXAMPLE_DATA
    generator = load_generator(gen_path, net)
    disc = checkpoint_discriminator(gen_path, generator.arch, fresh, seed)
    images = training_images(data, generator.arch.resolution)
    res = generator.arch.resolution
    log(f"GAN IMP on {Path(gen_path).name} ({res}x{res}), {images.shape[0]} images from {data}, discriminator "
        f"{disc.origin}: rounds 0-{rounds}, {epochs} epochs each, into {out_dir}")  # fmt: skip
    paths = find_gan_ticket(
        generator, disc, images, out_dir, rounds, train, rate=rate, random=random, data_name=str(data),
        progress=not (quiet or as_json) and sys.stderr.isatty(), log=log, ext=ext,
    )  # fmt: skip
    if as_json:
        click.echo((out_dir / "imp.json").read_text() if (out_dir / "imp.json").is_file() else json.dumps([]))
        return
    click.echo(f"{len(paths)} round tickets in {out_dir} (summary: {out_dir / 'imp.json'})")


__all__ = ["checkpoint_discriminator", "find_with_generator"]

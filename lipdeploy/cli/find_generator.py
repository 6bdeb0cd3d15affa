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

from ..errors import InputError
from ..faces import FACES_PREFIX, training_images
from ..gan_imp import checkpoint_discriminator, find_gan_ticket
from ..gan_train import GanTrainConfig
from ..generator_prior import load_generator
from ..runlock import check_output_folder
from .generator_options import GeneratorSource
from .options import Reporter

EXAMPLE_DATA = f"{FACES_PREFIX}:train"  # the demo generator's training faces


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


__all__ = ["find_with_generator"]

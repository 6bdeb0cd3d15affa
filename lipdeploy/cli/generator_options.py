"""Options of the commands that use a pre-trained generator as the prior: the generator file, compressive sensing.

Declared once here and passed to a command as one object each (``source: GeneratorSource``, ``sensing: SensingSpec``),
as :mod:`lipdeploy.cli.options` does for the DIP prior and the task. Help texts of the fitting settings are the
library's own (:meth:`lipdeploy.latent_fit.LatentFitConfig.help` would import torch: they are repeated here short).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from ..bundled import require_bundled_generator
from ..errors import InputError


@dataclass(frozen=True)
class GeneratorSource:
    """Which generator a command uses: ``--generator G.pth`` or ``--example-generator`` (the bundled demo)."""

    generator: Path | None = None
    example: bool = False

    @property
    def given(self) -> bool:
        return self.generator is not None or self.example

    def path(self) -> Path:
        """The generator file (the bundled one for ``--example-generator``), checked to exist."""
        if self.generator is not None and self.example:
            raise InputError(None, "give --generator or --example-generator, not both")
        if self.example:
            return require_bundled_generator()
        if self.generator is None:
            raise InputError(None, "no generator given: --generator G.pth or --example-generator")
        return self.generator


def generator_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--generator G.pth`` / ``--example-generator``, passed to the command as ``source: GeneratorSource``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, generator: Path | None, example_generator: bool, **kwargs: Any) -> Any:
        return fn(*args, source=GeneratorSource(generator, example_generator), **kwargs)

    wrapper = click.option(
        "--example-generator",
        is_flag=True,
        help="Use the bundled demo generator (16x16 faces, trained by python -m lipdeploy.demo_generator) as "
        "--generator.",
    )(wrapper)
    return click.option(
        "--generator",
        type=click.Path(path_type=Path, readable=False),
        default=None,
        help="Pre-trained progressive-GAN generator (pytorch_GAN_zoo checkpoint {'config', 'netG', 'netD', 'avgG'}).",
    )(wrapper)


@dataclass(frozen=True)
class SensingSpec:
    """Compressive sensing and latent fitting as given on the command line (None: the default)."""

    measurements: int | None = None
    noise_sigma: float = 0.01
    outliers: int = 0
    objective: str = "ls"
    mom_batch: int = 20
    z_penalty: float = 0.0
    restarts: int = 1
    operator: str = "gaussian"
    measurements_file: Path | None = None


_SENSING_FIELDS = (
    "measurements",
    "noise_sigma",
    "outliers",
    "objective",
    "mom_batch",
    "z_penalty",
    "restarts",
    "operator",
    "measurements_file",
)


def sensing_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The compressive sensing flags, passed to the command as ``sensing: SensingSpec``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        values = {f: kwargs.pop(f) for f in _SENSING_FIELDS}
        return fn(*args, sensing=SensingSpec(**values), **kwargs)

    decorators = [
        click.option(
            "--measurements",
            type=int,
            default=None,
            show_default="a quarter of the image's 3 x R x R values",
            help="cs: measurement rows M in all (the --outliers among them).",
        ),
        click.option(
            "--noise-sigma", type=float, default=0.01, show_default=True, help="cs: std of the measurement noise."
        ),
        click.option(
            "--outliers",
            type=int,
            default=0,
            show_default=True,
            help="cs: rows of ones measuring 1e4 among the M (the paper's corruption: 20 of 1000).",
        ),
        click.option(
            "--objective",
            type=click.Choice(["ls", "mom"]),
            default="ls",
            show_default=True,
            help="Generator prior: ls = mean squared residual (+ --z-penalty); mom = median-of-means min-max (robust).",
        ),
        click.option("--mom-batch", type=int, default=20, show_default=True, help="mom: measurement rows per block."),
        click.option(
            "--z-penalty", type=float, default=0.0, show_default=True, help="ls: weight of |z|^2 (Bora et al.: 0.001)."
        ),
        click.option(
            "--restarts",
            type=int,
            default=1,
            show_default=True,
            help="Generator prior: initial latents fitted together; the lowest measurement loss is kept.",
        ),
        click.option(
            "--operator",
            type=click.Choice(["gaussian", "orthogonal"]),
            default="gaussian",
            show_default=True,
            help="cs: gaussian = stored randn/sqrt(M) matrix (the paper's; M x 3R^2 floats); orthogonal = random "
            "signs + orthonormal FFT, M rows subsampled (no stored matrix, for large images).",
        ),
        click.option(
            "--measurements-file",
            type=click.Path(path_type=Path, readable=False),
            default=None,
            help="cs: measurements written by --simulate (OUT.measurements.pt) instead of simulating them.",
        ),
    ]
    out = wrapper
    for deco in reversed(decorators):
        out = deco(out)
    return out


__all__ = ["GeneratorSource", "SensingSpec", "generator_options", "sensing_options"]

"""``lipdeploy restore --generator``: compressive sensing and inpainting through a pre-trained (or sparse) generator.

The generator's weights stay fixed and its latent is fitted (:func:`lipdeploy.latent_fit.fit_latent`). IMAGE is
brought to the generator's resolution (a centre square, resized; said on stderr) and mapped to [-1, 1].

- ``--task cs``: with ``--simulate`` IMAGE is measured (``--measurements`` rows of ``--operator``, noise, outliers;
  seeded by ``--seed``) and the measurements are also written as OUT.measurements.pt; with ``--measurements-file``
  those are read back and IMAGE is the ground truth for the metrics (``-``: none).
- ``--task inpaint``: with ``--simulate`` IMAGE is masked (``--mask`` or ``--drop``); otherwise IMAGE is the observed
  image and ``--mask`` says which pixels are known.

OUT.json records the settings, timings, and with ground truth the per-pixel MSE on [-1, 1] and PSNR/SSIM at the final
iteration, beside the linear baselines (back-projection, least squares) for compressive sensing.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import torch

from ..environment import environment
from ..errors import InputError
from ..fileio import atomic_output_set, check_output_path, dumps_record
from ..generator_prior import fit_to_resolution, generator_prior
from ..images import image_name, load_image, load_mask, resize_image, write_png
from ..latent_fit import LatentFitConfig, LatentFitResult, fit_latent, image_metrics, to_unit
from ..sensing import (
    MaskOperator,
    Measurements,
    back_projection,
    least_squares,
    load_measurements,
    make_operator,
    save_measurements,
    simulate_measurements,
)
from ..ticket import Ticket
from .generator_options import GeneratorSource, SensingSpec
from .options import Reporter, TaskSpec

NO_IMAGE = "-"


def restore_with_generator(
    *,
    image: str,
    task_spec: TaskSpec,
    source: GeneratorSource,
    ticket: Path | None,
    net: str | None,
    sensing: SensingSpec,
    output: Path,
    simulate: bool,
    iters: int,
    lr: float,
    seed: int,
    device: str,
    quiet: bool,
    as_json: bool,
    force: bool,
) -> None:
    """The ``restore`` command for ``--generator`` / ``--example-generator`` (module docstring)."""
    log = Reporter()
    task = task_spec.name
    check_task(task, simulate, sensing)
    config = LatentFitConfig(
        objective=sensing.objective, iters=iters, lr=lr, restarts=sensing.restarts, seed=seed,
        z_penalty=sensing.z_penalty, mom_batch=sensing.mom_batch, device=device,
    )  # fmt: skip
    paths = output_paths(output, task, simulate, force)
    gen_path = source.path()
    model, ticket_obj, label = generator_prior(gen_path, ticket, net)
    res = ticket_obj.arch.resolution
    n = 3 * res * res
    given = given_measurements(task, sensing, n)  # before any notice: a bad input is one error line
    x, size_msg, original = _image(image, res, task, simulate)
    if size_msg:
        log(f"{image_name(image)}: {size_msg}")
    gt = x if (task == "cs" or simulate) else None  # inpainting an observation: IMAGE is no ground truth

    if task == "cs":
        meas, baselines = _cs_measurements(sensing, gt, n, seed, given)
        observation = None
    else:
        meas, observation = _inpaint_measurements(task_spec, image, x, res, simulate, seed)
        baselines = {}
    progress = not quiet and not as_json and sys.stderr.isatty()
    log(f"{task}: {label}, {res}x{res}, {meas.m} measurements of {n} values, {config.objective}, {iters} iterations")
    result = fit_latent(model, meas, config, gt=gt, progress=progress, description=task)
    if not bool(torch.isfinite(result.output).all()):
        raise InputError(None, "the fit diverged (its output is not finite): nothing written; lower --lr")

    record = _record(image, original, res, gen_path, ticket, label, ticket_obj, task, task_spec, meas, config, result)
    record["baselines"] = baselines or None
    write_outputs(paths, result, task, meas, observation, record)
    if as_json:
        click.echo(json.dumps(json.loads(dumps_record(record)), indent=2))
        return
    print_result(result, baselines, paths)


@dataclass(frozen=True)
class GeneratorOutputs:
    """The files a generator restoration writes: the PNG, its record, and with ``--simulate`` the measurements
    (``--task cs``) or the observation (``--task inpaint``)."""

    png: Path
    record: Path
    simulated: Path | None

    def output_set(self) -> list[Path]:
        """The files in the order they are written as one set: the PNG, the simulated input, the record."""
        return [self.png] + ([self.simulated] if self.simulated else []) + [self.record]


def check_task(task: str, simulate: bool, sensing: SensingSpec) -> None:
    """Refuse a task a generator does not restore, and compressive sensing without exactly one source of
    measurements."""
    if task not in ("cs", "inpaint"):
        raise InputError(None, f"a generator prior restores --task cs or --task inpaint, not {task!r}")
    if task == "cs" and simulate == (sensing.measurements_file is not None):
        raise InputError(None, "--task cs needs --simulate (measure IMAGE) or --measurements-file Y.pt, one of them")


def output_paths(output: Path, task: str, simulate: bool, force: bool) -> GeneratorOutputs:
    """The outputs of ``-o OUT``, each checked writable (and absent without ``--force``) and distinct."""
    out_png = check_output_path(output, force)
    out_json = check_output_path(output.with_suffix(".json"), force)
    extra = None
    if simulate:
        extra = check_output_path(output.with_suffix(".measurements.pt" if task == "cs" else ".observation.png"), force)
    if len({p.resolve() for p in (out_png, out_json, extra) if p is not None}) < (3 if extra else 2):
        raise InputError(output, "the outputs collide: give -o a .png name")
    return GeneratorOutputs(out_png, out_json, extra)


def given_measurements(task: str, sensing: SensingSpec, n: int) -> Measurements | None:
    """``--measurements-file`` read (for ``n`` image values), or, when measurements are simulated, their counts
    checked; None unless read."""
    if task == "cs" and sensing.measurements_file is not None:
        if sensing.measurements is not None or sensing.outliers:
            raise InputError(None, "--measurements and --outliers come from --measurements-file; do not give them")
        return load_measurements(sensing.measurements_file, n)
    if task == "cs":
        measurement_count(sensing, n)
    return None


def write_outputs(
    paths: GeneratorOutputs,
    result: LatentFitResult,
    task: str,
    meas: Measurements,
    observation: torch.Tensor | None,
    record: dict[str, Any],
) -> None:
    """The PNG (and the simulated measurements or observation), then the record naming the PNG's sha256, as one
    output set. ``record`` gains the hash."""
    with atomic_output_set(*paths.output_set()) as tmps:
        write_png(result.image, tmps[0])
        if paths.simulated is not None and task == "cs":
            save_measurements(meas, tmps[1])
        elif paths.simulated is not None:
            write_png(observation, tmps[1])
        record["output_sha256"] = hashlib.sha256(tmps[0].read_bytes()).hexdigest()
        tmps[-1].write_text(dumps_record(record, indent=2) + "\n")


def print_result(result: LatentFitResult, baselines: dict[str, Any], paths: GeneratorOutputs) -> None:
    """The summary on stdout: the time and the restart kept, with ground truth the quality and the baselines'."""
    click.echo(f"restored in {result.seconds:.1f} s ({result.step_ms:.1f} ms/step), restart {result.restarts[0]} kept")
    if result.mse is not None:
        click.echo(
            f"final iteration: MSE {result.mse:.5f} per pixel on [-1, 1], PSNR {result.psnr:.2f} dB, SSIM "
            f"{result.ssim:.4f}"
        )
        for name, m in baselines.items():
            click.echo(f"  {name}: MSE {m['mse']:.5f}, PSNR {m['psnr']:.2f} dB")
    click.echo(f"wrote {paths.png} and {paths.record}")


def _image(image: str, res: int, task: str, simulate: bool) -> tuple[torch.Tensor | None, str | None, list[int] | None]:
    """IMAGE on [-1, 1] at the generator's resolution (None for ``-``), the message saying how it was fitted to that
    size, and its original size."""
    if image == NO_IMAGE:
        if task == "cs" and not simulate:
            return None, None, None
        raise InputError(None, "IMAGE '-' (no ground truth) goes with --task cs --measurements-file only")
    img = load_image(image)
    original = [img.shape[3], img.shape[2]]
    img, msg = fit_to_resolution(img, res)
    return img * 2 - 1, msg, original


def measurement_count(sensing: SensingSpec, n: int) -> int:
    """The rows to simulate (``--measurements``, default n / 4), checked against ``n`` image values, the outliers and
    the median-of-means blocks."""
    m = n // 4 if sensing.measurements is None else sensing.measurements
    if m <= 0:
        raise InputError(None, f"--measurements must be positive, got {m}")
    if m > n:
        raise InputError(None, f"--measurements ({m}) must not exceed the image's {n} values (3 x R x R)")
    if not 0 <= sensing.outliers < m:
        raise InputError(None, f"--outliers must be in [0, --measurements) = [0, {m}), got {sensing.outliers}")
    if sensing.objective == "mom" and m < sensing.mom_batch:
        raise InputError(None, f"--objective mom: blocks of --mom-batch {sensing.mom_batch} rows need at least "
                         f"{sensing.mom_batch} measurements, got {m}")  # fmt: skip
    return m


def _cs_measurements(
    sensing: SensingSpec, gt: torch.Tensor | None, n: int, seed: int, given: Measurements | None
) -> tuple[Measurements, dict[str, Any]]:
    """The measurements (``given``, read from a file, or simulated from ``gt``) and, with ground truth, the linear
    baselines' metrics."""
    if given is not None:
        meas = given
    else:
        m = measurement_count(sensing, n)
        operator = make_operator(sensing.operator, n, m - sensing.outliers, seed)
        meas = simulate_measurements(gt, operator, sensing.noise_sigma, sensing.outliers, seed + 1)
    baselines: dict[str, Any] = {}
    if gt is not None:
        shape = gt.shape
        baselines["back_projection"] = _rounded(image_metrics(back_projection(meas).view(shape), gt))
        ls = least_squares(meas)
        if ls is not None:
            baselines["least_squares"] = _rounded(image_metrics(ls.view(shape), gt))
        for entry in baselines.values():
            entry["measured_on"] = "the operator's rows (outlier rows left out, as if known)"
    return meas, baselines


def _inpaint_measurements(
    task_spec: TaskSpec, image: str, gt: torch.Tensor, res: int, simulate: bool, seed: int
) -> tuple[Measurements, torch.Tensor]:
    """Inpainting as ``y = x * mask`` (the mask on the generator's grid) and the observation image on [0, 1]."""
    if task_spec.mask_path is not None:
        mask = load_mask(task_spec.mask_path)
        if tuple(mask.shape[2:]) != (res, res):
            mask = (resize_image(mask.expand(-1, 3, -1, -1), res, res)[:, :1] > 0.5).float()
    elif simulate:
        drop = 0.5 if task_spec.drop is None else task_spec.drop
        if not 0 <= drop < 1:
            raise InputError(None, f"--drop must be in [0, 1), got {drop}")
        mask = (torch.rand((1, 1, res, res), generator=torch.Generator().manual_seed(seed)) >= drop).float()
    else:
        raise InputError(image, "inpainting an observation needs --mask (white = known pixels); or use --simulate")
    full = mask.expand(1, 3, res, res)
    meas = simulate_measurements(gt, MaskOperator(full))  # y = x * mask (IMAGE already is that without --simulate)
    return meas, to_unit(gt) * full


def _rounded(m: dict[str, float]) -> dict[str, Any]:
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in m.items()}


def _record(
    image: str,
    original: list[int] | None,
    res: int,
    gen_path: Path,
    ticket: Path | None,
    label: str,
    ticket_obj: Ticket,
    task: str,
    task_spec: TaskSpec,
    meas: Measurements,
    config: LatentFitConfig,
    result: LatentFitResult,
) -> dict[str, Any]:
    """OUT.json's record (the caller adds baselines and the PNG's hash)."""
    with_gt = result.mse is not None
    return {
        "command": "lipdeploy restore",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "image": None if image == NO_IMAGE else image_name(image),
        "image_size": {"original": original, "fitted": [res, res]},
        "task": {"name": task, **({"mask": task_spec.mask_path.name} if task_spec.mask_path else {})},
        "prior": {
            "label": label,
            "generator": Path(gen_path).name,
            "ticket": str(ticket) if ticket else None,
            "arch": ticket_obj.arch.to_dict(),
            "density": round(ticket_obj.density, 6),
        },
        "measurements": meas.describe(),
        "settings": config.to_dict(),
        "timing": {
            "seconds": round(result.seconds, 3),
            "iterations": result.iterations,
            "ms_per_step": round(result.step_ms, 3),
        },
        "restarts": {"losses": result.restart_losses[0], "kept": result.restarts[0], "loss": result.measurement_loss},
        "metrics": result.metrics_record() if with_gt else None,
        "history": result.history,
        "environment": environment(),
    }


__all__ = ["restore_with_generator"]

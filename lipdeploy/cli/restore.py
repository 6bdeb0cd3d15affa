"""``lipdeploy restore``: restore an image with the dense DIP, the deep decoder or any ticket, through one engine.

One command for the three priors, so that their results compare directly (same loop, same settings, same metrics).
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
from ..fit import FitConfig, fit, simulate
from ..fit_result import FitResult
from ..images import (
    centre_crop,
    check_min_side,
    crop_offsets,
    crop_to_multiple,
    image_name,
    load_image,
    resize_image,
    write_png,
)
from ..latent_fit import LatentFitConfig
from ..limits import check_work
from ..priors import PriorSpec
from ..tasks import Observation, Task
from ..ticket import Ticket
from .generator_options import GeneratorSource, SensingSpec, generator_options, sensing_options
from .options import (
    SEED,
    Reporter,
    TaskSpec,
    check_image_size,
    device_options,
    estimate_fit,
    examples,
    force_option,
    format_duration,
    image_size_options,
    json_option,
    make_prior,
    prior_options,
    quiet_option,
    setting_options,
    shrink_image,
    task_options,
)
from .restore_generator import restore_with_generator

EXAMPLES = examples(
    "lipdeploy restore skimage:coffee --simulate --task denoise --crop 128x128 --iters 500 -o coffee.png",
    "lipdeploy restore skimage:coffee --simulate --task denoise --crop 128x128 --iters 500 --example -o lip.png",
    "lipdeploy restore noisy.png --task denoise --ticket masks.pt --weights init.pt -o out.png",
    "lipdeploy restore skimage:astronaut --task cs --example-generator --simulate --measurements 200 -o cs.png",
    "lipdeploy restore face.png --task cs --generator G.pth --ticket tickets/round_03.pt --simulate --outliers 4 "
    "--objective mom -o cs.png",
    "lipdeploy restore face.png --task inpaint --example-generator --simulate --drop 0.5 -o inpainted.png",
)


@click.command("restore", epilog=EXAMPLES)
@click.argument("image", type=str)
@task_options
@prior_options
@generator_options
@sensing_options
@image_size_options
@click.option(
    "-o", "--output", type=click.Path(path_type=Path, readable=False), required=True, help="Restored image (PNG)."
)
@click.option("--gt", type=str, default=None, help="Clean image (file or skimage:NAME) for PSNR/SSIM.")
@click.option(
    "--simulate",
    is_flag=True,
    help="IMAGE is the clean image: degrade it with the task (seeded) and measure against it.",
)
@setting_options(
    FitConfig,
    "iters",
    "lr",
    "input_noise_std",
    "ema",
    "ema_mode",
    iters={"unset": True, "show_default": f"{FitConfig.iters}, the paper's; {LatentFitConfig.iters} with a generator"},
)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the network, the input and --simulate.")
@device_options
@quiet_option
@json_option("the record written to OUT.json")
@force_option
def restore_command(
    image: str,
    task_spec: TaskSpec,
    prior: PriorSpec,
    source: GeneratorSource,
    sensing: SensingSpec,
    output: Path,
    gt: str | None,
    simulate: bool,
    iters: int | None,
    lr: float,
    input_noise_std: float | None,
    ema: float,
    ema_mode: str,
    seed: int,
    device: str,
    backend: str,
    quiet: bool,
    as_json: bool,
    force: bool,
    crop: str | None,
    resize: str | None,
) -> None:
    """Restore IMAGE (the observation) with a deep image prior: --ticket T, or a dense --arch dip|dd.

    Writes OUT (PNG) and OUT.json (settings, timings, PSNR/SSIM). With --gt (or --simulate) PSNR and SSIM are
    reported twice: the best over iterations (the paper's oracle number) and at the final iteration (what you get
    without ground truth). With --simulate it also writes OUT.observation.png, the degraded image the prior was fitted
    to (for super-resolution the low-resolution input). A fit costs about the pixel count times the iterations: the
    expected time is printed before it starts; --crop / --resize make it minutes on a laptop CPU.

    With --generator G.pth (or --example-generator) the prior is a pre-trained generator whose latent is fitted:
    --task cs (compressive sensing; --simulate measures IMAGE, --measurements-file Y.pt reads measurements, IMAGE then
    being the ground truth or '-') or --task inpaint; --ticket T is then one of the generator's tickets (lipdeploy
    find --generator). IMAGE is brought to the generator's resolution; OUT.json holds the per-pixel MSE on [-1, 1]
    and PSNR/SSIM at the final iteration, and for cs the back-projection and least-squares baselines.
    """
    if source.given or task_spec.name == "cs":
        if prior.has_arch or prior.weights is not None or gt is not None or crop or resize or backend != "auto":
            raise InputError(None, "a generator prior takes none of --arch/--channels/--k/--depth, --weights, --gt, "
                             "--crop, --resize, --backend (IMAGE is fitted to the generator's resolution, by the "
                             "masked generator)")  # fmt: skip
        return restore_with_generator(
            image=image, task_spec=task_spec, source=source, ticket=prior.ticket, net=prior.net, sensing=sensing,
            output=output, simulate=simulate, iters=LatentFitConfig.iters if iters is None else iters, lr=lr,
            seed=seed, device=device, quiet=quiet, as_json=as_json, force=force,
        )  # fmt: skip
    iters = FitConfig.iters if iters is None else iters
    log = Reporter()  # notices on stderr: stdout stays the result (pure JSON with --json)
    paths = output_paths(output, simulate, force)
    if simulate and gt is not None:
        raise InputError(None, "--simulate uses IMAGE as the ground truth; do not also give --gt")
    inputs = prepare_inputs(image, gt, task_spec, prior, seed, simulate, crop, resize, log)
    config = FitConfig(
        iters=iters, lr=lr, input_noise_std=input_noise_std, ema=ema, ema_mode=ema_mode, seed=seed, device=device,
        backend=backend,
    )  # fmt: skip
    result = run_fit(inputs, config, quiet, as_json, log)
    record = restore_record(image, gt, simulate, prior, paths, inputs, config, result)
    write_outputs(paths, result, inputs.observation, record, force)
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return
    print_result(result, paths, with_gt=inputs.gt is not None)


@dataclass(frozen=True)
class OutputPaths:
    """The files a restoration writes: the PNG, its record, and with ``--simulate`` the observation it was fitted to."""

    png: Path
    record: Path
    observation: Path | None

    def output_set(self) -> list[Path]:
        """The files in the order they are written as one set: the images, then the record naming the PNG."""
        return [self.png] + ([self.observation] if self.observation is not None else []) + [self.record]


@dataclass
class LoadedImages:
    """IMAGE, its ``--mask`` and its ``--gt``, kept on one window while they are cropped and resized together."""

    observed: torch.Tensor
    mask: torch.Tensor | None
    gt: torch.Tensor | None
    gt_factor: int  # the ground truth's side over the observation's: the factor for sr, else 1


@dataclass
class FitInputs:
    """What the fit runs on (the prior, the task, the observation, the ground truth) and how IMAGE became it."""

    ticket: Ticket
    prior_label: str
    task_name: str
    task: Task
    observation: Observation
    gt: torch.Tensor | None
    original_size: list[int]  # [width, height] of IMAGE as read
    cropped_size: list[int]  # [width, height] of the observation once cropped to the network's multiple
    crop_msg: str | None
    shrink_msg: str | None


def output_paths(output: Path, simulate: bool, force: bool) -> OutputPaths:
    """The outputs of ``-o OUT``, each checked writable (and absent without ``--force``) and distinct."""
    png = check_output_path(output, force)
    record = check_output_path(output.with_suffix(".json"), force)
    observation = check_output_path(output.with_suffix(".observation.png"), force) if simulate else None
    _check_distinct(png, record, observation)
    return OutputPaths(png, record, observation)


def prepare_inputs(
    image: str,
    gt: str | None,
    task_spec: TaskSpec,
    prior: PriorSpec,
    seed: int,
    simulate: bool,
    crop: str | None,
    resize: str | None,
    log: Reporter,
) -> FitInputs:
    """The prior and IMAGE as the fit needs them: loaded, shrunk by ``--crop`` / ``--resize``, observed (or degraded
    with ``--simulate``) and checked to fit the network and the memory; the notices go to ``log``."""
    ticket, prior_label = make_prior(prior, seed)
    stride = ticket.arch.stride
    images = load_images(image, gt, task_spec)
    original_size = [images.observed.shape[3], images.observed.shape[2]]
    shrink_msg = None
    if crop or resize:
        images, shrink_msg = shrink_images(image, images, crop, resize)
        if shrink_msg:
            log(shrink_msg)
    task = task_spec.build(images.mask)
    if task_spec.name == "inpaint" and images.mask is None and not simulate:
        raise InputError(image, "inpainting an observation needs --mask (white = known pixels); or use --simulate")
    if simulate:
        task, img_c, observation, crop_msg = simulated_observation(image, task_spec, task, images, stride, seed)
        gt_img = img_c
    else:
        img_c, observation, gt_img, crop_msg = given_observation(image, task_spec, task, images, stride)
    check_min_side(image, img_c.shape[2], img_c.shape[3], _min_obs_side(ticket.arch.min_side, img_c, observation))
    check_work(ticket.arch, *observation.out_size, training=True, what="this fit")
    if crop_msg:
        log(crop_msg)
    return FitInputs(
        ticket=ticket,
        prior_label=prior_label,
        task_name=task_spec.name,
        task=task,
        observation=observation,
        gt=gt_img,
        original_size=original_size,
        cropped_size=[img_c.shape[3], img_c.shape[2]],
        crop_msg=crop_msg,
        shrink_msg=shrink_msg,
    )


def load_images(image: str, gt: str | None, task_spec: TaskSpec) -> LoadedImages:
    """IMAGE, the task's mask and the ground truth, the latter checked to match the observation's size (times the
    factor for super-resolution)."""
    img = load_image(image)
    mask = task_spec.load_mask(like=img)
    gt_full = load_image(gt) if gt is not None else None
    f_gt = int(task_spec.factor) if task_spec.name == "sr" else 1
    if gt_full is not None and tuple(gt_full.shape[2:]) != (img.shape[2] * f_gt, img.shape[3] * f_gt):
        raise InputError(
            gt,
            f"ground truth is {gt_full.shape[3]}x{gt_full.shape[2]}, "
            f"the observation needs {img.shape[3] * f_gt}x{img.shape[2] * f_gt}",
        )
    return LoadedImages(img, mask, gt_full, f_gt)


def shrink_images(
    image: str, images: LoadedImages, crop: str | None, resize: str | None
) -> tuple[LoadedImages, str | None]:
    """``--crop`` then ``--resize`` applied to IMAGE, and the same window of its mask and ground truth (``f`` times
    larger for super-resolution); the message says what changed (None when nothing did)."""
    mask, gt_full, f_gt = images.mask, images.gt, images.gt_factor
    cropped, box, shrink_msg = shrink_image(image, images.observed, crop, None)
    if box is not None:
        h, w = cropped.shape[2], cropped.shape[3]
        if mask is not None:
            mask, _ = centre_crop(mask, h, w)
        if gt_full is not None:
            gt_full = gt_full[:, :, box[0] * f_gt : (box[0] + h) * f_gt, box[1] * f_gt : (box[1] + w) * f_gt]
    img, _, resize_msg = shrink_image(image, cropped, None, resize)
    shrink_msg = "; ".join(m for m in (shrink_msg, resize_msg) if m) or None
    h, w = img.shape[2], img.shape[3]
    if mask is not None and tuple(mask.shape[2:]) != (h, w):
        mask = (resize_image(mask.expand(-1, 3, -1, -1), h, w)[:, :1] > 0.5).float()
    if gt_full is not None and tuple(gt_full.shape[2:]) != (h * f_gt, w * f_gt):
        gt_full = resize_image(gt_full, h * f_gt, w * f_gt)
    return LoadedImages(img, mask, gt_full, f_gt), shrink_msg


def simulated_observation(
    image: str, task_spec: TaskSpec, task: Task, images: LoadedImages, stride: int, seed: int
) -> tuple[Task, torch.Tensor, Observation, str | None]:
    """``--simulate``: IMAGE (the clean image) cropped to the task's multiple and degraded by the task, seeded; the
    task (rebuilt on the cropped mask), the cropped image (the ground truth), the observation, the crop's message."""
    img_c, crop_msg = crop_to_multiple(images.observed, task.clean_multiple(stride))
    check_image_size(image, img_c, stride)
    if images.mask is not None:
        mask_c, _ = crop_to_multiple(images.mask, task.clean_multiple(stride))
        task = task_spec.build(mask_c)
    return task, img_c, simulate_obs(task, img_c, seed), crop_msg


def given_observation(
    image: str, task_spec: TaskSpec, task: Task, images: LoadedImages, stride: int
) -> tuple[torch.Tensor, Observation, torch.Tensor | None, str | None]:
    """IMAGE as the observation, cropped to the task's multiple (its mask and ground truth on the same window): the
    cropped image, the observation, the ground truth (None without ``--gt``), the crop's message."""
    img, mask = images.observed, images.mask
    mult = task.obs_multiple(stride)
    top, left, nh, nw = crop_offsets(img.shape[2], img.shape[3], mult)
    img_c, crop_msg = crop_to_multiple(img, mult)
    check_image_size(image, img_c, stride if task_spec.name != "sr" else mult)
    observation = task.observe(img_c, None if mask is None else mask[:, :, top : top + nh, left : left + nw])
    gt_img = None
    if images.gt is not None:  # checked against the observation's size by load_images
        f = images.gt_factor
        gt_img = images.gt[:, :, top * f : (top + nh) * f, left * f : (left + nw) * f].contiguous()
    return img_c, observation, gt_img, crop_msg


def run_fit(inputs: FitInputs, config: FitConfig, quiet: bool, as_json: bool, log: Reporter) -> FitResult:
    """Fit the prior to the observation, the expected time said first (measured on a few steps of a long fit), and
    refuse a fit that diverged (nothing is written then)."""
    progress = not quiet and not as_json and sys.stderr.isatty()
    out_h, out_w = inputs.observation.out_size
    eta = ""
    if not (quiet or as_json) and config.iters >= 50:  # a few measured steps; not worth it for a short test fit
        step_s = estimate_fit(inputs.ticket, out_h, out_w, config.device, config.backend, config.seed)
        eta = f"; expected {format_duration(step_s * config.iters)} ({1e3 * step_s:.0f} ms/step measured)"
    log(f"{inputs.task_name}: {inputs.prior_label}, output {out_w}x{out_h}, {config.iters} iterations{eta}")
    result = fit(
        inputs.ticket,
        inputs.observation,
        config,
        gt=inputs.gt,
        task=inputs.task,
        progress=progress,
        description=inputs.task_name,
    )
    if result.initial_output_weight > 0.1:
        log(
            f"warning: {result.initial_output_weight:.0%} of the output is the untrained network's (paper average "
            f"after {config.iters} iterations); --ema-mode debiased or more --iters avoid it"
        )
    if not bool(torch.isfinite(result.output).all()):
        raise InputError(None, "the fit diverged (its output is not finite): nothing written; lower --lr")
    return result


def restore_record(
    image: str,
    gt: str | None,
    simulate: bool,
    prior: PriorSpec,
    paths: OutputPaths,
    inputs: FitInputs,
    config: FitConfig,
    result: FitResult,
) -> dict[str, Any]:
    """OUT.json's record: what was restored, with which prior and settings, how long it took, how well it did (the
    PNG's hash is added when it is written)."""
    ticket, observation = inputs.ticket, inputs.observation
    return {
        "command": "lipdeploy restore",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "image": image_name(image),
        "ground_truth": ("IMAGE (simulated observation)" if simulate else (image_name(gt) if gt else None)),
        "output": paths.png.name,
        "observation_image": paths.observation.name if paths.observation else None,
        "task": {"name": inputs.task_name, **observation.params},
        "prior": {
            "label": inputs.prior_label,
            "ticket": str(prior.ticket) if prior.ticket else None,
            "arch": ticket.arch.to_dict(),
            "density": round(ticket.density, 6),
            "kept_weights": ticket.kept_count,
            "prunable_weights": ticket.prunable_count,
        },
        "image_size": {"original": inputs.original_size, "cropped_observation": inputs.cropped_size},
        "crop": inputs.crop_msg,
        "shrink": inputs.shrink_msg,
        "output_size": [observation.out_size[1], observation.out_size[0]],
        "settings": {**config.to_dict(), "input_noise_std": result.input_noise_std},
        "timing": {
            "seconds": round(result.seconds, 3),
            "iterations": result.iterations,
            "ms_per_step": round(result.step_ms, 3),
            "ms_per_step_median": round(result.step_ms_median, 3),
        },
        "metrics": result.metrics_record() if inputs.gt is not None else None,
        "history": result.history,
        "environment": environment(),
    }


def write_outputs(
    paths: OutputPaths, result: FitResult, observation: Observation, record: dict[str, Any], force: bool
) -> None:
    """The PNG (and observation), then the record naming the PNG's sha256, as one output set: a reader never finds a
    record beside an image it does not describe. ``record`` gains the hash."""
    with atomic_output_set(*paths.output_set(), exclusive=not force) as tmps:
        write_png(result.output, tmps[0])
        if paths.observation is not None:
            write_png(observation.image, tmps[1])
        record["output_sha256"] = hashlib.sha256(tmps[0].read_bytes()).hexdigest()
        tmps[-1].write_text(dumps_record(record, indent=2) + "\n")


def print_result(result: FitResult, paths: OutputPaths, with_gt: bool) -> None:
    """The summary on stdout: the time, with ground truth the best and the final PSNR/SSIM, the files written."""
    click.echo(f"restored in {result.seconds:.1f} s ({result.step_ms:.1f} ms/step, {result.backtracks} backtracks)")
    if with_gt:
        inp = f" (observation: {result.input_psnr:.2f} dB)" if result.input_psnr is not None else ""
        click.echo(
            f"PSNR best over iterations (oracle): {result.psnr_best:.2f} dB at iteration {result.best_iter}, "
            f"SSIM {result.ssim_best:.4f}"
        )
        click.echo(f"PSNR at the final iteration: {result.psnr_final:.2f} dB, SSIM {result.ssim_final:.4f}{inp}")
    click.echo(f"wrote {paths.png} and {paths.record}")


def _check_distinct(*paths: Path | None) -> None:
    """Refuse output names that collide (``-o out.json`` would write the PNG and then the record over it)."""
    seen: dict[Path, Path] = {}
    for p in paths:
        if p is None:
            continue
        key = p.resolve()
        if key in seen:
            raise InputError(p, f"the outputs collide: {seen[key]} and {p} are the same file; give -o a .png name")
        seen[key] = p


def _min_obs_side(net_min: int, obs_img: torch.Tensor, observation: Observation) -> int:
    """The network's minimum side expressed on the observation (smaller than the output for super-resolution)."""
    factor = max(1, observation.out_size[0] // max(1, obs_img.shape[2]))
    return -(-net_min // factor)


def simulate_obs(task: Task, clean: torch.Tensor, seed: int) -> Observation:
    """:func:`lipdeploy.fit.simulate`, with a task's refusal of the image as one error line."""
    try:
        return simulate(task, clean, seed)
    except ValueError as exc:
        raise InputError(None, str(exc)) from None

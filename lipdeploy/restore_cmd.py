"""``lipdeploy restore``: restore an image with the dense DIP, the deep decoder or any ticket, through one engine.

One command for the three priors, so that their results compare directly (same loop, same settings, same metrics).
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import sys
from pathlib import Path
from typing import Any

import click
import torch

from .errors import InputError
from .fileio import atomic_write_text, check_output_path
from .fit import FitConfig, fit, simulate
from .images import crop_offsets, crop_to_multiple, image_name, load_image, load_mask, save_image
from .networks import ArchSpec, DeepDecoderSpec, SkipSpec
from .tasks import TASKS, Task, make_task
from .ticket import Ticket, ticket_from_model

# --------------------------------------------------------------------------------------------------- shared options


def prior_options(fn):
    """--ticket/--weights/--upsample/--act or --arch dip [--channels] / --arch dd [--k --depth]."""
    for deco in reversed(
        [
            click.option("--ticket", type=click.Path(path_type=Path), default=None, help="Ticket file (any format)."),
            click.option(
                "--weights",
                type=click.Path(dir_okay=False, path_type=Path),
                default=None,
                help="Initial weights for a mask-only ticket (the paper's mask + init pair).",
            ),
            click.option("--upsample", type=click.Choice(["bilinear", "nearest"]), default=None),
            click.option("--act", type=click.Choice(["LeakyReLU", "ReLU", "none"]), default=None),
            click.option(
                "--arch",
                type=click.Choice(["dip", "dd"]),
                default=None,
                help="Dense prior when no ticket: dip (the paper's skip net, default) or dd (deep decoder).",
            ),
            click.option(
                "--channels",
                type=str,
                default=None,
                help="dip: channels per level, e.g. 128,128,128,128,128 (the paper's; skip channels stay 4).",
            ),
            click.option("--k", "dd_k", type=int, default=None, help="dd: channels (default 128)."),
            click.option("--depth", "dd_depth", type=int, default=None, help="dd: number of upsampling blocks (5)."),
        ]
    ):
        fn = deco(fn)
    return fn


def task_options(fn):
    for deco in reversed(
        [
            click.option("--task", "task_name", type=click.Choice(sorted(TASKS)), required=True),
            click.option("--sigma", type=float, default=None, help="denoise: noise sigma on the 0-255 scale (25)."),
            click.option("--drop", type=float, default=None, help="inpaint: fraction of pixels dropped (0.5)."),
            click.option(
                "--mask",
                "mask_path",
                type=click.Path(path_type=Path),
                default=None,
                help="inpaint: mask image, white = known pixel, black = missing.",
            ),
            click.option("--factor", type=click.Choice(["4", "8"]), default="4", help="sr: scale factor (4)."),
        ]
    ):
        fn = deco(fn)
    return fn


def make_prior(
    ticket: Path | None,
    weights: Path | None,
    upsample: str | None,
    act: str | None,
    arch: str | None,
    channels: str | None,
    dd_k: int | None,
    dd_depth: int | None,
    seed: int,
) -> tuple[Ticket, str]:
    """The prior as a ticket (dense archs get all-ones masks and weights initialised from ``seed``) and its label."""
    if ticket is not None:
        if arch is not None or channels is not None or dd_k is not None or dd_depth is not None:
            raise InputError(None, "give either --ticket or --arch/--channels/--k/--depth, not both")
        from .cli_common import open_ticket

        t = open_ticket(ticket, weights, upsample, act)
        return t, f"ticket {ticket.name} ({t.arch.describe()}, density {t.density:.4f})"
    if weights is not None:
        raise InputError(weights, "--weights goes with --ticket")
    spec: ArchSpec
    if arch == "dd":
        if channels is not None:
            raise InputError(None, "--channels is for --arch dip; the deep decoder takes --k and --depth")
        k = 128 if dd_k is None else dd_k
        depth = 5 if dd_depth is None else dd_depth
        if not 1 <= k <= 4096:
            raise InputError(None, f"--k must be between 1 and 4096, got {k}")
        if not 0 <= depth <= 8:
            raise InputError(None, f"--depth must be between 0 and 8, got {depth}")
        spec = DeepDecoderSpec(k=k, depth=depth, **({"upsample_mode": upsample} if upsample else {}))
    else:
        if dd_k is not None or dd_depth is not None:
            raise InputError(None, "--k and --depth are for --arch dd")
        extra: dict[str, Any] = {}
        if upsample:
            extra["upsample_mode"] = upsample
        if act:
            extra["act"] = act
        if channels is not None:
            try:
                ch = tuple(int(c) for c in channels.split(","))
            except ValueError:
                raise InputError(None, f"--channels must be comma-separated integers, got {channels!r}") from None
            if not ch or len(ch) > 8 or any(c < 1 or c > 4096 for c in ch):
                raise InputError(None, f"--channels: 1 to 8 levels of 1 to 4096 channels, got {channels!r}")
            extra.update(channels_down=ch, channels_up=ch, channels_skip=(4,) * len(ch))
        spec = SkipSpec(**extra)
    torch.manual_seed(seed)  # the dense prior's random initialisation (PyTorch's default init, as DIP uses)
    model = spec.build()
    masks = {n: torch.ones_like(p) for n, p in model.named_parameters() if n.endswith(".weight") and p.dim() == 4}
    t = ticket_from_model(model, spec, masks, source_format="dense", seed=seed)
    return t, f"dense {spec.describe()}"


def build_task(task_name: str, sigma: float | None, drop: float | None, factor: str, mask: torch.Tensor | None) -> Task:
    if sigma is not None and not 0 <= sigma <= 255:
        raise InputError(None, f"--sigma is on the 0-255 scale, got {sigma}")
    if drop is not None and not 0 <= drop < 1:
        raise InputError(None, f"--drop must be in [0, 1), got {drop}")
    return make_task(
        task_name,
        sigma=None if sigma is None else sigma / 255.0,
        drop=drop,
        factor=int(factor),
        mask=mask,
    )


def device_option(fn):
    fn = click.option(
        "--backend",
        type=click.Choice(["auto", "dense", "sparse"]),
        default="auto",
        show_default=True,
        help="auto: a pruned network runs on the sparse kernels on CUDA (per layer, where faster than cuDNN) and as "
        "the masked dense network on CPU; sparse: compacted + sparse kernels on any device; dense: masked network.",
    )(fn)
    return click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", help="Where to fit.")(fn)


def say(msg: str) -> None:
    click.echo(msg, err=True)


def environment() -> dict[str, Any]:
    from . import __version__

    return {
        "lipdeploy": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }


# --------------------------------------------------------------------------------------------------- restore


@click.command("restore")
@click.argument("image", type=str)
@task_options
@prior_options
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Restored image (PNG).")
@click.option("--gt", type=str, default=None, help="Clean image (file or skimage:NAME) for PSNR/SSIM.")
@click.option(
    "--simulate",
    is_flag=True,
    help="IMAGE is the clean image: degrade it with the task (seeded) and measure against it.",
)
@click.option("--iters", type=int, default=3000, show_default=True)
@click.option("--lr", type=float, default=0.01, show_default=True)
@click.option("--input-noise", type=float, default=None, help="Input perturbation std (task default: 1/30 or 0.03).")
@click.option("--ema", type=float, default=0.99, show_default=True, help="Output averaging weight (0: off).")
@click.option("--seed", type=int, default=0, show_default=True)
@device_option
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
def restore_command(
    image: str,
    task_name: str,
    sigma: float | None,
    drop: float | None,
    mask_path: Path | None,
    factor: str,
    ticket: Path | None,
    weights: Path | None,
    upsample: str | None,
    act: str | None,
    arch: str | None,
    channels: str | None,
    dd_k: int | None,
    dd_depth: int | None,
    output: Path,
    gt: str | None,
    simulate: bool,
    iters: int,
    lr: float,
    input_noise: float | None,
    ema: float,
    seed: int,
    device: str,
    backend: str,
    quiet: bool,
    force: bool,
) -> None:
    """Restore IMAGE (the observation) with a deep image prior: --ticket T, or a dense --arch dip|dd.

    Writes OUT (PNG) and OUT.json (settings, timings, PSNR/SSIM). With --gt (or --simulate) PSNR and SSIM are
    reported twice: the best over iterations (the paper's oracle number) and at the final iteration (what you get
    without ground truth).
    """
    if iters < 1:
        raise InputError(None, f"--iters must be >= 1, got {iters}")
    if not 0 <= ema < 1:
        raise InputError(None, f"--ema must be in [0, 1), got {ema}")
    if lr <= 0:
        raise InputError(None, f"--lr must be positive, got {lr}")
    out_png = check_output_path(output, force)
    out_json = check_output_path(output.with_suffix(".json"), force)
    out_obs = check_output_path(output.with_suffix(".observation.png"), force) if simulate else None
    if simulate and gt is not None:
        raise InputError(None, "--simulate uses IMAGE as the ground truth; do not also give --gt")

    prior, prior_label = make_prior(ticket, weights, upsample, act, arch, channels, dd_k, dd_depth, seed)
    stride = prior.arch.stride
    img = load_image(image)
    mask = None
    if mask_path is not None:
        if task_name != "inpaint":
            raise InputError(mask_path, "--mask is for --task inpaint")
        mask = load_mask(mask_path, like=img)
    task = build_task(task_name, sigma, drop, factor, mask)
    if mask_path is not None:
        task.mask_name = mask_path.name
    if task_name == "inpaint" and mask is None and not simulate:
        raise InputError(image, "inpainting an observation needs --mask (white = known pixels); or use --simulate")

    crop_msg = None
    original_size = [img.shape[3], img.shape[2]]
    gt_img = None
    if simulate:
        img_c, crop_msg = crop_to_multiple(img, task.clean_multiple(stride))
        _check_size(image, img_c, stride)
        if mask is not None:
            mask_c, _ = crop_to_multiple(mask, task.clean_multiple(stride))
            task = build_task(task_name, sigma, drop, factor, mask_c)
            task.mask_name = mask_path.name
        observation = simulate_obs(task, img_c, seed)
        gt_img = img_c
    else:
        mult = task.obs_multiple(stride)
        top, left, nh, nw = crop_offsets(img.shape[2], img.shape[3], mult)
        img_c, crop_msg = crop_to_multiple(img, mult)
        _check_size(image, img_c, stride if task_name != "sr" else mult)
        observation = task.observe(img_c, None if mask is None else mask[:, :, top : top + nh, left : left + nw])
        if gt is not None:
            gt_full = load_image(gt)
            f = int(factor) if task_name == "sr" else 1
            want = (img.shape[2] * f, img.shape[3] * f)
            if tuple(gt_full.shape[2:]) != want:
                raise InputError(
                    gt,
                    f"ground truth is {gt_full.shape[3]}x{gt_full.shape[2]}, the observation needs {want[1]}x{want[0]}",
                )
            gt_img = gt_full[:, :, top * f : (top + nh) * f, left * f : (left + nw) * f].contiguous()
    if crop_msg:
        say(crop_msg)

    config = FitConfig(
        iters=iters, lr=lr, input_noise_std=input_noise, ema=ema, seed=seed, device=device, backend=backend
    )
    progress = not quiet and sys.stderr.isatty()
    say(f"{task_name}: {prior_label}, output {observation.out_size[1]}x{observation.out_size[0]}, {iters} iterations")
    result = fit(prior, observation, config, gt=gt_img, task=task, progress=progress, description=task_name)

    save_image(result.output, out_png)
    if out_obs is not None:
        save_image(observation.image if task_name != "inpaint" else observation.image, out_obs)
    record = {
        "command": "lipdeploy restore",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "image": image_name(image),
        "ground_truth": ("IMAGE (simulated observation)" if simulate else (image_name(gt) if gt else None)),
        "output": out_png.name,
        "observation_image": out_obs.name if out_obs else None,
        "task": {"name": task_name, **observation.params},
        "prior": {
            "label": prior_label,
            "ticket": str(ticket) if ticket else None,
            "arch": prior.arch.to_dict(),
            "density": round(prior.density, 6),
            "kept_weights": prior.kept_count,
            "prunable_weights": prior.prunable_count,
        },
        "image_size": {"original": original_size, "cropped_observation": [img_c.shape[3], img_c.shape[2]]},
        "crop": crop_msg,
        "output_size": [observation.out_size[1], observation.out_size[0]],
        "settings": {**config.to_dict(), "input_noise_std": result.input_noise_std},
        "timing": {
            "seconds": round(result.seconds, 3),
            "iterations": result.iterations,
            "ms_per_step": round(result.step_ms, 3),
            "ms_per_step_median": round(result.step_ms_median, 3),
        },
        "metrics": result.metrics_record() if gt_img is not None else None,
        "history": result.history,
        "environment": environment(),
    }
    atomic_write_text(out_json, json.dumps(record, indent=2) + "\n")

    click.echo(f"restored in {result.seconds:.1f} s ({result.step_ms:.1f} ms/step, {result.backtracks} backtracks)")
    if gt_img is not None:
        inp = f" (observation: {result.input_psnr:.2f} dB)" if result.input_psnr is not None else ""
        click.echo(
            f"PSNR best over iterations (oracle): {result.psnr_best:.2f} dB at iteration {result.best_iter}, "
            f"SSIM {result.ssim_best:.4f}"
        )
        click.echo(f"PSNR at the final iteration: {result.psnr_final:.2f} dB, SSIM {result.ssim_final:.4f}{inp}")
    click.echo(f"wrote {out_png} and {out_json}")


def simulate_obs(task: Task, clean: torch.Tensor, seed: int):
    try:
        return simulate(task, clean, seed)
    except ValueError as exc:
        raise InputError(None, str(exc)) from None


def _check_size(path: str, img: torch.Tensor, multiple: int) -> None:
    if img.shape[2] < 1 or img.shape[3] < 1 or img.shape[2] < multiple or img.shape[3] < multiple:
        raise InputError(path, f"image is too small: sides must be at least {multiple} pixels after cropping")

"""``lipdeploy find``: find lottery image priors by iterative magnitude pruning, one ticket file per round."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import torch

from ..errors import InputError
from ..fit import MASKED, FitConfig
from ..gan_train import GanTrainConfig
from ..images import check_min_side, crop_to_multiple, image_name, load_image
from ..imp import ImpConfig, find_ticket
from ..limits import check_work
from ..multi_image import common_size
from ..patterns import block_name, block_pattern, parse_block
from ..priors import PriorSpec
from ..runlock import check_output_folder
from ..tasks import Task
from ..ticket import Ticket
from .find_generator import find_with_generator
from .generator_options import GeneratorSource, generator_options
from .options import (
    FINITE_FLOAT,
    SEED,
    RegistryChoice,
    Reporter,
    TaskSpec,
    check_image_size,
    device_option,
    estimate_fit,
    examples,
    format_duration,
    image_size_options,
    json_option,
    make_prior,
    optional_task_options,
    pattern_names,
    prior_options,
    quiet_option,
    setting_options,
    shrink_image,
)

EXAMPLES = examples(
    "lipdeploy find skimage:astronaut --task denoise --crop 64x64 --iters 300 --rounds 3 -o tickets",
    "lipdeploy find skimage:astronaut --task denoise --crop 64x64 --iters 300 --rounds 5 -o tickets  # continues",
    "lipdeploy find photo.png --task inpaint --drop 0.5 --granularity channel -o channel_tickets",
    "lipdeploy find photo.png --task denoise --crop 128x128 --granularity block --block 32x16 -o block_tickets",
    "lipdeploy find a.png b.png c.png --task denoise --crop 128x128 --iters 300 -o multi  # one ticket for 3 images",
    "lipdeploy find --example-generator --rounds 3 --epochs 5 -o gan_tickets  # GAN IMP on the demo generator",
    "lipdeploy find --generator celebaHQ_s6_i80000-6196db68.pth --data celebahq/ --epochs 30 --rounds 7 -o pgan",
)


@click.command("find", epilog=EXAMPLES)
@click.argument("images", nargs=-1, required=False, type=str)
@optional_task_options
@prior_options
@generator_options
@click.option(
    "--data",
    default=None,
    metavar="DIR|skimage:lfw_faces",
    help="GAN IMP: training images, a folder or scikit-image's LFW faces (:train / :test for the demo generator's "
    "split; its default with --example-generator is :train).",
)
@click.option("--epochs", type=int, default=30, show_default=True, help="GAN IMP: WGAN-GP epochs per round.")
@click.option("--batch", type=int, default=64, show_default=True, help="GAN IMP: images per WGAN-GP step.")
@click.option(
    "--fresh-discriminator",
    is_flag=True,
    help="GAN IMP: start the discriminator from scratch (needed when the generator file has no netD).",
)
@image_size_options
@click.option(
    "-o",
    "--output",
    "out_dir",
    type=click.Path(path_type=Path, readable=False),
    required=True,
    help="Folder for tickets.",
)
@click.option(
    "--common-size",
    "common",
    type=click.Choice(["crop", "resize"]),
    default="crop",
    show_default=True,
    help="Several IMAGES: how they are brought to one size, the smallest height and width among them rounded down to "
    "a multiple of the network's stride: crop = the centre of each (no resampling), resize = each resampled to it.",
)
@click.option("--rounds", type=int, default=5, show_default=True, help="Pruning rounds (density 0.8^rounds).")
@click.option(
    "--rate", type=FINITE_FLOAT, default=0.2, show_default=True, help="Fraction of remaining weights per round."
)
@setting_options(FitConfig, "iters", iters={"help": "Fitting iterations per round."})
@click.option(
    "--scope",
    type=click.Choice(["global", "layer"]),
    default="global",
    show_default=True,
    help="Rank weights across all layers (the paper's) or prune each layer by --rate.",
)
@click.option(
    "--granularity",
    type=RegistryChoice(pattern_names),
    default="unstructured",
    show_default=True,
    help="Sparsity pattern: what one pruning step removes (any pattern registered in lipdeploy.patterns).",
)
@click.option(
    "--block",
    "block",
    default=None,
    metavar="BOxBI",
    help="With --granularity block: the block of output x input channels per tap, 16x16 (default), 32x16 or 16x8.",
)
@click.option(
    "--rewind-iter", type=int, default=0, show_default=True, help="Rewind to this iteration of the dense fit."
)
@click.option(
    "--target",
    type=click.Choice(["paper", "clean", "observation"]),
    default="paper",
    show_default=True,
    help="What each round fits: paper = clean image for denoising, the observation otherwise.",
)
@click.option("--random", "random_", is_flag=True, help="Random pruning baseline at the same densities.")
@setting_options(
    FitConfig,
    "lr",
    "ema",
    "ema_mode",
    lr={"unset": True, "show_default": f"{FitConfig.lr:g}; {GanTrainConfig.lr:g} for GAN IMP, the paper's"},
)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the network, input and observation.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["pt", "safetensors"]),
    default="pt",
    show_default=True,
    help="Ticket file format.",
)
@device_option
@quiet_option
@json_option("the run's summary (imp.json)")
def find_command(
    images: tuple[str, ...],
    task_spec: TaskSpec,
    prior: PriorSpec,
    source: GeneratorSource,
    data: str | None,
    epochs: int,
    batch: int,
    fresh_discriminator: bool,
    out_dir: Path,
    rounds: int,
    rate: float,
    iters: int,
    scope: str,
    granularity: str,
    block: str | None,
    rewind_iter: int,
    target: str,
    random_: bool,
    lr: float | None,
    ema: float,
    ema_mode: str,
    seed: int,
    fmt: str,
    device: str,
    quiet: bool,
    as_json: bool,
    crop: str | None,
    resize: str | None,
    common: str,
) -> None:
    """Find tickets for IMAGES (clean images; the observations are simulated, seeded) by IMP into folder -o DIR.

    Several IMAGES: one network and one noise input fit them all at once (the paper's multi-image IMP: the loss is
    the sum of the per-image MSEs; PSNR reported as the mean over images), one mask per round; they are brought to
    one size first (--common-size), and each ticket records their names and content hashes.

    Writes round_00 (the dense fit) .. round_R, each a ticket with its masks, rewind-point weights, fitted weights
    and provenance, plus imp.json. Rerunning with more --rounds continues after the last complete round. Each round
    is a full fit (--iters): the expected time is printed before starting; --crop / --resize make it minutes.

    With --generator G.pth (or --example-generator): GAN IMP on a pre-trained progressive GAN instead (no IMAGES, no
    --task): per round G and its discriminator (the checkpoint's netD) are retrained with WGAN-GP on --data for
    --epochs, 20% of each one's conv weights pruned by magnitude (--random: at random), both rewound to the
    pre-trained weights. round_XX.pt is the generator ticket (retrained weights as fitted), round_XX.discriminator.pt
    D's masks and weights.
    """
    if source.given:
        _refuse_dip_inputs(images, task_spec, prior)
        return find_with_generator(
            source=source, net=prior.net, data=data, out_dir=out_dir, rounds=rounds, rate=rate, epochs=epochs,
            batch=batch, lr=GanTrainConfig.lr if lr is None else lr, random=random_, fresh=fresh_discriminator,
            seed=seed, device=device, quiet=quiet, as_json=as_json, ext=f".{fmt}",
        )  # fmt: skip
    _refuse_gan_inputs(images, task_spec, data, fresh_discriminator)
    lr = FitConfig.lr if lr is None else lr
    log = Reporter()  # notices on stderr: stdout stays the result (pure JSON with --json)
    granularity = _with_block(granularity, block)
    check_output_folder(out_dir)  # before the first fit, not after it (a read-only folder would waste the round)
    imp = ImpConfig(rounds=rounds, rate=rate, scope=scope, granularity=granularity, rewind_iter=rewind_iter,
                    target=target, random=random_)  # fmt: skip
    start, prior_label = make_prior(prior, seed)
    cleans, task, names = _prepared_images(images, task_spec, start, crop, resize, common, log)
    config = FitConfig(iters=iters, lr=lr, ema=ema, ema_mode=ema_mode, seed=seed, device=device)
    eta = "" if quiet or as_json or iters < 50 else _expected_time(start, cleans[0], device, seed, iters * (rounds + 1))
    log(f"IMP on {', '.join(names)} ({task_spec.name}), {prior_label}: rounds 0-{rounds}, into {out_dir}{eta}")
    paths = find_ticket(
        start, cleans if len(cleans) > 1 else cleans[0], task, out_dir, imp, config,
        image_name=names if len(names) > 1 else names[0], ext=f".{fmt}",
        progress=not (quiet or as_json) and sys.stderr.isatty(), log=log,
    )  # fmt: skip
    _print_summary(out_dir, paths, as_json)


def _refuse_dip_inputs(images: tuple[str, ...], task_spec: TaskSpec, prior: PriorSpec) -> None:
    """GAN IMP trains on --data: IMAGES, --task, --ticket and --arch are for the DIP's IMP."""
    if images or task_spec.name is not None or prior.ticket is not None or prior.has_arch:
        raise InputError(None, "GAN IMP (--generator) takes no IMAGES, --task, --ticket or --arch: it trains on "
                         "--data")  # fmt: skip


def _refuse_gan_inputs(images: tuple[str, ...], task_spec: TaskSpec, data: str | None, fresh: bool) -> None:
    """The DIP's IMP needs IMAGES and --task; --data and --fresh-discriminator are for GAN IMP."""
    if not images or task_spec.name is None:
        raise InputError(None, "find needs IMAGES and --task (or --generator G.pth for GAN IMP)")
    if data is not None or fresh:
        raise InputError(None, "--data and --fresh-discriminator are for GAN IMP (--generator)")


def _prepared_images(
    images: tuple[str, ...],
    task_spec: TaskSpec,
    start: Ticket,
    crop: str | None,
    resize: str | None,
    common: str,
    log: Reporter,
) -> tuple[list[torch.Tensor], Task, list[str]]:
    """The IMAGES loaded and prepared (:func:`_clean_image`), several brought to one size (--common-size); with the
    task and the images' names."""
    if len(images) > 1 and task_spec.mask_path is not None:
        raise InputError(task_spec.mask_path, "a mask file is for one image; several images draw their masks (--drop)")
    prepared = [_clean_image(image, task_spec, start, crop, resize, log) for image in images]
    task = prepared[0][1]
    names = [image_name(image) for image in images]
    cleans = [clean for clean, _ in prepared]
    if len(cleans) > 1:
        cleans, msg = common_size(cleans, task.clean_multiple(start.arch.stride), common, names)
        if msg:
            log(msg)
    return cleans, task, names


def _expected_time(start: Ticket, clean: torch.Tensor, device: str, seed: int, steps: int) -> str:
    """The run's expected duration for the log line: ``steps`` fitting steps of the masked network (what every IMP
    round fits), one step measured on ``clean``'s size."""
    step_s = estimate_fit(start, clean.shape[2], clean.shape[3], device, MASKED, seed)
    return f"; expected up to {format_duration(step_s * steps)} ({1e3 * step_s:.0f} ms/step measured)"


def _print_summary(out_dir: Path, paths: list[Path], as_json: bool) -> None:
    """The result on stdout: imp.json with --json, else one line."""
    if as_json:
        summary = out_dir / "imp.json"
        click.echo(summary.read_text() if summary.is_file() else json.dumps({"rounds": [str(p) for p in paths]}))
        return
    click.echo(f"{len(paths)} round tickets in {out_dir} (summary: {out_dir / 'imp.json'})")


def _clean_image(
    image: str, task_spec: TaskSpec, start: Ticket, crop: str | None, resize: str | None, log: Reporter
) -> tuple[torch.Tensor, Task]:
    """One IMAGE loaded, shrunk by --crop / --resize, cropped to the network's stride and checked; with the task
    (holding the --mask, sized alike, for inpainting)."""
    img = load_image(image)
    mask = task_spec.load_mask(like=img)
    if crop or resize:
        img, box, shrink_msg = shrink_image(image, img, crop, resize)
        if mask is not None:
            mask, _, _ = shrink_image(image, mask.expand(-1, 3, -1, -1), crop, resize)
            mask = (mask[:, :1] > 0.5).float()
        if shrink_msg:
            log(shrink_msg)
    task = task_spec.build(None)
    mult = task.clean_multiple(start.arch.stride)
    clean, msg = crop_to_multiple(img, mult)
    check_image_size(image, clean, mult)
    check_min_side(image, clean.shape[2], clean.shape[3], start.arch.min_side)
    check_work(start.arch, clean.shape[2], clean.shape[3], training=True, what="this fit")
    if msg:
        log(msg)
    if mask is not None:
        mask, _ = crop_to_multiple(mask, mult)
        task = task_spec.build(mask)
    return clean, task


def _with_block(granularity: str, block: str | None) -> str:
    """``--granularity block --block 32x16`` -> the registered pattern ``block32x16`` (the pattern names carry the
    block size, so tickets and resume settings name it)."""
    if block is None:
        return granularity
    if not granularity.startswith("block"):
        raise InputError(None, f"--block goes with --granularity block, not {granularity!r}")
    try:
        bo, bi = parse_block(block)
    except ValueError as exc:
        raise InputError(None, f"--block: {exc}") from None
    block_pattern(bo, bi)
    return block_name(bo, bi)

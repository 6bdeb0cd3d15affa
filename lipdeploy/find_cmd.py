"""``lipdeploy find``: find lottery image priors by iterative magnitude pruning, one ticket file per round."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .errors import InputError
from .fit import FitConfig
from .images import crop_to_multiple, image_name, load_image, load_mask
from .imp import ImpConfig, find_ticket
from .restore_cmd import _check_size, build_task, device_option, make_prior, prior_options, say, task_options


@click.command("find")
@click.argument("image", type=str)
@task_options
@prior_options
@click.option("-o", "--output", "out_dir", type=click.Path(path_type=Path), required=True, help="Folder for tickets.")
@click.option("--rounds", type=int, default=5, show_default=True, help="Pruning rounds (density 0.8^rounds).")
@click.option("--rate", type=float, default=0.2, show_default=True, help="Fraction of remaining weights per round.")
@click.option("--iters", type=int, default=3000, show_default=True, help="Fitting iterations per round.")
@click.option("--scope", type=click.Choice(["global", "layer"]), default="global", show_default=True)
@click.option(
    "--granularity", type=click.Choice(["unstructured", "kernel", "channel"]), default="unstructured", show_default=True
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
@click.option("--lr", type=float, default=0.01, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["pt", "safetensors"]), default="pt", show_default=True)
@device_option
@click.option("--quiet", is_flag=True, help="No progress bars.")
def find_command(
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
    out_dir: Path,
    rounds: int,
    rate: float,
    iters: int,
    scope: str,
    granularity: str,
    rewind_iter: int,
    target: str,
    random_: bool,
    lr: float,
    seed: int,
    fmt: str,
    device: str,
    backend: str,
    quiet: bool,
) -> None:
    """Find tickets for IMAGE (the clean image; the observation is simulated, seeded) by IMP into folder -o DIR.

    Writes round_00 (the dense fit) .. round_R, each a ticket with its masks, rewind-point weights, fitted weights
    and provenance, plus imp.json. Rerunning with more --rounds continues after the last complete round.
    """
    if iters < 1:
        raise InputError(None, f"--iters must be >= 1, got {iters}")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "exists and is not a directory")
    imp = ImpConfig(
        rounds=rounds,
        rate=rate,
        scope=scope,
        granularity=granularity,
        rewind_iter=rewind_iter,
        target=target,
        random=random_,
    )
    start, prior_label = make_prior(ticket, weights, upsample, act, arch, channels, dd_k, dd_depth, seed)
    img = load_image(image)
    mask = None
    if mask_path is not None:
        if task_name != "inpaint":
            raise InputError(mask_path, "--mask is for --task inpaint")
        mask = load_mask(mask_path, like=img)
    task = build_task(task_name, sigma, drop, factor, None)
    mult = task.clean_multiple(start.arch.stride)
    clean, msg = crop_to_multiple(img, mult)
    _check_size(image, clean, mult)
    if msg:
        say(msg)
    if mask is not None:
        mask, _ = crop_to_multiple(mask, mult)
        task = build_task(task_name, sigma, drop, factor, mask)
        task.mask_name = Path(mask_path).name
    config = FitConfig(iters=iters, lr=lr, seed=seed, device=device, backend=backend)
    say(f"IMP on {image_name(image)} ({task_name}), {prior_label}: rounds 0-{rounds}, into {out_dir}")
    paths = find_ticket(
        start,
        clean,
        task,
        out_dir,
        imp,
        config,
        image_name=image_name(image),
        ext=f".{fmt}",
        progress=not quiet and sys.stderr.isatty(),
        log=say,
    )
    click.echo(f"{len(paths)} round tickets in {out_dir} (summary: {out_dir / 'imp.json'})")

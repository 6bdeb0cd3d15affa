"""Restoring an image with a generator prior: fit the latent ``z`` so that ``G(z)`` explains the measurements.

The generator's weights stay fixed; only latents move (Adam). Two objectives (DOMAIN.md, "Generator priors"):

- ``ls`` (Bora et al. 2017): ``mean_i (y - A G(z))_i^2 + z_penalty * |z|^2``;
- ``mom`` (Jalal et al. 2020, the paper's robust CS): two latents ``zf``, ``zg``; each step a fresh permutation of the
  rows splits them into blocks of ``mom_batch``, the loss is the median over blocks of the block mean of
  ``r_f^2 - r_g^2``; descend in ``zf``, ascend in ``zg`` (one Adam each, lr 1e-2). The result is ``G(zf)``.
  Outlier rows land in a few blocks only, which the median ignores.

Restarts run as one batch (Adam is per-element and the losses add up, so restart k follows the trajectory a run of
restart k alone would, up to the rounding of batched kernels); the restart with the lowest measurement loss at the end
is kept (``ls``: mean squared residual; ``mom``: the median-of-means of ``r_f^2`` over the rows in their given order).

Images live on the generator's scale [-1, 1]; the per-pixel MSE is measured there (the paper's number) on the raw
output, PSNR/SSIM on [0, 1] after mapping ``(x + 1) / 2`` and clamping.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

from . import metrics
from .errors import InputError
from .fit_result import progress_bar
from .limits import check_lr
from .sensing import Measurements

OBJECTIVES = ("ls", "mom")


def _help(text: str, default: Any) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass
class LatentFitConfig:
    """Hyperparameters of a latent fit; the defaults are the paper's robust CS (Eval_sparse_PGAN_on_CS.py)."""

    objective: str = _help("ls: mean squared residual (+ z penalty); mom: median-of-means min-max (robust).", "ls")
    iters: int = _help("Adam steps (the paper's 1500).", 1500)
    lr: float = _help("Adam learning rate of each latent (the paper's 0.01).", 0.01)
    restarts: int = _help("Independent initial latents, fitted together; the lowest measurement loss is kept.", 1)
    seed: int = _help("Seed of the initial latents and of the mom row permutations.", 0)
    z_penalty: float = _help("ls: weight of |z|^2 in the loss (Bora et al.: 0.001 on celebA; 0 = none).", 0.0)
    mom_batch: int = _help("mom: rows per block (the paper's 20: 50 blocks of 1000 rows).", 20)
    log_every: int = _help("Record the loss (and MSE with ground truth) every this many steps.", 50)
    device: str = _help("Where to fit (cpu or cuda).", "cpu")

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise InputError(None, f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        for name in ("iters", "restarts", "mom_batch", "log_every"):
            if getattr(self, name) < 1:
                raise InputError(None, f"{name} must be >= 1, got {getattr(self, name)}")
        check_lr(self.lr, "learning rate")
        if not math.isfinite(self.z_penalty) or self.z_penalty < 0:
            raise InputError(None, f"z penalty must be a finite number >= 0, got {self.z_penalty}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def help(cls, name: str) -> str:
        """The help text of field ``name`` (the CLI's options reuse it)."""
        return next(f.metadata["help"] for f in fields(cls) if f.name == name)


@dataclass
class LatentFitResult:
    """Outcome of :func:`fit_latent` for K measured images (K = 1 for a 1-D ``y``). ``output``: ``G(z)`` of each
    image's kept restart, ``[K, 3, H, W]`` on [-1, 1] (raw); ``restarts[k]`` the restart kept for image k and
    ``restart_losses[k]`` all of image k's measurement losses. ``mse`` / ``psnr`` / ``ssim``: means over the images
    (``per_image`` holds each one's)."""

    output: torch.Tensor
    latent: torch.Tensor
    measurement_loss: float
    restart_losses: list[list[float]]
    restarts: list[int]
    mse: float | None
    psnr: float | None
    ssim: float | None
    seconds: float
    iterations: int
    step_ms: float
    history: list[dict[str, float]]
    per_image: list[dict[str, float]] = field(default_factory=list)

    @property
    def image(self) -> torch.Tensor:
        """The output on [0, 1] (clamped), for PNGs."""
        return to_unit(self.output)

    def metrics_record(self) -> dict[str, Any]:
        return {
            "measured_on": "final iteration; MSE per pixel on [-1, 1] (the paper's), PSNR/SSIM on [0, 1]",
            "mse": self.mse,
            "psnr": self.psnr,
            "ssim": self.ssim,
        }


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped."""
    return ((x + 1) / 2).clamp(0, 1)


def image_metrics(output: torch.Tensor, gt: torch.Tensor) -> dict[str, float]:
    """Per-pixel MSE on [-1, 1] (raw ``output``), PSNR and SSIM on [0, 1], of ``output`` to ``gt`` (both on [-1, 1];
    ``[K, C, H, W]``: the means over the K images)."""
    rows = per_image_metrics(output, gt)
    return {k: sum(r[k] for r in rows) / len(rows) for k in ("mse", "psnr", "ssim")}


def per_image_metrics(output: torch.Tensor, gt: torch.Tensor) -> list[dict[str, float]]:
    """:func:`image_metrics` of each image of a batch."""
    out = output.detach().cpu().float().reshape(gt.shape)
    ref = gt.detach().cpu().float()
    if ref.dim() == 3:
        out, ref = out[None], ref[None]
    rows = []
    for a, b in zip(out, ref, strict=True):
        mse = float((a - b).square().mean())
        ua, ub = to_unit(a[None]), to_unit(b[None])
        rows.append({"mse": mse, "psnr": metrics.psnr(ua, ub), "ssim": metrics.ssim(ua, ub)})
    return rows


def mom_loss(res_f: torch.Tensor, res_g: torch.Tensor, batch: int, perm: torch.Tensor) -> torch.Tensor:
    """The paper's median-of-means: rows permuted by ``perm``, blocks of ``batch`` (a remainder is left out this
    step), per block the mean of ``r_f^2 - r_g^2``, the median block's (torch.median: the lower middle one for an even
    count). ``res_*``: ``[B, m]``; returns ``[B]``."""
    m = res_f.shape[1]
    blocks = m // batch
    if blocks < 1:
        raise InputError(None, f"mom blocks of {batch} rows need at least {batch} measurements, got {m}")
    d = (res_f.square() - res_g.square())[:, perm[: blocks * batch]]
    return d.reshape(d.shape[0], blocks, batch).mean(dim=2).median(dim=1).values


def measurement_loss(
    meas: Measurements, x: torch.Tensor, config: LatentFitConfig, y: torch.Tensor | None = None
) -> torch.Tensor:
    """What restarts are compared by, per image ``x`` ``[B, n]`` against ``y`` (``[B, m]``; default ``meas.y``): see
    the module docstring."""
    r = (meas.y if y is None else y) - meas.predict(x)
    if config.objective == "ls":
        return r.square().mean(dim=1)
    zero = torch.zeros_like(r)
    return mom_loss(r, zero, min(config.mom_batch, r.shape[1]), torch.arange(r.shape[1], device=r.device))


def latent_dim(generator: nn.Module) -> int:
    """The generator's latent size (its ``latent_dim``, else the input width of its first linear layer)."""
    dim = getattr(generator, "latent_dim", None)
    if isinstance(dim, int):
        return dim
    first = next((m for m in generator.modules() if isinstance(m, nn.Linear)), None)
    if first is None:
        raise ValueError("cannot tell the generator's latent size: give latent_dim")
    return first.in_features


@dataclass
class _LatentBatch:
    """The latents of one fit as one batch: image k's restart j is row k * restarts + j (the zf's); mom's zg's follow
    as rows ``rows`` to ``2 * rows``."""

    z: torch.Tensor  # [count, d]: the leaf Adam moves
    y_rows: torch.Tensor  # [count, m]: each row's measurements
    sign: torch.Tensor  # [count, 1]: +1 descends (the zf's), -1 ascends (mom's zg's)
    gt_rows: torch.Tensor | None  # [rows, n]: each zf row's ground truth
    images: int
    restarts: int

    @property
    def rows(self) -> int:
        return self.images * self.restarts

    @property
    def count(self) -> int:
        return self.z.shape[0]


def _latent_batch(
    meas: Measurements, config: LatentFitConfig, gt: torch.Tensor | None, d: int, device: torch.device
) -> _LatentBatch:
    """The seeded initial latents of every image and restart, with the rows' measurements and ground truth."""
    y = meas.y.reshape(-1, meas.m).to(device)
    images, restarts = y.shape[0], config.restarts
    rows = images * restarts
    mom = config.objective == "mom"
    count = rows * (2 if mom else 1)  # mom: the zf's, then the zg's, in one batch
    y_rows = y.repeat_interleave(restarts, dim=0).repeat(2 if mom else 1, 1)
    gen = torch.Generator().manual_seed(config.seed)
    z = torch.randn(count, d, generator=gen).to(device).requires_grad_()
    gt_rows = None
    if gt is not None:
        gt_flat = gt.reshape(images, -1).to(device)
        if gt_flat.shape[1] != meas.n:
            raise InputError(
                None, f"the ground truth has {gt_flat.shape[1]} values, the measurements describe {meas.n}"
            )
        gt_rows = gt_flat.repeat_interleave(restarts, dim=0)
    sign = torch.ones(count, 1, device=device)
    sign[rows:] = -1.0
    return _LatentBatch(z=z, y_rows=y_rows, sign=sign, gt_rows=gt_rows, images=images, restarts=restarts)


@contextmanager
def _frozen(generator: nn.Module, device: torch.device) -> Iterator[None]:
    """``generator`` on ``device`` in eval mode with its weights frozen; its mode and ``requires_grad`` flags are
    given back after."""
    was_training = generator.training
    grads = [p.requires_grad for p in generator.parameters()]
    generator.to(device).eval()
    for p in generator.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, g in zip(generator.parameters(), grads, strict=True):
            p.requires_grad_(g)
        generator.train(was_training)


def _step_losses(
    generator: nn.Module,
    batch: _LatentBatch,
    meas: Measurements,
    config: LatentFitConfig,
    perm_gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step's images ``[count, n]`` and each row's loss (the objective of the module docstring)."""
    x = generator(batch.z).reshape(batch.count, -1)
    r = batch.y_rows - meas.predict(x)
    if config.objective == "mom":
        perm = torch.randperm(r.shape[1], generator=perm_gen, device=batch.z.device)
        return x, mom_loss(r[: batch.rows], r[batch.rows :], config.mom_batch, perm)
    return x, r.square().mean(dim=1) + config.z_penalty * batch.z.square().sum(dim=1)


def _descend(
    generator: nn.Module,
    batch: _LatentBatch,
    meas: Measurements,
    config: LatentFitConfig,
    progress: bool,
    description: str,
    callback: Callable[[int, float], None] | None,
    t0: float,
) -> list[dict[str, float]]:
    """``config.iters`` Adam steps of the latents (ascent for mom's zg's); the history logged every ``log_every``
    steps and at the last (seconds since ``t0``, the loss of each image's best restart, with ground truth its MSE)."""
    opt = torch.optim.Adam([batch.z], lr=config.lr)  # ascent for the zg rows: their gradient is negated below
    perm_gen = torch.Generator(device=batch.z.device).manual_seed(config.seed + 1)
    history: list[dict[str, float]] = []
    bar = progress_bar(progress, description, config.iters)
    bar_task = bar.add_task(description, total=config.iters, stats="") if bar else None
    try:
        if bar:
            bar.start()
        for i in range(config.iters):
            x, per = _step_losses(generator, batch, meas, config, perm_gen)
            opt.zero_grad(set_to_none=True)
            per.sum().backward()
            batch.z.grad.mul_(batch.sign)
            opt.step()
            loss = float(per.detach().view(batch.images, batch.restarts).min(dim=1).values.mean())
            if callback is not None:
                callback(i + 1, loss)
            if (i + 1) % config.log_every == 0 or i == config.iters - 1:
                entry = {"iter": i + 1, "seconds": round(time.perf_counter() - t0, 4), "loss": loss}
                if batch.gt_rows is not None:
                    mse = (x[: batch.rows].detach() - batch.gt_rows).square().mean(dim=1)
                    entry["mse"] = float(mse.view(batch.images, batch.restarts).min(dim=1).values.mean())
                history.append(entry)
                if bar:
                    bar.update(bar_task, completed=i + 1, stats=f"loss {loss:.5g}")
            elif bar:
                bar.update(bar_task, completed=i + 1)
    finally:
        if bar:
            bar.stop()
    return history


def fit_latent(
    generator: nn.Module,
    meas: Measurements,
    config: LatentFitConfig | None = None,
    *,
    gt: torch.Tensor | None = None,
    dim: int | None = None,
    progress: bool = False,
    description: str = "latent fit",
    callback: Callable[[int, float], None] | None = None,
) -> LatentFitResult:
    """Fit latents of ``generator`` (any module mapping ``[B, d]`` to ``[B, 3, H, W]``, weights left untouched) to
    ``meas`` (one image, or K images measured by one operator: all fitted in one batch); ``gt`` (on [-1, 1], one
    image per row of ``y``) adds MSE/PSNR/SSIM. ``callback(step, loss)`` is called after every step."""
    config = config or LatentFitConfig()
    device = torch.device(config.device)
    batch = _latent_batch(meas, config, gt, dim or latent_dim(generator), device)
    meas_d = meas.to(device)
    with _frozen(generator, device):
        t0 = time.perf_counter()
        history = _descend(generator, batch, meas_d, config, progress, description, callback, t0)
        with torch.no_grad():
            zf = batch.z[: batch.rows].detach()
            final = generator(zf)
            losses = measurement_loss(meas_d, final.reshape(batch.rows, -1), config, batch.y_rows[: batch.rows])
    losses = losses.view(batch.images, batch.restarts)
    seconds = time.perf_counter() - t0
    kept = torch.argmin(losses, dim=1)
    index = torch.arange(batch.images, device=kept.device) * batch.restarts + kept
    output = final[index].cpu()
    per_image = per_image_metrics(output, gt) if gt is not None else []
    quality = {k: sum(r[k] for r in per_image) / len(per_image) if per_image else None for k in ("mse", "psnr", "ssim")}
    return LatentFitResult(
        output=output,
        latent=zf[index].cpu(),
        measurement_loss=float(losses.min(dim=1).values.mean()),
        restart_losses=[[float(v) for v in row] for row in losses.cpu()],
        restarts=[int(k) for k in kept],
        seconds=seconds,
        iterations=config.iters,
        step_ms=1000.0 * seconds / config.iters,
        history=history,
        per_image=per_image,
        **quality,
    )


__all__ = [
    "OBJECTIVES",
    "LatentFitConfig",
    "LatentFitResult",
    "fit_latent",
    "image_metrics",
    "latent_dim",
    "measurement_loss",
    "mom_loss",
    "per_image_metrics",
    "to_unit",
]

"""WGAN-GP training of a generator and its discriminator, as the paper retrains pruned progressive GANs.

The paper's settings (PGAN_random_IMP.py, DOMAIN.md "Generator priors"): Adam lr 2e-4, betas (0, 0.99) for both
networks; per batch one critic step (n_critic 1) with the loss
``-E[D(real)] + E[D(fake)] + 10 E[(|grad D(x_hat)| - 1)^2] + 1e-3 E[D(real)^2]`` (``x_hat`` a per-image uniform
blend of a real and a fake image: Gulrajani et al.'s penalty, and the progressive GAN's drift term), then one
generator step with ``-E[D(G(z))]``. Images are on [-1, 1].

Pruned weights stay exactly zero: both networks' masks are applied before training and their gradients masked after
each backward pass, in one fused pass per network (:class:`lipdeploy.fit_result.PrunedGradients`, as the DIP fit
does), so Adam's moments for them stay zero and so does its update.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

from .errors import InputError
from .fit_result import PrunedGradients, progress_bar
from .latent_fit import latent_dim
from .masks import apply_masks_


def _help(text: str, default: Any) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass
class GanTrainConfig:
    """WGAN-GP settings; the defaults are the paper's retraining (30 epochs, batch 64)."""

    epochs: int = _help("Passes over the training images per round (the paper's 30 on CelebA-HQ).", 30)
    batch: int = _help("Images per step (the paper's 64).", 64)
    lr: float = _help("Adam learning rate of G and D (the paper's 2e-4).", 2e-4)
    beta1: float = _help("Adam beta1 (the progressive GAN's 0).", 0.0)
    beta2: float = _help("Adam beta2 (the progressive GAN's 0.99).", 0.99)
    gp_weight: float = _help("Weight of the gradient penalty (Gulrajani et al.'s 10).", 10.0)
    drift: float = _help("Weight of E[D(real)^2] (the progressive GAN's 1e-3).", 1e-3)
    n_critic: int = _help("Critic steps per generator step (the paper's 1).", 1)
    seed: int = _help("Seed of the latents, the image order and the penalty's blends.", 0)
    device: str = _help("Where to train (cpu or cuda).", "cpu")

    def __post_init__(self) -> None:
        for name in ("epochs", "batch", "n_critic"):
            if getattr(self, name) < 1:
                raise InputError(None, f"{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and 0 < self.lr <= 1):
            raise InputError(None, f"learning rate must be in (0, 1], got {self.lr}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def help(cls, name: str) -> str:
        return next(f.metadata["help"] for f in fields(cls) if f.name == name)


def gradient_penalty(
    discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor
) -> torch.Tensor:
    """``E[(|grad D(x_hat)|_2 - 1)^2]`` at ``x_hat = eps real + (1 - eps) fake`` (``eps`` ``[N, 1, 1, 1]``)."""
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminator(x_hat).sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).square().mean()


def critic_loss(
    discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor, config: GanTrainConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """The critic's WGAN-GP loss (module docstring) and the Wasserstein estimate ``E[D(real)] - E[D(fake)]``."""
    d_real, d_fake = discriminator(real), discriminator(fake)
    gp = gradient_penalty(discriminator, real, fake, eps)
    loss = -d_real.mean() + d_fake.mean() + config.gp_weight * gp + config.drift * d_real.square().mean()
    return loss, (d_real.mean() - d_fake.mean()).detach()


def train_wgan_gp(
    generator: nn.Module,
    discriminator: nn.Module,
    images: torch.Tensor,
    config: GanTrainConfig,
    *,
    g_masks: Mapping[str, torch.Tensor] | None = None,
    d_masks: Mapping[str, torch.Tensor] | None = None,
    progress: bool = False,
    description: str = "WGAN-GP",
) -> dict[str, Any]:
    """Train both networks in place on ``images`` (``[N, C, R, R]`` on [-1, 1]) under their masks; returns the
    last epoch's mean losses and the time taken."""
    device = torch.device(config.device)
    generator.to(device).train()
    discriminator.to(device).train()
    pruned = _Pruned(_masked(generator, g_masks), _masked(discriminator, d_masks))
    betas = (config.beta1, config.beta2)
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr, betas=betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=config.lr, betas=betas)
    gen = torch.Generator().manual_seed(config.seed)
    dim = latent_dim(generator)
    data = images.to(device)
    n = data.shape[0]
    steps = -(-n // config.batch)
    bar = progress_bar(progress, description, config.epochs * steps)
    bar_task = bar.add_task(description, total=config.epochs * steps, stats="") if bar else None
    t0 = time.perf_counter()
    sums: dict[str, float] = {}
    try:
        if bar:
            bar.start()
        for epoch in range(config.epochs):
            sums = {"loss_d": 0.0, "loss_g": 0.0, "wasserstein": 0.0}
            order = torch.randperm(n, generator=gen)
            for s in range(steps):
                real = data[order[s * config.batch : (s + 1) * config.batch].to(device)]
                losses = _step(generator, discriminator, real, dim, gen, (opt_g, opt_d), pruned, config)
                for k, v in losses.items():
                    sums[k] += v / steps
                if bar:
                    bar.update(bar_task, advance=1, stats=f"epoch {epoch + 1}  W {losses['wasserstein']:.3f}")
    finally:
        if bar:
            bar.stop()
    if not all(math.isfinite(v) for v in sums.values()):
        raise InputError(None, "GAN training diverged (a loss is not finite): lower the learning rate")
    return {**{k: round(v, 6) for k, v in sums.items()}, "seconds": round(time.perf_counter() - t0, 3)}


@dataclass(frozen=True)
class _Pruned:
    """The gradient masks of the generator and of the discriminator."""

    generator: PrunedGradients
    discriminator: PrunedGradients


def _masked(model: nn.Module, masks: Mapping[str, torch.Tensor] | None) -> PrunedGradients:
    """Zero ``model``'s pruned weights in place; the pass that masks their gradients after each backward."""
    if not masks:
        return PrunedGradients()
    with torch.no_grad():
        apply_masks_(model, masks)
    return PrunedGradients.of(model, masks)


def _step(
    generator: nn.Module,
    discriminator: nn.Module,
    real: torch.Tensor,
    dim: int,
    gen: torch.Generator,
    optimizers: tuple[torch.optim.Optimizer, torch.optim.Optimizer],
    pruned: _Pruned,
    config: GanTrainConfig,
) -> dict[str, float]:
    """One batch: ``n_critic`` critic steps, then one generator step (D's weights frozen for it); each network's
    pruned gradients masked before its optimizer steps."""
    opt_g, opt_d = optimizers
    device = real.device
    b = real.shape[0]
    for _ in range(config.n_critic):
        with torch.no_grad():
            fake = generator(torch.randn(b, dim, generator=gen).to(device))
        eps = torch.rand(b, 1, 1, 1, generator=gen).to(device)
        loss_d, wasserstein = critic_loss(discriminator, real, fake, eps, config)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        pruned.discriminator()
        opt_d.step()
    for p in discriminator.parameters():
        p.requires_grad_(False)
    try:
        loss_g = -discriminator(generator(torch.randn(b, dim, generator=gen).to(device))).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        pruned.generator()
        opt_g.step()
    finally:
        for p in discriminator.parameters():
            p.requires_grad_(True)
    return {"loss_d": float(loss_d.detach()), "loss_g": float(loss_g.detach()), "wasserstein": float(wasserstein)}


__all__ = ["GanTrainConfig", "critic_loss", "gradient_penalty", "train_wgan_gp"]

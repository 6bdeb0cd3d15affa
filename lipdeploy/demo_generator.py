"""The bundled demo generator: a 16 x 16 progressive GAN fitted to scikit-image's LFW faces, made by this module.

``python -m lipdeploy.demo_generator`` rebuilds ``lipdeploy/data/example_generator.pth`` bit for bit on a CPU (one
thread, fixed seeds; a few minutes), so that every fresh machine has a generator prior to try: ``lipdeploy restore
--task cs --example-generator`` and ``lipdeploy find --example-generator``.

How it is made (no download, no GPU, minutes on one core):

1. the generator (:data:`SPEC`: latent 32, 32 / 32 / 16 channels at 4 / 8 / 16 pixels) is fitted to the first 80
   faces and their mirror images (160 images, :func:`lipdeploy.faces.lfw_faces`; faces 80-99 are held out) by
   *generative latent optimisation* (Bojanowski et al. 2018): one latent per image, the latents and the weights
   fitted together to the images' mean squared error (Adam). A GAN fitted to 160 images in minutes on one core gives a
   worse prior than this (mode collapse is the rule at that size); GLO gives a smooth face manifold, which is what a
   compressive-sensing prior needs;
2. the discriminator (the zoo's DNet for that generator, minibatch stddev on) is then trained as a WGAN-GP critic of
   the fitted generator on the same faces, the generator held fixed, so that the checkpoint's ``netD`` is a real
   critic of its ``netG`` for GAN IMP to start from.

The file is a pytorch_GAN_zoo checkpoint ``{'config', 'netG', 'netD', 'avgG'}`` of plain tensors (``avgG`` = ``netG``:
no moving average was kept), ``config`` holding the zoo's keys plus ``lipdeployDemo`` (how it was made).
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path
from typing import Any

import torch

from .discriminator import DiscriminatorSpec
from .faces import lfw_faces
from .fileio import atomic_write_bytes
from .gan_train import GanTrainConfig, critic_loss
from .generator import PGANSpec

SPEC = PGANSpec(latent_dim=32, depth_scale0=32, depth_other_scales=(32, 16))
D_SPEC = DiscriminatorSpec(depth_scale0=32, depth_other_scales=(32, 16), minibatch_stddev=True)
SEED = 0
GLO_STEPS = 1500  # measured: the training-set MSE flattens past ~1200 steps (see the module's log)
GLO_LR_WEIGHTS = 2e-3
GLO_LR_LATENTS = 1e-2
CRITIC_STEPS = 300
CRITIC_BATCH = 32


def zoo_config(spec: PGANSpec, d_spec: DiscriminatorSpec, made: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's ``config`` in the zoo's keys (what :meth:`PGANSpec.from_config` reads) plus how it was made."""
    return {
        "latentVectorDim": spec.latent_dim,
        "depthScale0": spec.depth_scale0,
        "depthOtherScales": list(spec.depth_other_scales),
        "alpha": 0.0,
        "leakyReluLeak": spec.leaky_relu_leak,
        "dimOutput": spec.dim_output,
        "equalizedlR": spec.equalized_lr,
        "perChannelNormalization": spec.normalization,
        "miniBatchStdDev": d_spec.minibatch_stddev,
        "lossCriterion": "WGANGP",
        "lipdeployDemo": made,
    }


def fit_glo(faces: torch.Tensor, steps: int, log: bool = True) -> tuple[torch.nn.Module, list[float]]:
    """Step 1: the generator and one latent per face fitted together (module docstring); returns G and the losses."""
    torch.manual_seed(SEED)  # the zoo's initialisation draws from the global generator
    generator = SPEC.build()
    latents = torch.randn(faces.shape[0], SPEC.latent_dim, generator=torch.Generator().manual_seed(SEED + 1))
    latents.requires_grad_(True)
    opt = torch.optim.Adam(
        [{"params": generator.parameters(), "lr": GLO_LR_WEIGHTS}, {"params": [latents], "lr": GLO_LR_LATENTS}]
    )
    losses = []
    for step in range(steps):
        loss = (generator(latents) - faces).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if log and (step + 1) % 250 == 0:
            print(f"GLO step {step + 1}/{steps}: MSE {losses[-1]:.5f}", flush=True)
    return generator.eval(), losses


def train_critic(generator: torch.nn.Module, faces: torch.Tensor, steps: int, log: bool = True) -> torch.nn.Module:
    """Step 2: the discriminator trained as a WGAN-GP critic of the fixed generator (the paper's loss and Adam)."""
    torch.manual_seed(SEED + 2)
    critic = D_SPEC.build()
    config = GanTrainConfig(batch=CRITIC_BATCH, seed=SEED + 3)
    opt = torch.optim.Adam(critic.parameters(), lr=config.lr, betas=(config.beta1, config.beta2))
    gen = torch.Generator().manual_seed(config.seed)
    for p in generator.parameters():
        p.requires_grad_(False)
    for step in range(steps):
        real = faces[torch.randint(0, faces.shape[0], (CRITIC_BATCH,), generator=gen)]
        with torch.no_grad():
            fake = generator(torch.randn(CRITIC_BATCH, SPEC.latent_dim, generator=gen))
        eps = torch.rand(CRITIC_BATCH, 1, 1, 1, generator=gen)
        loss, wasserstein = critic_loss(critic, real, fake, eps, config)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log and (step + 1) % 100 == 0:
            print(
                f"critic step {step + 1}/{steps}: loss {float(loss.detach()):.4f}, W {float(wasserstein):.4f}",
                flush=True,
            )
    for p in generator.parameters():
        p.requires_grad_(True)
    return critic.eval()


def build(glo_steps: int = GLO_STEPS, critic_steps: int = CRITIC_STEPS, log: bool = True) -> dict[str, Any]:
    """The demo checkpoint (a dict of plain tensors and data), deterministic on a CPU with one thread."""
    faces = lfw_faces(SPEC.resolution, "train")
    faces = torch.cat([faces, faces.flip(3)])  # mirror images: twice the faces for free
    t0 = time.perf_counter()
    generator, losses = fit_glo(faces, glo_steps, log)
    critic = train_critic(generator, faces, critic_steps, log)
    made = {
        "by": "python -m lipdeploy.demo_generator",
        "data": "skimage.data.lfw_subset() faces 0-79 and their mirror images, 16x16 RGB on [-1, 1]",
        "held_out": "faces 80-99 (skimage:lfw_faces:test)",
        "generator": f"GLO, {glo_steps} Adam steps (weights lr {GLO_LR_WEIGHTS}, latents lr {GLO_LR_LATENTS})",
        "discriminator": f"WGAN-GP critic of the fixed generator, {critic_steps} steps of batch {CRITIC_BATCH}",
        "final_training_mse": round(losses[-1], 6) if losses else None,
        "seed": SEED,
    }
    if log:
        print(f"made in {time.perf_counter() - t0:.1f} s", flush=True)
    state_g = {k: v.detach().clone().contiguous() for k, v in generator.state_dict().items()}
    state_d = {k: v.detach().clone().contiguous() for k, v in critic.state_dict().items()}
    return {
        "config": zoo_config(SPEC, D_SPEC, made),
        "netG": state_g,
        "netD": state_d,
        "avgG": {k: v.clone() for k, v in state_g.items()},
    }


def checkpoint_bytes(checkpoint: dict[str, Any]) -> bytes:
    """``torch.save`` of the checkpoint into memory: the bytes depend on the content only (saved to a file, the zip's
    inner folder is named after the file, here a temporary one)."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return buffer.getvalue()


def default_path() -> Path:
    return Path(__file__).resolve().parent / "data" / "example_generator.pth"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lipdeploy.demo_generator", description=__doc__.split("\n")[0])
    parser.add_argument("-o", "--output", type=Path, default=default_path(), help="Checkpoint to write.")
    parser.add_argument("--glo-steps", type=int, default=GLO_STEPS, help="Generator fitting steps.")
    parser.add_argument("--critic-steps", type=int, default=CRITIC_STEPS, help="Discriminator training steps.")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one thread: the same float reductions, hence the same bits, on every CPU run
    checkpoint = build(args.glo_steps, args.critic_steps)
    atomic_write_bytes(args.output, checkpoint_bytes(checkpoint))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

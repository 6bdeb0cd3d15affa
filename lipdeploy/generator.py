"""The progressive-GAN generator (pytorch_GAN_zoo's ``GNet``) as a prior: :class:`PGANSpec` and :class:`Generator`.

Reference-exact to the zoo (facts in DOMAIN.md, "Generator priors"): the latent is pixel-normalised, the format layer
(an equalized linear layer, latent -> 16 x depth0) is viewed as a 4 x 4 map, pixel-normalised, then the scale-0 conv
and, per further scale, nearest x2 upsampling and two 3x3 convs, each conv followed by LeakyReLU and pixel norm; the
output is the last toRGB 1x1 conv, linear. A checkpoint saved mid-growth (``alpha > 0``) blends in the previous
scale's toRGB output, upsampled: ``alpha * y + (1 - alpha) * x``.

Module paths are the zoo's, so its checkpoints load unchanged: ``formatLayer.module.weight``,
``groupScale0.0.module.weight``, ``scaleLayers.{s}.{0,1}.module.weight``, ``toRGBLayers.{i}.module.weight`` (biases
likewise). The forward is built from :mod:`lipdeploy.layers` and standard ``torch.nn`` modules with no data-dependent
control flow, so ``torch.fx.symbolic_trace`` traces it with default leaves; the stateless modules (LeakyReLU, pixel
norm, upsampling) are shared, one of each, as in the zoo.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .layers import EqualizedConv2d, EqualizedLinear, PixelNorm, init_equalized_
from .limits import MAX_CHANNELS, MAX_GAN_SCALES
from .spec_fields import bool_field, float_field, int_field, int_tuple_field

# The zoo's loss criteria and the output activation each gives its generator (models/loss_criterions): WGAN-GP (the
# progressive GAN's, and the paper's) and the logistic loss leave the output linear; MSE and DCGAN put a tanh on it.
ZOO_OUTPUT_ACTIVATIONS: dict[str, str | None] = {"WGANGP": None, "Logistic": None, "MSE": "tanh", "DCGAN": "tanh"}

# The largest latent batch make_latent draws: 65536 x 512 floats is 128 MB, beyond any sampling or inversion run.
MAX_LATENT_BATCH = 65536


@dataclass(frozen=True)
class PGANSpec:
    """A progressive-GAN generator. Defaults are the paper's celebAHQ-256 generator (23,051,989 parameters).

    Fields (the zoo's config key in brackets): ``latent_dim`` [latentVectorDim], ``depth_scale0`` [depthScale0],
    ``depth_other_scales`` [depthOtherScales] (one width per doubling beyond 4 x 4), ``alpha`` [alpha] (the growth
    blend, 0 when fully grown), ``leaky_relu_leak`` [leakyReluLeak], ``dim_output`` [dimOutput], ``equalized_lr``
    [equalizedlR], ``normalization`` [perChannelNormalization] (pixel norm), ``generation_activation`` (None only:
    the linear output of WGAN-GP generators).
    """

    latent_dim: int = 512
    depth_scale0: int = 512
    depth_other_scales: tuple[int, ...] = (512, 512, 512, 256, 128, 64)
    alpha: float = 0.0
    leaky_relu_leak: float = 0.2
    dim_output: int = 3
    equalized_lr: bool = True
    normalization: bool = True
    generation_activation: str | None = None

    kind = "pgan"

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: store the canonical types the validators return
        set_(self, "latent_dim", int_field("latent_dim", self.latent_dim, 1, MAX_CHANNELS))
        set_(self, "depth_scale0", int_field("depth_scale0", self.depth_scale0, 1, MAX_CHANNELS))
        scales = int_tuple_field("depth_other_scales", self.depth_other_scales, MAX_GAN_SCALES, 1, MAX_CHANNELS)
        set_(self, "depth_other_scales", scales)
        set_(self, "alpha", float_field("alpha", self.alpha, 0.0, 1.0))
        set_(self, "leaky_relu_leak", float_field("leaky_relu_leak", self.leaky_relu_leak, 0.0, 1.0))
        set_(self, "dim_output", int_field("dim_output", self.dim_output, 1, MAX_CHANNELS))
        bool_field("equalized_lr", self.equalized_lr)
        bool_field("normalization", self.normalization)
        if self.generation_activation is not None:
            got = repr(self.generation_activation)[:40]
            raise ValueError(f"generation_activation {got} is not supported: only a linear output (None)")
        if self.alpha > 0 and not scales:
            raise ValueError("alpha > 0 blends two scales: a 4x4 generator (no depth_other_scales) has one")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> PGANSpec:
        """The spec a pytorch_GAN_zoo checkpoint's ``config`` describes (ValueError naming the bad key otherwise).

        ``latentVectorDim``, ``depthScale0`` and ``depthOtherScales`` are required; the other keys default to the
        zoo's defaults. As in the zoo, ``alpha`` is ignored on a generator with no scale beyond 4 x 4.
        """
        if not isinstance(config, Mapping):
            raise ValueError(f"config must be a mapping, not a {type(config).__name__}")
        for key in ("latentVectorDim", "depthScale0", "depthOtherScales"):
            if key not in config:
                raise ValueError(f"config has no {key!r} (the generator's shape)")
        loss = config.get("lossCriterion", "WGANGP")
        if not isinstance(loss, str) or loss not in ZOO_OUTPUT_ACTIVATIONS:
            raise ValueError(f"config's lossCriterion must be one of {', '.join(ZOO_OUTPUT_ACTIVATIONS)}, got {loss!r}")
        scales = config["depthOtherScales"]
        grown = isinstance(scales, (list, tuple)) and len(scales) > 0
        return cls(
            latent_dim=config["latentVectorDim"],
            depth_scale0=config["depthScale0"],
            depth_other_scales=scales,
            alpha=config.get("alpha", 0.0) if grown else 0.0,
            leaky_relu_leak=config.get("leakyReluLeak", 0.2),
            dim_output=config.get("dimOutput", 3),
            equalized_lr=config.get("equalizedlR", True),
            normalization=config.get("perChannelNormalization", True),
            generation_activation=ZOO_OUTPUT_ACTIVATIONS[loss],
        )

    @property
    def depths(self) -> tuple[int, ...]:
        """Channels per scale, 4 x 4 first."""
        return (self.depth_scale0, *self.depth_other_scales)

    @property
    def resolution(self) -> int:
        """Side of the generated image: 4 pixels doubled once per further scale."""
        return 4 * 2 ** len(self.depth_other_scales)

    @property
    def input_channels(self) -> int:
        return self.latent_dim

    def input_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, int]:
        """Shape of one latent, ``(1, latent_dim)``; ``height`` / ``width``, when given, must be the resolution."""
        for side in (height, width):
            if side is not None and side != self.resolution:
                raise ValueError(f"the generator makes {self.resolution}x{self.resolution} images, not {side} pixels")
        return (1, self.latent_dim)

    def build(self) -> Generator:
        return Generator(self)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["kind"] = self.kind
        d["depth_other_scales"] = list(self.depth_other_scales)
        return d

    def describe(self) -> str:
        extra = [f"alpha {self.alpha:g}"] if self.alpha else []
        if not self.normalization:
            extra.append("no pixel norm")
        if not self.equalized_lr:
            extra.append("no equalized lr")
        return (
            f"progressive GAN {self.resolution}x{self.resolution}, latent {self.latent_dim}, "
            f"depths {list(self.depths)}" + "".join(f", {e}" for e in extra)
        )


class Generator(nn.Module):
    """The zoo's ``GNet`` for one :class:`PGANSpec`, initialised as the zoo does (weights N(0, 1), biases 0)."""

    def __init__(self, spec: PGANSpec) -> None:
        super().__init__()
        eq = spec.equalized_lr
        depths = spec.depths
        self.alpha = spec.alpha
        self.normalization = spec.normalization
        self.formatLayer = EqualizedLinear(spec.latent_dim, 16 * spec.depth_scale0, equalized=eq)
        self.formatView = nn.Unflatten(1, (spec.depth_scale0, 4, 4))
        self.groupScale0 = nn.ModuleList([EqualizedConv2d(depths[0], depths[0], 3, padding=1, equalized=eq)])
        self.scaleLayers = nn.ModuleList(
            nn.ModuleList(
                [
                    EqualizedConv2d(prev, new, 3, padding=1, equalized=eq),
                    EqualizedConv2d(new, new, 3, padding=1, equalized=eq),
                ]
            )
            for prev, new in zip(depths[:-1], depths[1:], strict=True)
        )
        self.toRGBLayers = nn.ModuleList(EqualizedConv2d(d, spec.dim_output, 1, equalized=eq) for d in depths)
        self.leakyRelu = nn.LeakyReLU(spec.leaky_relu_leak)
        self.normalizationLayer = PixelNorm()
        self.upscale = nn.Upsample(scale_factor=2, mode="nearest")
        init_equalized_(self)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalizationLayer(x) if self.normalization else x

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``z`` [N, latent_dim] -> image [N, dim_output, resolution, resolution] (linear, nominally [-1, 1])."""
        x = self._norm(z)
        x = self._norm(self.formatView(self.leakyRelu(self.formatLayer(x))))
        x = self._norm(self.leakyRelu(self.groupScale0[0](x)))
        previous = x  # the input of the last scale: the mid-growth blend's low-resolution branch starts there
        last = len(self.scaleLayers) - 1
        for s, group in enumerate(self.scaleLayers):
            if s == last:
                previous = x
            x = self.upscale(x)
            for conv in group:
                x = self._norm(self.leakyRelu(conv(x)))
        out = self.toRGBLayers[-1](x)
        if self.alpha > 0:
            low = self.upscale(self.toRGBLayers[-2](previous))
            out = self.alpha * low + (1.0 - self.alpha) * out
        return out


def make_latent(spec: PGANSpec, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """``batch`` latents drawn from N(0, I), shape ``[batch, latent_dim]``, from a fixed seed."""
    batch = int_field("batch", batch, 1, MAX_LATENT_BATCH)
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((batch, spec.latent_dim), generator=gen)

"""The progressive-GAN discriminator (pytorch_GAN_zoo's ``DNet``): what retrains a pruned generator (GAN IMP).

Reference-exact to the zoo (models/networks/progressive_conv_net.py, mini_batch_stddev_module.py), fully grown:
``x = LReLU(fromRGB[-1](image))``; for each scale from the finest down, ``x = LReLU(conv0(x))``, ``x = LReLU(conv1(x))``
(conv0 keeps the scale's width, conv1 maps it to the coarser scale's), 2x2 average pooling; at 4 x 4 optionally the
minibatch standard-deviation channel, ``LReLU(groupScaleZero.0(x))`` (3x3), flattened, ``LReLU(groupScaleZero.1(x))``
(linear 16 d0 -> d0), then ``decisionLayer`` (linear d0 -> 1, no activation: WGAN-GP's critic). Every layer is an
equalized-learning-rate layer (:mod:`lipdeploy.layers`), LeakyReLU 0.2, 3x3 convs pad 1, fromRGB 1x1.

Mid-growth (``alpha > 0``): ``y = LReLU(fromRGB[-2](avgpool(image)))`` and, after the finest scale's pooling,
``x = alpha y + (1 - alpha) x``. As in the zoo, the blend happens only when there are at least two scales beyond
4 x 4: with one (an 8 x 8 discriminator) ``y`` is computed and unused, so alpha has no effect there.

The minibatch standard deviation is the zoo's, quirks included: groups of ``min(N, 4)`` images (all N when 4 does not
divide N; a zero channel when that leaves groups of one); image i belongs to group ``i mod (N / size)`` (the batch is
viewed as ``[size, N / size, ...]``), the *unbiased* variance over the group plus 1e-8 under a square root, averaged
over channels and pixels; the value of group g is then given to images ``g * size .. g * size + size - 1``.

Module paths are the zoo's netD keys: ``fromRGBLayers.{i}.module.*``, ``scaleLayers.{s}.{0,1}.module.*`` (s = 0 is the
8 x 8 scale), ``groupScaleZero.{0,1}.module.*``, ``decisionLayer.module.*``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers import EqualizedConv2d, EqualizedLinear, init_equalized_
from .limits import MAX_CHANNELS

MINIBATCH_GROUP = 4  # the zoo's subGroupSize
STDDEV_EPS = 1e-8


def minibatch_stddev(x: torch.Tensor, group: int = MINIBATCH_GROUP) -> torch.Tensor:
    """``x`` ``[N, C, H, W]`` with the zoo's minibatch standard-deviation channel appended (module docstring)."""
    n, c, h, w = x.shape
    size = min(n, group)
    if n % size:
        size = n
    groups = n // size
    if size == 1:
        return torch.cat([x, torch.zeros(n, 1, h, w, dtype=x.dtype, device=x.device)], dim=1)
    std = torch.sqrt(x.view(size, groups, c, h, w).var(dim=0) + STDDEV_EPS)  # [groups, C, H, W]
    value = std.reshape(groups, -1).mean(dim=1)  # [groups]
    channel = value.view(groups, 1, 1, 1, 1).expand(groups, size, 1, h, w).reshape(n, 1, h, w)
    return torch.cat([x, channel], dim=1)


class MinibatchStdDev(nn.Module):
    """:func:`minibatch_stddev` as a module (no parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return minibatch_stddev(x)


@dataclass(frozen=True)
class DiscriminatorSpec:
    """A progressive-GAN discriminator; fields as in the zoo's config (``depthScale0``, ``depthOtherScales``,
    ``alpha``, ``leakyReluLeak``, ``dimOutput`` = the input channels, ``miniBatchStdDev``, ``equalizedlR``) plus the
    decision layer's size (1 for WGAN-GP)."""

    depth_scale0: int = 512
    depth_other_scales: tuple[int, ...] = (512, 512, 512, 256, 128, 64)
    alpha: float = 0.0
    leaky_relu_leak: float = 0.2
    dim_input: int = 3
    minibatch_stddev: bool = True
    equalized_lr: bool = True
    decision_size: int = 1

    def __post_init__(self) -> None:
        widths = (self.depth_scale0, *self.depth_other_scales, self.dim_input, self.decision_size)
        if any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_CHANNELS for v in widths):
            raise ValueError(f"discriminator widths must be integers in [1, {MAX_CHANNELS}], got {widths}"[:200])
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        object.__setattr__(self, "depth_other_scales", tuple(self.depth_other_scales))

    @property
    def resolution(self) -> int:
        return 4 * 2 ** len(self.depth_other_scales)

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], state: Mapping[str, torch.Tensor] | None = None
    ) -> DiscriminatorSpec:
        """The discriminator a zoo checkpoint's ``config`` describes. The zoo's default for ``miniBatchStdDev`` is
        False; given the netD ``state``, its first conv's input width decides (d0 + 1 channels: the extra one)."""
        scales = list(config.get("depthOtherScales") or [])
        depth0 = config["depthScale0"]
        stddev = bool(config.get("miniBatchStdDev", False))
        if state is not None and "groupScaleZero.0.module.weight" in state:
            stddev = int(state["groupScaleZero.0.module.weight"].shape[1]) == int(depth0) + 1
        return cls(
            depth_scale0=int(depth0),
            depth_other_scales=tuple(int(d) for d in scales),
            alpha=float(config.get("alpha", 0.0)) if scales else 0.0,
            leaky_relu_leak=float(config.get("leakyReluLeak", 0.2)),
            dim_input=int(config.get("dimOutput", 3)),
            minibatch_stddev=stddev,
            equalized_lr=bool(config.get("equalizedlR", True)),
        )

    def build(self) -> Discriminator:
        return Discriminator(self)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["depth_other_scales"] = list(self.depth_other_scales)
        return d


class Discriminator(nn.Module):
    """The zoo's ``DNet`` for one :class:`DiscriminatorSpec`, initialised as the zoo does (N(0, 1) weights, 0 bias)."""

    def __init__(self, spec: DiscriminatorSpec) -> None:
        super().__init__()
        eq = spec.equalized_lr
        depths = (spec.depth_scale0, *spec.depth_other_scales)
        self.alpha = float(spec.alpha)
        self.fromRGBLayers = nn.ModuleList(EqualizedConv2d(spec.dim_input, d, 1, equalized=eq) for d in depths)
        self.scaleLayers = nn.ModuleList(
            nn.ModuleList(
                [
                    EqualizedConv2d(new, new, 3, padding=1, equalized=eq),
                    EqualizedConv2d(new, last, 3, padding=1, equalized=eq),
                ]
            )
            for last, new in zip(depths[:-1], depths[1:], strict=True)
        )
        entry = spec.depth_scale0 + (1 if spec.minibatch_stddev else 0)
        self.stddev = MinibatchStdDev() if spec.minibatch_stddev else None
        self.groupScaleZero = nn.ModuleList(
            [
                EqualizedConv2d(entry, spec.depth_scale0, 3, padding=1, equalized=eq),
                EqualizedLinear(16 * spec.depth_scale0, spec.depth_scale0, equalized=eq),
            ]
        )
        self.decisionLayer = EqualizedLinear(spec.depth_scale0, spec.decision_size, equalized=eq)
        self.leakyRelu = nn.LeakyReLU(spec.leaky_relu_leak)
        init_equalized_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[N, C, R, R]`` (on [-1, 1]) -> scores ``[N, decision_size]``."""
        blend = self.alpha > 0 and len(self.scaleLayers) > 1
        if blend:
            low = self.leakyRelu(self.fromRGBLayers[-2](F.avg_pool2d(x, 2)))
        x = self.leakyRelu(self.fromRGBLayers[-1](x))
        for group in reversed(self.scaleLayers):
            for conv in group:
                x = self.leakyRelu(conv(x))
            x = F.avg_pool2d(x, 2)
            if blend:
                x = self.alpha * low + (1 - self.alpha) * x
                blend = False
        if self.stddev is not None:
            x = self.stddev(x)
        x = self.leakyRelu(self.groupScaleZero[0](x))
        x = self.leakyRelu(self.groupScaleZero[1](x.flatten(1)))
        return self.decisionLayer(x)


_OLD_STYLE = re.compile(r"^(.*)\.(weight|bias)$")


def discriminator_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A netD state dict in this module's keys: a DataParallel ``module.`` prefix dropped, old-style keys without
    ``.module.`` (``scaleLayers.0.0.weight``) mapped to ``.module.`` ones, as the zoo's loadStateDictCompatible does."""
    out = dict(state)
    if out and all(k.startswith("module.") for k in out):
        out = {k[len("module.") :]: v for k, v in out.items()}
    mapped = {}
    for key, value in out.items():
        m = _OLD_STYLE.match(key)
        if m and not m.group(1).endswith(".module"):
            key = f"{m.group(1)}.module.{m.group(2)}"
        mapped[key] = value
    return mapped


def prunable_discriminator_names(model: nn.Module) -> list[str]:
    """D's weights GAN IMP prunes: the inner Conv2d of every equalized conv (linear layers and biases never)."""
    return [f"{name}.weight" for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


__all__ = [
    "Discriminator",
    "DiscriminatorSpec",
    "MinibatchStdDev",
    "discriminator_state",
    "minibatch_stddev",
    "prunable_discriminator_names",
]

"""Layer types the reference networks use beyond ``torch.nn``: pixel norm and equalized learning rate.

They follow pytorch_GAN_zoo's progressive GAN (facts in DOMAIN.md, "Generator priors"). Each is a small module whose
``forward`` torch.fx traces into ops the compaction rules table knows: an equalized layer traces to its inner
``Conv2d``/``Linear`` (the ``module`` child, so weights sit at ``<path>.module.weight`` as in the zoo's checkpoints)
followed by a multiplication by a Python constant; ``PixelNorm`` is a leaf with its own rule.
"""

from __future__ import annotations

import math

import torch
from torch import nn

PIXEL_NORM_EPS = 1e-8


class PixelNorm(nn.Module):
    """``x * rsqrt(mean(x^2 over channels) + eps)``: the progressive GAN's normalisation, per pixel over dim 1.

    The mean runs over all ``x.shape[1]`` channels: a compacted network that removed some channels must account for
    them (compaction's rule does).
    """

    def __init__(self, eps: float = PIXEL_NORM_EPS) -> None:
        super().__init__()
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt((x * x).mean(dim=1, keepdim=True) + self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


def equalized_scale(weight_shape: torch.Size | tuple[int, ...]) -> float:
    """He's constant ``sqrt(2 / fan_in)``, ``fan_in = prod(weight.shape[1:])``: the equalized-learning-rate factor."""
    return math.sqrt(2.0 / math.prod(weight_shape[1:]))


class EqualizedConv2d(nn.Module):
    """A ``Conv2d`` whose *output* (bias included) is multiplied by :func:`equalized_scale` at run time.

    Weights are stored unscaled (N(0, 1) at initialisation, biases 0), as the zoo stores them; the factor is not a
    parameter and not in the state dict. ``equalized=False`` is the zoo's plain layer (``equalizedlR=False``): the same
    ``module`` child, a factor of exactly 1.0 (``x * 1.0`` is ``x`` bit for bit), so one graph serves both.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0, equalized: bool = True
    ) -> None:
        super().__init__()
        self.module = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=True)
        self.equalized = equalized
        self.scale = equalized_scale(self.module.weight.shape) if equalized else 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x) * self.scale


class EqualizedLinear(nn.Module):
    """A ``Linear`` whose output (bias included) is multiplied by :func:`equalized_scale` (1.0 when not
    ``equalized``)."""

    def __init__(self, in_features: int, out_features: int, equalized: bool = True) -> None:
        super().__init__()
        self.module = nn.Linear(in_features, out_features, bias=True)
        self.equalized = equalized
        self.scale = equalized_scale(self.module.weight.shape) if equalized else 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x) * self.scale


def init_equalized_(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """The zoo's initialisation of every equalized layer: weights N(0, 1), biases 0 (a layer built with
    ``equalized=False`` keeps PyTorch's default weights, as in the zoo, and gets zero biases)."""
    with torch.no_grad():
        for m in model.modules():
            # a network built on the meta device (names and shapes only) has nothing to draw; the first normal_ on
            # meta tensors also loads PyTorch's meta kernels, +146 MB of resident memory (torch 2.13, measured)
            if isinstance(m, (EqualizedConv2d, EqualizedLinear)) and not m.module.weight.is_meta:
                if m.equalized:
                    m.module.weight.normal_(0.0, 1.0, generator=generator)
                m.module.bias.zero_()
    return model

"""Inverse problems as small plug-ins: denoising, inpainting, super-resolution.

A task knows how to degrade a clean image (``degrade``, seeded, to simulate the paper's experiments), how to wrap an
observation a user already has (``observe``), which forward operator the fitting loss goes through, and how the
literature measures its results (``psnr``/``ssim``). Register new ones in :data:`TASKS`.

Observation conventions:

- denoising: identity operator; observation = clip(clean + N(0, sigma^2)), sigma = 25/255.
- inpainting: ``output * mask`` with a per-pixel 0/1 mask (1 = known, shared by the three channels; the default drops
  50% of the pixels, Bernoulli); the loss and the fidelity PSNR see the known pixels only.
- super-resolution (x4, x8): observation = Pillow Lanczos downsampling of the clean image, as DIP creates it; the
  forward operator is DIP's differentiable "lanczos2" downsampler (a separable 4f x 4f Lanczos kernel, a = 2, phase
  0.5, replicate padding, stride f); results are measured on Y with a 4-pixel border crop.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import metrics
from .images import to_uint8


def lanczos_kernel(factor: int, a: int = 2) -> torch.Tensor:
    """DIP's downsampling kernel 'lanczos2': ``4 * factor`` taps (phase 0.5), normalised, as a 2-D outer product."""
    size = 2 * a * factor
    x = (np.arange(size) + 0.5 - size / 2) / factor  # symmetric, in (-a, a)
    k1 = np.sinc(x) * np.sinc(x / a)
    k1 = k1 / k1.sum()
    return torch.from_numpy(np.outer(k1, k1).astype(np.float32))


def lanczos_downsample(img: torch.Tensor, kernel: torch.Tensor, factor: int) -> torch.Tensor:
    """Differentiable downsampling by ``factor``: replicate pad 1.5f, depthwise conv with ``kernel``, stride f."""
    c = img.shape[1]
    pad = (kernel.shape[0] - factor) // 2
    x = F.pad(img, (pad, pad, pad, pad), mode="replicate")
    w = kernel.to(img.dtype)[None, None].expand(c, 1, *kernel.shape)
    return F.conv2d(x, w, stride=factor, groups=c)


@dataclass
class Observation:
    """What the fit sees: the observed image, the output size, and the forward operator's data.

    ``operator`` is ``"identity"``, ``"mask"`` (inpainting, ``mask`` [1, 1, H, W], 1 = known) or ``"downsample"``
    (super-resolution by ``factor`` with ``kernel``).
    """

    task: str
    image: torch.Tensor
    out_size: tuple[int, int]
    operator: str = "identity"
    mask: torch.Tensor | None = None
    factor: int = 1
    kernel: torch.Tensor | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> Observation:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return Observation(
            self.task,
            self.image.to(device),
            self.out_size,
            self.operator,
            move(self.mask),
            self.factor,
            move(self.kernel),
            dict(self.params),
        )

    def forward_operator(self, output: torch.Tensor) -> torch.Tensor:
        """Apply the degradation to the network output, before the loss."""
        if self.operator == "mask":
            return output * self.mask
        if self.operator == "downsample":
            return lanczos_downsample(output, self.kernel, self.factor)
        return output

    def loss(self, output: torch.Tensor) -> torch.Tensor:
        """The paper's MSE data term (inpainting: mean over all entries of the masked difference, as DIP does)."""
        target = self.image if self.operator != "mask" else self.image * self.mask
        return F.mse_loss(self.forward_operator(output), target)

    def fidelity_psnr_t(self, output: torch.Tensor) -> torch.Tensor:
        """PSNR of the degraded output to the observation (known pixels only): what backtracking watches."""
        if self.operator == "mask":
            return metrics.psnr_t(output, self.image, self.mask)
        return metrics.psnr_t(self.forward_operator(output), self.image)

    def input_psnr(self, gt: torch.Tensor) -> float | None:
        """PSNR of the observation itself to the ground truth, where sizes allow (denoising, inpainting)."""
        if self.operator == "downsample":
            return None
        return metrics.psnr(self.image, gt)


class Task(ABC):
    """An inverse problem. Subclasses set ``name`` and ``input_noise_std`` (the paper's input perturbation)."""

    name: ClassVar[str]
    input_noise_std: ClassVar[float]
    metric_label: ClassVar[str] = "PSNR/SSIM on RGB"

    @abstractmethod
    def degrade(self, clean: torch.Tensor, gen: torch.Generator) -> Observation:
        """Simulate the observation of ``clean`` ([1, 3, H, W]); ``gen`` seeds the random parts."""

    @abstractmethod
    def observe(self, image: torch.Tensor, mask: torch.Tensor | None = None) -> Observation:
        """Wrap an observation the user already has."""

    def params(self) -> dict[str, Any]:
        return {}

    def obs_multiple(self, stride: int) -> int:
        """Observation sides must be multiples of this so that the output's are multiples of ``stride``."""
        return stride

    def clean_multiple(self, stride: int) -> int:
        """Clean-image sides must be multiples of this for ``degrade``."""
        return stride

    def clean_target(self, clean: torch.Tensor) -> Observation:
        """Fit the clean image itself (the paper's IMP target for denoising)."""
        return Observation(self.name, clean, tuple(clean.shape[2:]), params={**self.params(), "target": "clean"})

    def psnr_t(self, output: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        return metrics.psnr_t(output, gt)

    def ssim(self, output: torch.Tensor, gt: torch.Tensor) -> float:
        return metrics.ssim(output, gt)


@dataclass
class Denoise(Task):
    sigma: float = 25.0 / 255.0

    name: ClassVar[str] = "denoise"
    input_noise_std: ClassVar[float] = 1.0 / 30.0

    def params(self) -> dict[str, Any]:
        return {"sigma": self.sigma, "sigma_255": round(self.sigma * 255, 4)}

    def degrade(self, clean: torch.Tensor, gen: torch.Generator) -> Observation:
        noise = torch.randn(clean.shape, generator=gen, dtype=clean.dtype) * self.sigma
        return self.observe((clean + noise).clamp(0, 1))

    def observe(self, image: torch.Tensor, mask: torch.Tensor | None = None) -> Observation:
        return Observation(self.name, image, tuple(image.shape[2:]), params=self.params())


@dataclass
class Inpaint(Task):
    """Inpainting. ``mask`` ([1, 1, H, W], 1 = known) fixes the pixels to keep; otherwise a Bernoulli mask drops
    ``drop`` of the pixels (drawn from the generator given to ``degrade``)."""

    drop: float = 0.5
    mask: torch.Tensor | None = field(default=None, repr=False, compare=False)
    mask_name: str | None = None

    name: ClassVar[str] = "inpaint"
    input_noise_std: ClassVar[float] = 0.03

    def params(self) -> dict[str, Any]:
        if self.mask is not None:
            return {"mask": self.mask_name or "given"}
        return {"drop": self.drop}

    def random_mask(self, height: int, width: int, gen: torch.Generator) -> torch.Tensor:
        """Bernoulli pixel mask, 1 = known: each pixel is dropped with probability ``drop``."""
        return (torch.rand((1, 1, height, width), generator=gen) >= self.drop).float()

    def degrade(self, clean: torch.Tensor, gen: torch.Generator) -> Observation:
        mask = self.mask
        if mask is None:
            mask = self.random_mask(clean.shape[2], clean.shape[3], gen)
        elif tuple(mask.shape[2:]) != tuple(clean.shape[2:]):
            raise ValueError(f"mask is {tuple(mask.shape[2:])} but the image is {tuple(clean.shape[2:])}")
        return self.observe(clean * mask, mask)

    def observe(self, image: torch.Tensor, mask: torch.Tensor | None = None) -> Observation:
        mask = self.mask if mask is None else mask
        if mask is None:
            raise ValueError("inpainting needs the mask of known pixels")
        mask = mask.float()
        return Observation(
            self.name,
            image * mask,
            tuple(image.shape[2:]),
            operator="mask",
            mask=mask,
            params={**self.params(), "known_fraction": round(float(mask.mean()), 6)},
        )


@dataclass
class SuperResolution(Task):
    factor: int = 4
    border: int = 4

    name: ClassVar[str] = "sr"
    input_noise_std: ClassVar[float] = 0.03
    metric_label: ClassVar[str] = "PSNR/SSIM on Y (BT.601), 4-pixel border cropped"

    def __post_init__(self) -> None:
        if self.factor < 2:
            raise ValueError("super-resolution factor must be >= 2")

    def params(self) -> dict[str, Any]:
        return {"factor": self.factor, "border": self.border}

    def obs_multiple(self, stride: int) -> int:
        return stride // math.gcd(stride, self.factor)

    def clean_multiple(self, stride: int) -> int:
        return stride * self.factor // math.gcd(stride, self.factor)

    def degrade(self, clean: torch.Tensor, gen: torch.Generator) -> Observation:
        h, w = clean.shape[2], clean.shape[3]
        if h % self.factor or w % self.factor:
            raise ValueError(f"clean image sides must be multiples of the factor {self.factor}")
        lr = Image.fromarray(to_uint8(clean)).resize((w // self.factor, h // self.factor), Image.Resampling.LANCZOS)
        arr = np.asarray(lr, dtype=np.float32) / 255.0
        return self.observe(torch.from_numpy(arr.transpose(2, 0, 1).copy())[None])

    def observe(self, image: torch.Tensor, mask: torch.Tensor | None = None) -> Observation:
        h, w = image.shape[2], image.shape[3]
        return Observation(
            self.name,
            image,
            (h * self.factor, w * self.factor),
            operator="downsample",
            factor=self.factor,
            kernel=lanczos_kernel(self.factor),
            params=self.params(),
        )

    def psnr_t(self, output: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        return metrics.psnr_y_t(output, gt, self.border)

    def ssim(self, output: torch.Tensor, gt: torch.Tensor) -> float:
        return metrics.ssim(output, gt, y_channel=True, border=self.border)


TASKS: dict[str, type[Task]] = {"denoise": Denoise, "inpaint": Inpaint, "sr": SuperResolution}


def make_task(name: str, **params: Any) -> Task:
    """A task by name; ``None`` parameters take the paper defaults."""
    cls = TASKS.get(name)
    if cls is None:
        raise ValueError(f"unknown task {name!r} ({', '.join(TASKS)})")
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in params.items() if k in names and v is not None}
    if cls is Inpaint and isinstance(kwargs.get("mask"), str):  # params() records a given mask by name only
        kwargs["mask_name"] = kwargs.pop("mask")
    return cls(**kwargs)

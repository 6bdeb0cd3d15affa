"""Several images fitted by one network at once: the paper's multi-image IMP, whose tickets are its transferable priors.

The paper's multi-image script (DOMAIN.md) fits one network, with one noise input perturbed each step as usual, to
several images of one size (five, resized to 228x228): the loss is the *sum* of the MSEs between the single output and
each image, and each IMP round prunes one mask for all of them. This module holds what that needs beyond the
one-image engine:

- :func:`common_size`: the images brought to one size that is a multiple of the network's stride, by centre crop
  (the default: no resampling, the pixels stay the photographs') or by resampling each to that size (the paper's way;
  it changes aspect ratios);
- :class:`MultiObservation`: the observations of n images stacked (``image`` ``[n, C, h, w]``) whose ``loss`` is the
  sum over images of each one's MSE through the task's forward operator, so :func:`lipdeploy.fit.fit` runs it
  unchanged. Backtracking watches the mean over images of the fidelity PSNR; PSNR/SSIM to a ground truth of n images
  are the mean over images of each one's (``fit`` does that for a ``gt`` of shape ``[n, 3, H, W]``);
- :func:`image_records`: provenance of the images a ticket came from (name, content hash, size).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

import torch

from .errors import InputError
from .images import centre_crop, resize_image
from .runlock import image_digest
from .tasks import Observation

SizeMode = Literal["crop", "resize"]
SIZE_MODES: tuple[str, ...] = ("crop", "resize")


def common_size(
    images: Sequence[torch.Tensor], multiple: int, mode: SizeMode = "crop", names: Sequence[str] | None = None
) -> tuple[list[torch.Tensor], str | None]:
    """``images`` (each ``[1, C, H, W]``) brought to one size: the smallest height and the smallest width among them,
    rounded down to a multiple of ``multiple`` (the network's stride; the task's clean-image multiple).

    ``mode="crop"``: the centre of each image at that size; ``"resize"``: each image resampled to it (area averaging
    when shrinking, as :func:`lipdeploy.images.resize_image`). Returns the images and a message saying what changed
    (None when nothing did). Raises :class:`InputError` when that size is below one stride.
    """
    if not images:
        raise InputError(None, "no images given")
    if mode not in SIZE_MODES:
        raise InputError(None, f"size mode must be one of {', '.join(SIZE_MODES)}, got {mode!r}")
    names = list(names) if names is not None else [f"image {i + 1}" for i in range(len(images))]
    h = min(int(img.shape[2]) for img in images)
    w = min(int(img.shape[3]) for img in images)
    nh, nw = h - h % multiple, w - w % multiple
    if nh < multiple or nw < multiple:
        smallest = min(range(len(images)), key=lambda i: images[i].shape[2] * images[i].shape[3])
        raise InputError(
            names[smallest], f"the common size {w}x{h} is below one network stride ({multiple}): images too small"
        )
    out: list[torch.Tensor] = []
    changed: list[str] = []
    for name, img in zip(names, images, strict=True):
        ih, iw = int(img.shape[2]), int(img.shape[3])
        if (ih, iw) == (nh, nw):
            out.append(img)
            continue
        out.append(centre_crop(img, nh, nw)[0] if mode == "crop" else resize_image(img, nh, nw))
        changed.append(f"{name} {iw}x{ih}")
    if not changed:
        return out, None
    verb = "cropped the centre" if mode == "crop" else "resized to"
    return out, f"{verb} {nw}x{nh} (the images' common size, a multiple of {multiple}): " + ", ".join(changed)


@dataclasses.dataclass
class MultiObservation(Observation):
    """Observations of n images of one size, stacked: ``image`` is ``[n, C, h, w]``, ``mask`` (inpainting)
    ``[n, 1, H, W]``; the operator, output size and parameters are the images' common ones.

    ``loss(output)`` is the sum over images of the one-image loss of the single output (MSE through the forward
    operator): the paper's multi-image objective. Metrics that are one number per image (fidelity PSNR, input PSNR)
    are the mean over images.
    """

    @property
    def count(self) -> int:
        return int(self.image.shape[0])

    def single(self, i: int) -> Observation:
        """The one-image observation of image ``i``."""
        mask = None if self.mask is None else self.mask[i : i + 1]
        return Observation(
            self.task, self.image[i : i + 1], self.out_size, self.operator, mask, self.factor, self.kernel,
            dict(self.params),
        )  # fmt: skip

    def to(self, device: torch.device | str) -> MultiObservation:
        moved = super().to(device)
        return MultiObservation(**{f.name: getattr(moved, f.name) for f in dataclasses.fields(Observation)})

    def loss(self, output: torch.Tensor) -> torch.Tensor:
        """Sum over images of MSE(forward(output), image_i) (inpainting: the masked difference, as one image's)."""
        target = self.image if self.operator != "mask" else self.image * self.mask
        diff = self.forward_operator(output) - target  # [1, ...] against [n, ...]: broadcast over the images
        return diff.square().mean(dim=tuple(range(1, diff.dim()))).sum()

    def fidelity_psnr_t(self, output: torch.Tensor) -> torch.Tensor:
        """Mean over images of each one's PSNR of the degraded output to its observation (what backtracking watches)."""
        return torch.stack([self.single(i).fidelity_psnr_t(output) for i in range(self.count)]).mean()

    def input_psnr(self, gt: torch.Tensor) -> float | None:
        """Mean over images of each observation's PSNR to its ground truth (``gt`` ``[n, 3, H, W]``)."""
        values = [self.single(i).input_psnr(gt[i : i + 1]) for i in range(self.count)]
        return None if any(v is None for v in values) else sum(values) / len(values)  # type: ignore[arg-type]


def stack_observations(observations: Sequence[Observation]) -> MultiObservation:
    """One :class:`MultiObservation` of several one-image observations of the same task, operator and size."""
    if not observations:
        raise InputError(None, "no observations to stack")
    first = observations[0]
    key = (first.task, first.operator, first.out_size, first.factor)
    for obs in observations[1:]:
        if (obs.task, obs.operator, obs.out_size, obs.factor) != key:
            raise InputError(
                None, f"observations differ ({obs.task} {obs.out_size} vs {first.task} {first.out_size}): cannot stack"
            )
    masks = [o.mask for o in observations]
    return MultiObservation(
        task=first.task,
        image=torch.cat([o.image for o in observations]),
        out_size=first.out_size,
        operator=first.operator,
        mask=None if any(m is None for m in masks) else torch.cat(masks),  # type: ignore[arg-type]
        factor=first.factor,
        kernel=first.kernel,
        params={k: v for k, v in first.params.items() if k != "known_fraction"},  # per image; see image_records
    )


def image_records(names: Sequence[str], images: Sequence[torch.Tensor]) -> list[dict[str, Any]]:
    """Provenance of the images a ticket came from, in fitting order: each one's name, the sha256 of the content
    fitted (after any crop or resize: :func:`lipdeploy.runlock.image_digest`) and its size."""
    if len(names) != len(images):
        raise InputError(None, f"{len(names)} image names for {len(images)} images")
    return [
        {"name": str(name), "sha256": image_digest(img), "size": f"{int(img.shape[3])}x{int(img.shape[2])}"}
        for name, img in zip(names, images, strict=True)
    ]


__all__ = ["SIZE_MODES", "MultiObservation", "common_size", "image_records", "stack_observations"]

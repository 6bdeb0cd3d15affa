"""Image quality metrics: PSNR (RGB, or Y channel with a border crop as in super-resolution papers) and SSIM.

The ``*_t`` variants return 0-d tensors on the images' device so the fitting loop can track them every step without a
host synchronisation; the plain variants return Python floats.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from skimage.metrics import structural_similarity

# ITU-R BT.601 luma as MATLAB's rgb2ycbcr computes it (the SR literature's convention), inputs in [0, 1].
_Y_WEIGHTS = (65.481 / 255.0, 128.553 / 255.0, 24.966 / 255.0)
_Y_OFFSET = 16.0 / 255.0


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """``[N, 3, H, W]`` RGB in [0, 1] -> ``[N, 1, H, W]`` luma Y in [16/255, 235/255]."""
    if img.shape[1] == 1:
        return img
    r, g, b = img[:, 0:1], img[:, 1:2], img[:, 2:3]
    return _Y_WEIGHTS[0] * r + _Y_WEIGHTS[1] * g + _Y_WEIGHTS[2] * b + _Y_OFFSET


def shave(img: torch.Tensor, border: int) -> torch.Tensor:
    """Drop ``border`` pixels on every side."""
    if border <= 0:
        return img
    return img[:, :, border:-border, border:-border]


def psnr_t(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """PSNR in dB (data range 1) as a 0-d tensor; with ``mask`` (broadcastable 0/1), over the kept pixels only."""
    diff = (a - b).float()
    if mask is None:
        mse = diff.square().mean()
    else:
        m = mask.expand_as(diff)
        mse = (diff.square() * m).sum() / m.sum().clamp_min(1)
    return -10.0 * torch.log10(mse.clamp_min(1e-12))


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    return float(psnr_t(a, b, mask))


def psnr_y_t(a: torch.Tensor, b: torch.Tensor, border: int = 4) -> torch.Tensor:
    """PSNR on the Y channel after cropping ``border`` pixels: the super-resolution convention."""
    return psnr_t(shave(rgb_to_y(a), border), shave(rgb_to_y(b), border))


def psnr_y(a: torch.Tensor, b: torch.Tensor, border: int = 4) -> float:
    return float(psnr_y_t(a, b, border))


def _hwc(img: torch.Tensor) -> np.ndarray:
    return img.detach().float().cpu().clamp(0, 1)[0].permute(1, 2, 0).numpy().astype(np.float64)


def ssim(a: torch.Tensor, b: torch.Tensor, y_channel: bool = False, border: int = 0) -> float:
    """SSIM (scikit-image, Gaussian-free 7x7 window, data range 1); on Y with a border crop for SR if asked."""
    if y_channel:
        a, b = rgb_to_y(a), rgb_to_y(b)
    a, b = shave(a, border), shave(b, border)
    x, y = _hwc(a), _hwc(b)
    if min(x.shape[0], x.shape[1]) < 7:
        return math.nan
    if x.shape[2] == 1:
        return float(structural_similarity(x[:, :, 0], y[:, :, 0], data_range=1.0))
    return float(structural_similarity(x, y, channel_axis=2, data_range=1.0))

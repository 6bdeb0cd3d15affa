"""Training and evaluation images for generators: a folder of images, or scikit-image's offline LFW faces.

``skimage.data.lfw_subset()`` ships 200 grey 25 x 25 images, the first 100 of them faces (DOMAIN.md). They are made
RGB (the grey value in three channels) and resized (area averaging, or bicubic when enlarging) to the generator's
resolution, on [-1, 1]. The demo generator trains on the first :data:`TRAIN_FACES` and leaves the rest for
evaluation: ``skimage:lfw_faces`` is all 100, ``skimage:lfw_faces:train`` / ``skimage:lfw_faces:test`` the two parts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .generator_prior import fit_to_resolution
from .images import load_image

LFW_FACES = 100  # the faces among lfw_subset's 200 images
TRAIN_FACES = 80  # the demo generator's training faces; faces 80-99 are held out
FACES_PREFIX = "skimage:lfw_faces"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MAX_TRAINING_IMAGES = 100_000  # a folder beyond this is not a training set for this toolkit's CPU-sized runs


def lfw_faces(resolution: int, split: str = "all") -> torch.Tensor:
    """The LFW faces as ``[N, 3, R, R]`` on [-1, 1]: ``split`` all (100), train (the first 80) or test (20)."""
    import skimage.data  # scikit-image's data registry: loaded only when faces are read, not by every importer

    parts = {"all": slice(0, LFW_FACES), "train": slice(0, TRAIN_FACES), "test": slice(TRAIN_FACES, LFW_FACES)}
    if split not in parts:
        raise InputError(None, f"LFW split must be one of {', '.join(parts)}, got {split!r}")
    grey = torch.from_numpy(np.asarray(skimage.data.lfw_subset(), dtype=np.float32)[parts[split]])
    rgb = grey[:, None].expand(-1, 3, -1, -1)
    return torch.cat([fit_to_resolution(img[None], resolution)[0] for img in rgb]) * 2 - 1


def training_images(source: str | Path, resolution: int) -> torch.Tensor:
    """``source`` (a folder of images, or ``skimage:lfw_faces[:train|:test]``) as ``[N, 3, R, R]`` on [-1, 1]."""
    text = str(source)
    if text == FACES_PREFIX or text.startswith(FACES_PREFIX + ":"):
        split = text[len(FACES_PREFIX) + 1 :] or "all"
        return lfw_faces(resolution, split)
    folder = Path(source)
    if not folder.is_dir():
        raise InputError(folder, f"is not a folder of images (or {FACES_PREFIX}[:train|:test])")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise InputError(folder, f"holds no images ({', '.join(IMAGE_SUFFIXES)})")
    if len(files) > MAX_TRAINING_IMAGES:
        raise InputError(folder, f"holds {len(files):,} images, more than {MAX_TRAINING_IMAGES:,}")
    return torch.cat([fit_to_resolution(load_image(p), resolution)[0] for p in files]) * 2 - 1


__all__ = ["FACES_PREFIX", "LFW_FACES", "TRAIN_FACES", "lfw_faces", "training_images"]

"""Images: loading, saving, the bundled test photographs and cropping to the network's stride.

Convention: images are float32 tensors shaped ``[1, 3, H, W]`` with values in [0, 1]. Grayscale inputs are replicated
into three channels, so every network (and every ticket, the paper's included) keeps its 3-channel output; the PSNR of
a replicated grayscale image equals its grayscale PSNR. Alpha channels are dropped.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import InputError, first_line
from .fileio import atomic_output, check_regular_file
from .limits import MAX_IMAGE_PIXELS, check_image_pixels

SKIMAGE_PREFIX = "skimage:"
# skimage.data photographs that ship with the package (no download); others are tried too but may need the network.
STANDARD_IMAGES = ("astronaut", "camera", "cat", "chelsea", "coffee", "coins", "moon", "rocket", "horse")


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    if arr.dtype == bool:
        arr = arr.astype(np.float32)
    elif arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        arr = arr.astype(np.float32) / 65535.0
    else:
        arr = arr.astype(np.float32)
        if not np.isfinite(arr).all():
            raise ValueError("the image holds NaN or infinite values")
        if arr.size and (float(arr.min()) < 0.0 or float(arr.max()) > 1.0):
            warnings.warn(
                f"float image values in [{float(arr.min()):.3g}, {float(arr.max()):.3g}] clipped to [0, 1]",
                UserWarning,
                stacklevel=3,
            )
        arr = np.clip(arr, 0.0, 1.0)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    elif arr.ndim == 3 and arr.shape[2] == 2:  # gray + alpha
        arr = np.repeat(arr[:, :, :1], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"unsupported image shape {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None].contiguous()


def standard_image(name: str) -> torch.Tensor:
    """One of scikit-image's bundled photographs (``skimage.data.NAME``), as ``[1, 3, H, W]`` in [0, 1]."""
    import skimage.data  # ~20 ms on top of numpy and PIL: loaded only for a skimage:NAME photograph

    fn = getattr(skimage.data, name, None)
    if fn is None or name.startswith("_") or not callable(fn):
        raise InputError(
            f"{SKIMAGE_PREFIX}{name}", f"no such scikit-image photograph (try {', '.join(STANDARD_IMAGES)})"
        )
    try:
        arr = np.asarray(fn())
        return _to_tensor(arr)
    except Exception as exc:  # a data set that needs a download, or not an image
        raise InputError(f"{SKIMAGE_PREFIX}{name}", f"cannot load it ({str(exc).splitlines()[0][:120]})") from None


def load_image(path: str | Path) -> torch.Tensor:
    """Read an image file (anything Pillow reads) or ``skimage:NAME`` as ``[1, 3, H, W]`` float32 in [0, 1]."""
    text = str(path)
    if text.startswith(SKIMAGE_PREFIX):
        return standard_image(text[len(SKIMAGE_PREFIX) :])
    path = check_regular_file(path, "image")  # a FIFO would block Pillow's open() forever
    try:
        with _pixel_limit(), Image.open(path) as im:
            # the header's size, before any pixel is decoded: a 165 kB PNG can claim 12000 x 12000
            check_image_pixels(path, *im.size)
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float32) / (65535.0 if im.mode.startswith("I;16") else 255.0)
            elif im.mode in ("L", "RGB", "RGBA", "LA", "1", "F"):
                arr = np.asarray(im)
            else:
                arr = np.asarray(im.convert("RGB"))
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(path, f"image is too large (at most {MAX_IMAGE_PIXELS:,} pixels)") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(path, f"not a readable image ({first_line(exc, 120)})") from None
    except Exception as exc:  # a corrupt file can make a decoder raise anything (struct.error, IndexError, ...)
        raise InputError(path, f"not a readable image ({type(exc).__name__}: {first_line(exc, 120)})") from None
    try:
        return _to_tensor(arr)
    except ValueError as exc:
        raise InputError(path, str(exc)) from None


class _pixel_limit:
    """Pillow's decompression-bomb limit set to ours while a file is decoded (a warning becomes an error), restored
    afterwards: the global is Pillow's, other code in the process may rely on its value."""

    def __enter__(self) -> None:
        self._saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("error", Image.DecompressionBombWarning)

    def __exit__(self, *exc: object) -> None:
        self._warnings.__exit__(*exc)
        Image.MAX_IMAGE_PIXELS = self._saved


def check_min_side(path: str | Path | None, height: int, width: int, min_side: int) -> None:
    """Refuse an image smaller than the network's real minimum side (``arch.min_side``), saying that minimum."""
    if height < min_side or width < min_side:
        raise InputError(
            path,
            f"image is too small ({width}x{height} after cropping): this network needs sides of at least {min_side} "
            "pixels",
        )


def load_mask(path: str | Path, like: torch.Tensor | None = None) -> torch.Tensor:
    """An inpainting mask image as ``[1, 1, H, W]`` 0/1 float: white (> 0.5) = known pixel, black = missing."""
    img = load_image(path)
    mask = (img.mean(dim=1, keepdim=True) > 0.5).float()
    if like is not None and tuple(mask.shape[2:]) != tuple(like.shape[2:]):
        raise InputError(
            path, f"mask is {mask.shape[3]}x{mask.shape[2]} but the image is {like.shape[3]}x{like.shape[2]}"
        )
    return mask


def image_name(path: str | Path) -> str:
    """A short name for records: the file name, or ``skimage:NAME``."""
    text = str(path)
    return text if text.startswith(SKIMAGE_PREFIX) else Path(text).name


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """``[1, C, H, W]`` in [0, 1] -> ``H x W x C`` uint8 (rounded), as written to PNG."""
    arr = img.detach().float().cpu().clamp(0, 1)[0].permute(1, 2, 0).numpy()
    return (arr * 255.0 + 0.5).astype(np.uint8)


def save_image(img: torch.Tensor, path: str | Path) -> None:
    """Write ``[1, 3, H, W]`` (or ``[1, 1, H, W]``) in [0, 1] as an 8-bit PNG, atomically."""
    with atomic_output(path) as tmp:
        write_png(img, tmp)


def write_png(img: torch.Tensor, path: str | Path) -> None:
    """Write ``[1, 3, H, W]`` (or ``[1, 1, H, W]``) in [0, 1] as an 8-bit PNG to ``path`` as it is (a temporary file
    of an output set: :func:`lipdeploy.fileio.atomic_output_set`); :func:`save_image` is the atomic one."""
    arr = to_uint8(img)
    if arr.shape[2] == 1:
        arr = arr[:, :, 0]
    Image.fromarray(arr).save(path, format="PNG")


def crop_offsets(height: int, width: int, multiple: int) -> tuple[int, int, int, int]:
    """(top, left, new_height, new_width) of the centre crop to multiples of ``multiple``."""
    nh, nw = height - height % multiple, width - width % multiple
    return (height - nh) // 2, (width - nw) // 2, nh, nw


def crop_to_multiple(img: torch.Tensor, multiple: int = 32) -> tuple[torch.Tensor, str | None]:
    """Centre-crop to sides that are multiples of ``multiple`` (the network's total stride), as the DIP code does.

    Returns the cropped image and a message saying what was cropped (None when nothing was).
    """
    h, w = img.shape[2], img.shape[3]
    top, left, nh, nw = crop_offsets(h, w, multiple)
    if (nh, nw) == (h, w):
        return img, None
    msg = f"cropped {w}x{h} to {nw}x{nh} (sides must be multiples of {multiple}, the network's total stride)"
    return img[:, :, top : top + nh, left : left + nw].contiguous(), msg


def centre_crop(img: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """The centre ``height x width`` of ``img`` and its (top, left) offset: a fit's cost grows with the pixel count,
    so a crop is the cheap way to try a prior on a large photograph."""
    h, w = img.shape[2], img.shape[3]
    if height > h or width > w or height < 1 or width < 1:
        raise ValueError(f"cannot crop {width}x{height} out of {w}x{h}")
    top, left = (h - height) // 2, (w - width) // 2
    return img[:, :, top : top + height, left : left + width].contiguous(), (top, left)


def resize_image(img: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``img`` resampled to ``height x width``: area averaging when shrinking (no aliasing), bicubic when enlarging,
    clamped to [0, 1]."""
    h, w = img.shape[2], img.shape[3]
    if (height, width) == (h, w):
        return img
    mode = "area" if height <= h and width <= w else "bicubic"
    kwargs = {} if mode == "area" else {"align_corners": False}
    out = torch.nn.functional.interpolate(img, size=(height, width), mode=mode, **kwargs)
    return out.clamp(0, 1).contiguous()

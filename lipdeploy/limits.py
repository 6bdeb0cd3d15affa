"""Every resource limit of the toolkit in one place, each with the reason for its number.

A small hostile file (an expanded tensor, a PNG that decompresses to gigapixels, a header asking for a million
levels) must be refused *before* anything is allocated, with one line that says what is wrong. The numbers are far
above any real use of a deep image prior (the paper fits 512 x 512 images with a 5-level, 128-channel network) and far
below what would exhaust a workstation; the helpers here compare against them and raise :class:`InputError`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError

# An image's pixel count (width x height), checked from the file header before decoding. 4096 x 4096: DIP fits images
# of at most a few megapixels (every pixel is a network output that is fitted thousands of times), and 16.8 Mpixel as
# float32 RGB is 200 MB, which any machine that runs the network holds. Pillow's own decompression-bomb limit is set to
# the same number while we decode, so that a lying header cannot slip past either.
MAX_IMAGE_PIXELS = 4096 * 4096

# One side of an image or of a requested size (--size, --embed-input, --test-size): the pixel limit above, plus a side
# limit so that 1 x 16M strips (which no network here can decode: the smaller side must reach twice the stride) are
# refused by the same rule.
MAX_IMAGE_SIDE = 16384

# Threads for ONNX Runtime or torch: 4x the cores still covers hyper-threading experiments; 100000 threads ran for
# minutes thrashing the scheduler.
MAX_THREADS_PER_CORE = 4

# Network size read from a ticket header. Levels: each one halves the image, so 16 levels already need 65536-pixel
# sides (beyond MAX_IMAGE_SIDE); the CLI's own dense networks stop at 8. Channels: the paper uses 128 and the widest
# published DIP 512; 4096 is the CLI's limit for dense networks too. Deep decoder depth: same reason as levels.
MAX_LEVELS = 16
MAX_CHANNELS = 4096
MAX_DD_DEPTH = 16
MAX_FILTER_SIZE = 15  # kernels larger than 15 x 15 appear in no DIP variant; a bigger one is a corrupt header
# Progressive-GAN generator scales beyond its 4 x 4 base: each doubles the side, so 12 reach 4 * 2^12 = 16384 pixels,
# MAX_IMAGE_SIDE (the largest published progressive GAN has 8, 1024 x 1024). Its widths are held to MAX_CHANNELS.
MAX_GAN_SCALES = 12

# A tensor may not describe more elements than its file can hold: element_size x numel <= file size (+ this slack for
# the few bytes a 0-d or empty tensor reports). Expanded (stride-0) tensors are refused outright: torch.save writes
# them as a tiny storage that any reduction would materialise at full size.
TENSOR_SLACK_BYTES = 64

# Learning rate: Adam with lr > 1 on a DIP diverges at once (weights go to Inf and the ticket cannot be written).
MAX_LR = 1.0

# Share of the available memory a command may plan to use (:func:`estimate_memory` counts everything it will hold;
# the margin is for the framework itself: importing torch and ONNX Runtime takes ~0.4 GB, not in the estimate).
MEMORY_FRACTION = 0.8

# Seeds: torch's generators take 64-bit seeds; derived seeds add offsets (an image's hash, a round number) to the
# user's, so the user's is held to 63 bits and the sums never overflow.
MAX_SEED = 2**63 - 1

# A tensor file (ticket, --weights) on disk: the paper's ticket is 9 MB and the widest published DIP (512 channels, 6
# levels) ~0.2 GB dense with its fitted weights; 2 GiB is 10x that and what any machine that fits such a net holds.
MAX_TENSOR_FILE_BYTES = 2 * 2**30
# Members of a tensor file's zip archive: torch.save writes one per storage (a ticket has ~100); a million-member
# central directory costs zipfile hundreds of MB to parse.
MAX_ARCHIVE_MEMBERS = 100_000

# What a command holds besides the activations, in multiples of the network's float32 weights W (weights + gradients
# + Adam's two moments are 4 W on their own). Training (restore, find, bench fits): the ticket's initial weights and
# masks (2 W), the fit's best-so-far copy for backtracking (W) and the compacted network (W) for sparse backends.
# Inference (export, run): the ticket's initial and fitted weights and masks (3 W), the masked and the compacted
# network (2 W), the serialised graph and ONNX Runtime's copy of it (2 W).
TRAINING_COPIES = 4
INFERENCE_COPIES = 7


def max_threads() -> int:
    """The largest thread count accepted: :data:`MAX_THREADS_PER_CORE` per CPU core."""
    return MAX_THREADS_PER_CORE * (os.cpu_count() or 1)


def check_threads(threads: int, what: str = "threads") -> int:
    """Refuse a negative thread count or one beyond :func:`max_threads` (0 = the runtime's default)."""
    limit = max_threads()
    if threads < 0 or threads > limit:
        raise InputError(
            None, f"{what} must be between 0 and {limit} ({MAX_THREADS_PER_CORE} per CPU core), got {threads}"
        )
    return threads


def check_image_pixels(path: str | Path | None, width: int, height: int) -> None:
    """Refuse an image (or a requested size) beyond :data:`MAX_IMAGE_PIXELS` or :data:`MAX_IMAGE_SIDE`."""
    if width > MAX_IMAGE_SIDE or height > MAX_IMAGE_SIDE or width * height > MAX_IMAGE_PIXELS:
        raise InputError(
            path,
            f"image of {width}x{height} pixels is too large (at most {MAX_IMAGE_PIXELS:,} pixels and "
            f"{MAX_IMAGE_SIDE} per side)",
        )


def check_size(height: int, width: int, what: str = "size") -> tuple[int, int]:
    """Refuse a requested output size beyond the image limits (the message names ``what``)."""
    if height > MAX_IMAGE_SIDE or width > MAX_IMAGE_SIDE or height * width > MAX_IMAGE_PIXELS:
        raise InputError(
            None,
            f"{what} {height}x{width} is too large (at most {MAX_IMAGE_PIXELS:,} pixels and {MAX_IMAGE_SIDE} per side)",
        )
    return height, width


def check_lr(lr: float, what: str = "learning rate") -> float:
    """A finite learning rate in (0, :data:`MAX_LR`]."""
    if not math.isfinite(lr) or lr <= 0 or lr > MAX_LR:
        raise InputError(None, f"{what} must be a finite number in (0, {MAX_LR:g}], got {lr}")
    return lr


def available_memory_bytes() -> int | None:
    """Memory available to a new allocation: the least of the machine's (``MemAvailable`` on Linux), the cgroup's
    (``memory.max`` less ``memory.current``: a container's limit) and the address space left under ``RLIMIT_AS``;
    None where none can be read."""
    found = [v for v in (_meminfo_available(), _cgroup_available(), _address_space_left()) if v is not None]
    return min(found) if found else None


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_available() -> int | None:
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
    except (OSError, ValueError):
        return None
    return None if limit == "max" or not limit.isdigit() else max(0, int(limit) - used)


def _address_space_left() -> int | None:
    import resource  # Unix only; cheap

    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/status") as f:
            size = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmSize:"))
    except (OSError, ValueError, StopIteration):
        return None
    return max(0, soft - size)


def activation_bytes(arch, height: int, width: int, training: bool) -> int:
    """A rough upper bound of the activation memory of one forward pass (and backward when ``training``) at
    ``height`` x ``width``: every layer's output as float32, summed over the levels, times a factor for the layers
    within a level (conv, norm, activation each keep one tensor) and for the gradients."""
    kind = getattr(arch, "kind", "dip")
    if kind == "dd":
        widest = arch.k
        levels = arch.depth + 1
        per_pixel = sum(widest * 3 / 4**i for i in range(levels))  # the code grows to the image size
    elif kind == "pgan":  # two convs per scale, each keeping conv, activation and pixel-norm outputs; output last
        per_pixel = sum(depth * 6 / 4**i for i, depth in enumerate(reversed(arch.depths))) + arch.dim_output
    else:
        per_pixel = 0.0
        for i in range(arch.depth):
            ch = arch.channels_down[i] + arch.channels_up[i] + arch.channels_skip[i]
            per_pixel += ch * 3 / 4**i
        per_pixel += arch.in_channels
    factor = 4 if training else 1
    return int(per_pixel * height * width * 4 * factor)


def check_seed(seed: int, what: str = "seed") -> int:
    """A seed in [0, :data:`MAX_SEED`] (torch refuses, with an overflow traceback, anything beyond 64 bits)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InputError(None, f"{what} must be an integer between 0 and 2**63 - 1, got {seed!r}"[:200])
    return seed


def check_finite(value: float, what: str) -> float:
    """Refuse NaN and +-Inf (a NaN noise level or learning rate runs, and writes junk)."""
    if not math.isfinite(value):
        raise InputError(None, f"{what} must be a finite number, got {value}")
    return value


@dataclass(frozen=True)
class MemoryEstimate:
    """What a command will hold, in bytes, by part (:func:`estimate_memory`)."""

    weights: int
    gradients: int
    optimizer: int
    copies: int
    activations: int
    extra: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.copies + self.activations + self.extra

    def describe(self) -> str:
        parts = [(k, getattr(self, k)) for k in ("weights", "gradients", "optimizer", "copies", "activations", "extra")]
        return ", ".join(f"{k} {v / 2**30:.1f}" for k, v in parts if v >= 0.05 * 2**30) or "all parts < 0.1"


def parameter_count(arch: Any) -> int:
    """Parameters and buffers of ``arch``'s network, counted on the meta device (nothing allocated)."""
    import torch  # this module is imported by `lipdeploy run --help`; torch only when something is counted

    with torch.device("meta"):
        model = arch.build()
    return sum(t.numel() for t in model.state_dict().values())


def estimate_memory(arch: Any, height: int, width: int, training: bool, extra_bytes: int = 0) -> MemoryEstimate:
    """Everything a fit (``training``) or an inference (export, run) of ``arch`` at ``height`` x ``width`` holds:
    the float32 weights, their gradients and Adam's two moments when training, the copies of the weights the command
    keeps (:data:`TRAINING_COPIES` / :data:`INFERENCE_COPIES`) and the activations (:func:`activation_bytes`);
    ``extra_bytes`` for what only the caller knows (images, a model file). Nothing is allocated."""
    w = 4 * parameter_count(arch)
    return MemoryEstimate(
        weights=w,
        gradients=w if training else 0,
        optimizer=2 * w if training else 0,
        copies=(TRAINING_COPIES if training else INFERENCE_COPIES) * w,
        activations=activation_bytes(arch, height, width, training) if height and width else 0,
        extra=extra_bytes,
    )


def check_work(arch: Any, height: int, width: int, training: bool, what: str, extra_bytes: int = 0) -> MemoryEstimate:
    """The one check before a command allocates: the output size within the image limits and
    :func:`estimate_memory` within :data:`MEMORY_FRACTION` of the available memory (``height = width = 0``: the
    network alone, before the image size is known). Returns the estimate."""
    if height and width:
        check_size(height, width, f"{what}: output")
    estimate = estimate_memory(arch, height, width, training, extra_bytes)
    check_memory(estimate.total, what, estimate.describe())
    return estimate


def check_memory(needed_bytes: int, what: str, detail: str | None = None) -> None:
    """Refuse work whose memory estimate exceeds :data:`MEMORY_FRACTION` of the available memory."""
    avail = available_memory_bytes()
    if avail is None or needed_bytes <= MEMORY_FRACTION * avail:
        return
    parts = f" ({detail} GiB)" if detail else ""
    raise InputError(
        None,
        f"{what} needs about {needed_bytes / 2**30:.1f} GiB{parts} but only {avail / 2**30:.1f} GiB of memory is "
        "available: use a smaller image or network",
    )

"""Linear measurements of an image for generator priors: compressive sensing operators, inpainting masks, outlier rows.

An image ``x`` (``[3, R, R]`` on [-1, 1], the generator's scale) is flattened to ``n = 3 R^2`` values and observed as
``y = A x + noise``. The paper's setting (DOMAIN.md, "Generator priors", after Jalal et al. 2020): ``A`` Gaussian with
entries N(0, 1/m) (rows ``randn / sqrt(m)``), noise std 0.01, and K outlier rows of ones whose measurement is 1e4.

A Gaussian ``A`` is ``m x n`` floats (786 MB at m = 1000 for a 256 x 256 image), so it is refused beyond the memory
limit (:data:`lipdeploy.limits.MEMORY_FRACTION` of the available memory) and :class:`OrthogonalOperator` is offered
instead: random signs, an orthonormal real FFT and ``m`` of its ``n`` outputs, scaled by ``sqrt(n / m)`` so that
``E[A^T A] = I`` as for the Gaussian; O(n log n) per product, no stored matrix, an exact adjoint (Do et al. 2012,
"structurally random matrices"). :class:`MaskOperator` is inpainting's ``y = x * mask``.

:class:`Measurements` holds the operator, the outlier rows and ``y``; :func:`back_projection` and
:func:`least_squares` are the linear baselines a generator prior has to beat.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from .errors import InputError
from .fileio import atomic_output
from .limits import MEMORY_FRACTION, available_memory_bytes
from .ticket import read_tensor_file

OUTLIER_VALUE = 1e4
"""The measurement the paper gives each outlier row (a row of ones): 1e4, far beyond any ``sum(x)`` on [-1, 1]."""

# The Gram matrix A A^T of a Gaussian operator costs m^2 n multiply-adds: 2e10 is about 10 s on one core; the paper's
# 1000 x 196608 (2e11) is left out, the demo's 200 x 768 (3e7) takes milliseconds.
MAX_LEAST_SQUARES_FLOPS = 2e10


class Operator(ABC):
    """A linear map from ``n`` image values to ``m`` measurements, applied to batches ``[B, n] -> [B, m]``."""

    kind: ClassVar[str]

    def __init__(self, n: int, m: int) -> None:
        self.n = int(n)
        self.m = int(m)

    @abstractmethod
    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``A x`` for each row of ``x`` ``[B, n]`` (differentiable)."""

    @abstractmethod
    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``A^T y`` for each row of ``y`` ``[B, m]``."""

    @abstractmethod
    def to(self, device: torch.device | str) -> Operator:
        """The same operator with its tensors on ``device``."""

    def pseudo_inverse(self, y: torch.Tensor) -> torch.Tensor | None:
        """The minimum-norm least-squares solution ``A^T (A A^T)^-1 y``, or None where it is not cheap."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "n": self.n, "m": self.m}


def check_rows(m: int, n: int, what: str = "measurements") -> None:
    """Refuse ``m <= 0`` rows or more rows than image values."""
    if m <= 0:
        raise InputError(None, f"{what} must be positive, got {m}")
    if m > n:
        raise InputError(None, f"{what} ({m}) must not exceed the image's {n} values (3 x height x width)")


class GaussianOperator(Operator):
    """``A = randn(m, n) / sqrt(m)`` from ``seed`` (the paper's): stored, refused beyond ``max_bytes``
    (default: :data:`MEMORY_FRACTION` of the available memory)."""

    kind = "gaussian"

    def __init__(self, n: int, m: int, seed: int = 0, max_bytes: int | None = None) -> None:
        check_rows(m, n)
        super().__init__(n, m)
        self.seed = int(seed)
        needed = 4 * m * n
        if max_bytes is None:
            avail = available_memory_bytes()
            max_bytes = None if avail is None else int(MEMORY_FRACTION * avail)
        if max_bytes is not None and needed > max_bytes:
            raise InputError(
                None,
                f"a Gaussian measurement matrix of {m} x {n} needs {needed:,} bytes ({needed / 2**30:.1f} GiB), more "
                f"than the {max_bytes:,} bytes allowed: use the orthogonal operator (no stored matrix)",
            )
        gen = torch.Generator().manual_seed(self.seed)
        self.matrix = torch.randn(m, n, generator=gen) / math.sqrt(m)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.matrix.T

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y @ self.matrix

    def to(self, device: torch.device | str) -> GaussianOperator:
        out = object.__new__(GaussianOperator)
        out.n, out.m, out.seed, out.matrix = self.n, self.m, self.seed, self.matrix.to(device)
        return out

    def pseudo_inverse(self, y: torch.Tensor) -> torch.Tensor | None:
        if float(self.m) ** 2 * self.n > MAX_LEAST_SQUARES_FLOPS:
            return None
        a = self.matrix.double()
        gram = a @ a.T  # full rank with probability one for m <= n
        coef = torch.linalg.solve(gram, y.double().T)  # [m, B]
        return (a.T @ coef).T.to(y.dtype)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "seed": self.seed}


def real_fft(x: torch.Tensor) -> torch.Tensor:
    """An orthonormal real transform of the last dimension (length n), O(n log n): the unitary FFT's half spectrum
    as real numbers, ``[F_0, sqrt2 Re F_1.., sqrt2 Im F_1.., (F_n/2 for even n)]``. Norm-preserving because for real
    ``x`` ``|x|^2 = |F_0|^2 + 2 sum |F_k|^2 (+ |F_n/2|^2)``; :func:`inverse_real_fft` is its inverse and transpose."""
    n = x.shape[-1]
    f = torch.fft.rfft(x, norm="ortho")
    half = (n - 1) // 2  # bins with both a real and an imaginary part
    parts = [f.real[..., :1], f.real[..., 1 : half + 1] * math.sqrt(2), f.imag[..., 1 : half + 1] * math.sqrt(2)]
    if n % 2 == 0:
        parts.append(f.real[..., half + 1 :])
    return torch.cat(parts, dim=-1)


def inverse_real_fft(c: torch.Tensor) -> torch.Tensor:
    """The inverse (= transpose) of :func:`real_fft`."""
    n = c.shape[-1]
    half = (n - 1) // 2
    zero = torch.zeros_like(c[..., :1])
    re = [c[..., :1], c[..., 1 : half + 1] / math.sqrt(2)]
    im = [zero, c[..., half + 1 : 2 * half + 1] / math.sqrt(2)]
    if n % 2 == 0:
        re.append(c[..., 2 * half + 1 :])
        im.append(zero)
    spectrum = torch.complex(torch.cat(re, dim=-1), torch.cat(im, dim=-1))
    return torch.fft.irfft(spectrum, n=n, norm="ortho")


class OrthogonalOperator(Operator):
    """``A = sqrt(n / m) * S F D``: ``D`` random signs, ``F`` :func:`real_fft`, ``S`` ``m`` of the ``n`` outputs drawn
    without replacement (from ``seed``). Rows orthogonal with norm ``sqrt(n / m)``; nothing of size ``m x n``."""

    kind = "orthogonal"

    def __init__(self, n: int, m: int, seed: int = 0) -> None:
        check_rows(m, n)
        super().__init__(n, m)
        self.seed = int(seed)
        gen = torch.Generator().manual_seed(self.seed)
        self.signs = torch.randint(0, 2, (n,), generator=gen).float() * 2 - 1
        self.rows = torch.randperm(n, generator=gen)[:m].sort().values
        self.scale = math.sqrt(n / m)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return real_fft(x * self.signs)[:, self.rows] * self.scale

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        c = torch.zeros(y.shape[0], self.n, dtype=y.dtype, device=y.device)
        c[:, self.rows] = y * self.scale
        return inverse_real_fft(c) * self.signs

    def to(self, device: torch.device | str) -> OrthogonalOperator:
        out = object.__new__(OrthogonalOperator)
        out.n, out.m, out.seed, out.scale = self.n, self.m, self.seed, self.scale
        out.signs, out.rows = self.signs.to(device), self.rows.to(device)
        return out

    def pseudo_inverse(self, y: torch.Tensor) -> torch.Tensor:
        return self.adjoint(y) * (self.m / self.n)  # A A^T = (n / m) I

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "seed": self.seed}


class MaskOperator(Operator):
    """Inpainting: ``y = x * mask`` with a 0/1 mask of the image's values (all ``n`` kept, missing ones zero, so the
    mean squared residual is the paper's inpainting MSE over the whole image)."""

    kind = "mask"

    def __init__(self, mask: torch.Tensor) -> None:
        flat = mask.reshape(-1).float()
        super().__init__(flat.numel(), flat.numel())
        self.mask = flat

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.mask

    def to(self, device: torch.device | str) -> MaskOperator:
        return MaskOperator(self.mask.to(device))

    def pseudo_inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.mask

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "known_fraction": round(float(self.mask.mean()), 6)}


OPERATORS = ("gaussian", "orthogonal")
"""Compressive sensing operators by name (``--operator``)."""


def make_operator(kind: str, n: int, m: int, seed: int = 0) -> Operator:
    """A compressive sensing operator of :data:`OPERATORS` by name."""
    if kind == "gaussian":
        return GaussianOperator(n, m, seed)
    if kind == "orthogonal":
        return OrthogonalOperator(n, m, seed)
    raise InputError(None, f"operator must be one of {', '.join(OPERATORS)}, got {kind!r}")


@dataclass
class Measurements:
    """``y`` (``[m]``, first the operator's rows, then ``outliers`` rows of ones; ``[K, m]`` for K images measured by
    the same operator) and how it was made."""

    operator: Operator
    y: torch.Tensor
    outliers: int = 0
    noise_sigma: float = 0.0

    def __post_init__(self) -> None:
        if self.y.dim() not in (1, 2) or self.y.shape[-1] != self.m:
            raise InputError(None, f"expected {self.m} measurements, got a tensor of shape {list(self.y.shape)}")
        if not bool(torch.isfinite(self.y).all()):
            raise InputError(None, "the measurements contain NaN or Inf")

    @property
    def m(self) -> int:
        """All rows: the operator's and the outliers."""
        return self.operator.m + self.outliers

    @property
    def n(self) -> int:
        return self.operator.n

    @property
    def images(self) -> int:
        """How many images ``y`` measures (1 for a 1-D ``y``)."""
        return 1 if self.y.dim() == 1 else self.y.shape[0]

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The noiseless measurements of images ``x`` ``[B, n]``: ``[B, m]`` (an outlier row measures ``sum(x)``)."""
        rows = self.operator.apply(x)
        if not self.outliers:
            return rows
        return torch.cat([rows, x.sum(dim=1, keepdim=True).expand(-1, self.outliers)], dim=1)

    def residuals(self, x: torch.Tensor) -> torch.Tensor:
        """``y - predict(x)``, ``[B, m]`` (for several images, ``x`` holds one image per row of ``y``)."""
        if self.y.dim() == 2 and x.shape[0] != self.y.shape[0]:
            raise ValueError(f"{x.shape[0]} images for measurements of {self.y.shape[0]}")
        return self.y - self.predict(x)

    def to(self, device: torch.device | str) -> Measurements:
        return Measurements(self.operator.to(device), self.y.to(device), self.outliers, self.noise_sigma)

    def describe(self) -> dict[str, Any]:
        return {
            "operator": self.operator.describe(),
            "measurements": self.m,
            "outliers": self.outliers,
            "outlier_value": OUTLIER_VALUE if self.outliers else None,
            "noise_sigma": self.noise_sigma,
        }


def simulate_measurements(
    x: torch.Tensor, operator: Operator, noise_sigma: float = 0.0, outliers: int = 0, seed: int = 0
) -> Measurements:
    """The paper's measurements of image ``x`` (on [-1, 1], ``operator.n`` values; ``[K, C, H, W]`` with K > 1: one row
    of ``y`` per image): ``A x`` plus N(0, noise_sigma^2) noise (seeded), then ``outliers`` rows of ones measuring
    :data:`OUTLIER_VALUE`."""
    if not math.isfinite(noise_sigma) or noise_sigma < 0:
        raise InputError(None, f"noise sigma must be a finite number >= 0, got {noise_sigma}")
    if outliers < 0:
        raise InputError(None, f"outliers must be >= 0, got {outliers}")
    k = x.shape[0] if x.dim() == 4 else 1
    flat = x.reshape(k, -1).float()
    if flat.shape[1] != operator.n:
        raise InputError(None, f"the image has {flat.shape[1]} values, the operator measures {operator.n}")
    clean = operator.apply(flat.to(_device(operator))).cpu()
    gen = torch.Generator().manual_seed(int(seed))
    y = clean + noise_sigma * torch.randn(clean.shape, generator=gen)
    if outliers:
        y = torch.cat([y, torch.full((k, outliers), OUTLIER_VALUE)], dim=1)
    return Measurements(operator, y[0] if k == 1 else y, outliers, noise_sigma)


def _device(operator: Operator) -> torch.device:
    for name in ("matrix", "signs", "mask"):
        t = getattr(operator, name, None)
        if isinstance(t, torch.Tensor):
            return t.device
    return torch.device("cpu")


def back_projection(meas: Measurements) -> torch.Tensor:
    """``A^T y`` over the operator's rows (told which rows are outliers, and without them): ``[n]`` (``[K, n]``)."""
    y = meas.y.reshape(-1, meas.m)[:, : meas.operator.m].to(_device(meas.operator))
    out = meas.operator.adjoint(y).cpu()
    return out[0] if meas.y.dim() == 1 else out


def least_squares(meas: Measurements) -> torch.Tensor | None:
    """The minimum-norm least-squares image ``A^+ y`` over the operator's rows (``[n]``, ``[K, n]``), or None where
    it is not cheap."""
    y = meas.y.reshape(-1, meas.m)[:, : meas.operator.m].to(_device(meas.operator))
    out = meas.operator.pseudo_inverse(y)
    if out is None:
        return None
    return out[0].cpu() if meas.y.dim() == 1 else out.cpu()


MEASUREMENTS_FORMAT = "lipdeploy.measurements"


def save_measurements(meas: Measurements, path: str | Path) -> None:
    """Write ``y`` and what rebuilds its operator (kind, n, rows, seed, outliers) as plain data, atomically."""
    desc = meas.operator.describe()
    if desc["kind"] not in OPERATORS:
        raise InputError(path, f"only compressive sensing measurements ({', '.join(OPERATORS)}) are written")
    record = {
        "format": MEASUREMENTS_FORMAT,
        "y": meas.y.detach().cpu().float().contiguous(),
        "operator": desc["kind"],
        "n": meas.n,
        "seed": desc["seed"],
        "measurements": meas.m,
        "outliers": meas.outliers,
        "noise_sigma": float(meas.noise_sigma),
    }
    with atomic_output(path) as tmp:
        torch.save(record, tmp)


def load_measurements(path: str | Path, n: int) -> Measurements:
    """Read a :func:`save_measurements` file for images of ``n`` values (weights_only; :class:`InputError` naming
    the file for anything malformed, for another image size, and for NaN or Inf measurements)."""
    content, _ = read_tensor_file(path)
    if content.get("format") != MEASUREMENTS_FORMAT:
        raise InputError(
            path, f"not a measurements file (no format {MEASUREMENTS_FORMAT!r}; write one with --simulate)"
        )
    y = content.get("y")
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or not y.is_floating_point():
        raise InputError(path, "'y' must be a 1-D floating-point tensor")
    fields = {}
    for key in ("n", "seed", "measurements", "outliers"):
        value = content.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(path, f"{key!r} must be an integer, got {value!r}"[:160])
        fields[key] = value
    if fields["n"] != n:
        raise InputError(path, f"measures images of {fields['n']} values; this generator makes {n} (3 x R x R)")
    if not 0 <= fields["outliers"] < fields["measurements"]:
        raise InputError(path, f"outliers ({fields['outliers']}) must be in [0, measurements)")
    if y.numel() != fields["measurements"]:
        raise InputError(path, f"holds {y.numel()} measurements but says {fields['measurements']}")
    if not bool(torch.isfinite(y).all()):
        raise InputError(path, "the measurements contain NaN or Inf")
    try:
        operator = make_operator(str(content.get("operator")), n, fields["measurements"] - fields["outliers"],
                                 fields["seed"])  # fmt: skip
    except InputError as exc:
        raise InputError(path, exc.problem) from None
    sigma = content.get("noise_sigma", 0.0)
    return Measurements(operator, y.float(), fields["outliers"], float(sigma) if isinstance(sigma, float) else 0.0)


__all__ = [
    "OPERATORS",
    "OUTLIER_VALUE",
    "GaussianOperator",
    "MaskOperator",
    "Measurements",
    "Operator",
    "OrthogonalOperator",
    "back_projection",
    "check_rows",
    "inverse_real_fft",
    "least_squares",
    "load_measurements",
    "make_operator",
    "real_fft",
    "save_measurements",
    "simulate_measurements",
]

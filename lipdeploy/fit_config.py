"""The hyperparameters of a fit, declared once: each field carries its default, its help and its check.

:class:`FitConfig` is what :func:`lipdeploy.fit.fit` reads; the commands' options (``restore``, ``find``, ``bench``)
are generated from its fields (:func:`lipdeploy.cli.options.setting_options`), so a default, a help text or a range
is written here and nowhere else. A field's metadata:

- ``help``: the option's help text;
- ``check``: ``check(value, what) -> value``, raising :class:`~lipdeploy.errors.InputError` naming ``what`` (the field
  for the library, the flag for the CLI); :func:`check_settings` runs every field's check on a config;
- ``choices``: the values a string field takes (checked, and the option's choice list);
- ``flag``: the option's name where it is not the field's (``--input-noise``);
- ``cli_default``: the commands' default where it differs from the library's (the output average, see ``ema_mode``);
- ``show_default``: what ``--help`` says for a default that depends on something else (the task's noise level).

No torch here: the CLI builds its options from this module without loading PyTorch (``lipdeploy --help`` stays fast).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from .errors import InputError
from .limits import check_lr, check_seed

Check = Callable[[Any, str], Any]
"""A field's validator: ``check(value, what)`` returns the value or raises InputError naming ``what``."""

EMA_MODES = ("paper", "debiased")
"""How the output average starts (:attr:`FitConfig.ema_mode`; lipdeploy/fit.py's docstring)."""

CAPTURE_MODES: tuple[str, ...] = ("off", "cuda-graph", "compile", "auto", "sync-free")
"""How a fit runs its step (:attr:`FitConfig.capture`, :data:`lipdeploy.captured.CaptureMode`)."""


def setting(default: Any, help: str, **metadata: Any) -> Any:
    """A dataclass field with its ``default`` and ``help`` (and the other metadata keys of the module docstring)."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def at_least(low: float) -> Check:
    """A check: a number >= ``low``."""

    def check(value: Any, what: str) -> Any:
        if not value >= low:  # NaN fails too
            raise InputError(None, f"{what} must be >= {low:g}, got {value}")
        return value

    return check


def finite_at_least(low: float) -> Check:
    """A check: a finite number >= ``low``."""

    def check(value: Any, what: str) -> Any:
        if not math.isfinite(value):
            raise InputError(None, f"{what} must be a finite number, got {value}")
        return at_least(low)(value, what)

    return check


def check_average_weight(value: float, what: str) -> float:
    """The output average's weight: in [0, 1) (1 would never move; the debiased average divides by 1 - weight)."""
    if not 0 <= value < 1:  # NaN fails too
        raise InputError(None, f"{what} must be in [0, 1), got {value}")
    return value


def check_choice(value: Any, what: str, choices: tuple[str, ...]) -> Any:
    if value not in choices:
        raise InputError(None, f"{what} must be one of {', '.join(choices)}; got {value!r}")
    return value


def check_field(field: dataclasses.Field, value: Any, what: str | None = None) -> Any:
    """``value`` of ``field`` checked (its ``choices`` and ``check``); None passes where the default is None."""
    what = what or field.name
    if value is None and field.default is None:
        return value
    if "choices" in field.metadata:
        check_choice(value, what, field.metadata["choices"])
    check = field.metadata.get("check")
    return check(value, what) if check is not None else value


def field_help(config: type, name: str) -> str:
    """The help of field ``name`` of the settings dataclass ``config`` (an option declared by hand, such as
    ``--backend``, shows the field's own words)."""
    return next(f.metadata["help"] for f in dataclasses.fields(config) if f.name == name)


def check_settings(config: Any) -> None:
    """Every field of the settings dataclass ``config`` checked (InputError naming the first bad field)."""
    for field in dataclasses.fields(config):
        check_field(field, getattr(config, field.name))


@dataclass
class FitConfig:
    """Hyperparameters of one fit; the defaults are the paper's. Checked when made (:func:`check_settings`)."""

    iters: int = setting(3000, "Fitting iterations.", check=at_least(1))
    lr: float = setting(0.01, "Adam learning rate.", check=check_lr)
    input_noise_std: float | None = setting(
        None,
        "Std of the noise added to the network input each step.",
        check=finite_at_least(0),
        flag="--input-noise",
        show_default="the task's: 1/30 denoise, 0.03 otherwise",
    )
    input_scale: float = setting(0.1, "Scale of the uniform noise input code U(0, scale).", check=finite_at_least(0))
    ema: float = setting(0.99, "Output averaging weight (0: off, the raw output).", check=check_average_weight)
    # The library default stays the paper's so that recorded benchmarks reproduce bit for bit; the commands default
    # to the debiased average, whose short fits are not dominated by the untrained output.
    ema_mode: str = setting(
        "paper",
        "debiased: bias-corrected average (as Adam's moments), a weighted mean of the outputs so far; paper: the "
        "paper code's, which starts at the untrained output (still 37% of it after 100 iterations).",
        choices=EMA_MODES,
        cli_default="debiased",
    )
    backtrack_db: float = setting(
        5.0,
        "Restore the last good weights when the PSNR to the observation drops by more than this (dB; 0: never).",
        check=finite_at_least(0),
    )
    check_every: int = setting(1, "Steps between backtracking checks (and weight snapshots).", check=at_least(1))
    seed: int = setting(0, "Seed of the input code and its perturbation.", check=check_seed)
    log_every: int = setting(50, "Steps between history entries (loss, PSNR).", check=at_least(1))
    device: str = setting("cpu", "Where to fit.")
    # Checked by lipdeploy.fit (the registered backends are known only once the kernels' modules are loaded).
    backend: str = setting(
        "auto",
        "auto: a pruned network runs on the sparse kernels on CUDA (per layer, where faster than cuDNN) and as the "
        "masked network on CPU; masked: the uncompacted network under its masks (the reference); sparse: compacted "
        "+ sparse kernels on any device; a registered backend's name (dense: PyTorch's convs, reference, "
        "triton-*): compacted, every conv on that backend.",
    )
    capture: str = setting(
        "off",
        "off: the eager step; cuda-graph: the step captured once in a CUDA graph and replayed; compile: "
        "torch.compile of it; auto: cuda-graph on CUDA, off elsewhere; sync-free: the captured step run eagerly.",
        choices=CAPTURE_MODES,
    )

    def __post_init__(self) -> None:
        check_settings(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


__all__ = [
    "CAPTURE_MODES",
    "EMA_MODES",
    "FitConfig",
    "at_least",
    "check_field",
    "check_settings",
    "field_help",
    "setting",
]

"""Validators for the fields of an architecture spec read from a file (a ticket header, a checkpoint's config).

Headers are untrusted: a negative or huge count would fail deep inside PyTorch or allocate without bound, a string
where a number belongs would fail far from the file that held it. Each validator returns the field's value in its
canonical type or raises ``ValueError`` with a message naming the field; the loaders turn it into an
:class:`~lipdeploy.errors.InputError` naming the file.
"""

from __future__ import annotations

import math
from typing import Any


def int_field(name: str, value: Any, low: int, high: int) -> int:
    """An integer within [low, high] (bools refused: ``True`` is not a channel count)."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise ValueError(f"{name} must be an integer, got {value!r}"[:200])
    value = int(value)
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")
    return value


def float_field(name: str, value: Any, low: float, high: float) -> float:
    """A finite real number within [low, high] (integers accepted, bools refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}"[:200])
    value = float(value)
    if not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"{name} must be a finite number between {low:g} and {high:g}, got {value}")
    return value


def choice_field(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """One of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}"[:200])
    return value


def bool_field(name: str, value: Any) -> bool:
    """``True`` or ``False`` (not 0/1, not a string)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}"[:200])
    return value


def int_tuple_field(name: str, value: Any, max_len: int, low: int, high: int) -> tuple[int, ...]:
    """A list of at most ``max_len`` integers, each within [low, high], as a tuple."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be a list of integers, got {value!r}"[:200])
    if len(value) > max_len:
        raise ValueError(f"{name} has {len(value)} entries; at most {max_len} are supported")
    return tuple(int_field(f"{name}[{i}]", v, low, high) for i, v in enumerate(value))

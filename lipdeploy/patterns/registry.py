"""The registry of sparsity patterns: :data:`PATTERNS` by name, and the look-ups over it."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch

from ..errors import InputError
from .base import Pattern

PATTERNS: dict[str, Pattern] = {}
"""Registered patterns by name."""


def register_pattern(pattern: Pattern, alias: str | None = None) -> Pattern:
    """Add ``pattern`` to :data:`PATTERNS` under its name, or under ``alias`` as a second name for the same object
    (``block16x16`` is ``block``); a name already taken by another pattern object is refused."""
    name = alias or pattern.name
    if not name:
        raise ValueError(f"pattern {pattern!r} has no name")
    old = PATTERNS.get(name)
    if old is not None and old is not pattern:
        raise ValueError(f"a pattern named {name!r} is already registered")
    PATTERNS[name] = pattern
    return pattern


def unregister_pattern(name: str) -> None:
    """Remove a pattern (tests register temporary ones)."""
    PATTERNS.pop(name, None)


def pattern_names() -> list[str]:
    """The registered pattern names, sorted (the choices of ``find --granularity``)."""
    return sorted(PATTERNS)


def get_pattern(name: str) -> Pattern:
    """The registered pattern called ``name``; :class:`InputError` listing the known ones otherwise."""
    try:
        return PATTERNS[name]
    except (KeyError, TypeError):
        raise InputError(None, f"unknown sparsity pattern {name!r} (known: {', '.join(sorted(PATTERNS))})") from None


def detect(masks: Mapping[str, torch.Tensor], protect: Collection[str] | None = None) -> str:
    """The name of the most structured registered pattern (highest :attr:`Pattern.rank`, then name) that every
    layer's mask fits: the label of a ticket. ``protect``: the output layers (default: the last layer).

    A dense mask fits every pattern, so it gets the most structured one's name.
    """
    names = list(masks)
    guarded = {names[-1]} if (protect is None and names) else set(protect or ())
    unique = {id(p): p for p in PATTERNS.values()}.values()  # an alias names the same object: try it once
    for pattern in sorted(unique, key=lambda p: (-p.rank, p.name)):
        if all(pattern.check(m, n, n in guarded) is None for n, m in masks.items()):
            return pattern.name
    raise InputError(None, f"the masks fit none of the registered sparsity patterns ({', '.join(sorted(PATTERNS))})")


def detect_layer(mask: torch.Tensor, name: str, is_output_layer: bool = False) -> str:
    """The most structured registered pattern that one layer's ``mask`` fits (a per-layer label, e.g. for a compacted
    layer). Under ``channel`` the output layer is pruned by kernel, so pass ``is_output_layer`` for it."""
    return detect({name: mask}, protect={name} if is_output_layer else ())

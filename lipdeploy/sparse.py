"""Deprecated module path: :func:`sparsify` and the backends live in :mod:`lipdeploy.backends` (old imports work)."""

from __future__ import annotations

from .backends.sparsify import (
    _auto,  # noqa: F401  (the dispatcher's pre-registry entry point, still imported)
    sparse_layers,
    sparsify,
)

__all__ = ["sparse_layers", "sparsify"]

"""Sparsity patterns: the registry of how masks may be structured (single weights, whole kernels, blocks of channels
of one kernel tap, whole channels).

Each pattern is one module that registers a :class:`~lipdeploy.patterns.base.Pattern` in :data:`PATTERNS`; IMP
(``lipdeploy.imp``), ``find --granularity``, compaction and export look patterns up here by name, so adding a pattern
is one new file plus its tests. A pattern names the kernel packing format and ONNX position codes that suit it; the
kernels and the export implement them (this package imports neither).
"""

from __future__ import annotations

# the built-in patterns register themselves in PATTERNS when imported
from . import block, channel, kernel, unstructured  # noqa: F401
from .base import POSITION_CODES, Pattern, Scope, prune
from .block import Block, block_name, block_pattern, parse_block
from .registry import (
    PATTERNS,
    detect,
    detect_layer,
    get_pattern,
    pattern_names,
    register_pattern,
    unregister_pattern,
)

__all__ = [
    "PATTERNS",
    "POSITION_CODES",
    "Block",
    "Pattern",
    "Scope",
    "block_name",
    "block_pattern",
    "detect",
    "detect_layer",
    "get_pattern",
    "parse_block",
    "pattern_names",
    "prune",
    "register_pattern",
    "unregister_pattern",
]

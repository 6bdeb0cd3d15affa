"""Deprecated module path: compaction lives in :mod:`lipdeploy.compaction` (this shim keeps old imports working)."""

from __future__ import annotations

from .compaction import (
    ChannelAffine,
    CompactionReport,
    CompactLayer,
    CompactNet,
    ConstPlanes,
    ImageNorm,
    LayerCompaction,
    Step,
    analyze_compaction,
    compact,
)

__all__ = [
    "ChannelAffine",
    "CompactLayer",
    "CompactNet",
    "CompactionReport",
    "ConstPlanes",
    "ImageNorm",
    "LayerCompaction",
    "Step",
    "analyze_compaction",
    "compact",
]

"""lipdeploy: deploy sparse deep image priors (lottery image priors).

Importing the package does no CUDA or Triton work; kernels compile on first use. The public names below load on
first access (PEP 562), so that importing a light submodule (``lipdeploy.cli`` for ``lipdeploy --help``,
``lipdeploy.errors``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import InputError

if TYPE_CHECKING:
    from .backends import sparsify
    from .compaction import CompactionReport, analyze_compaction, compact
    from .networks import DeepDecoderSpec, SkipSpec, make_input, paper_skip
    from .ticket import Ticket, load_ticket, ticket_from_model

__version__ = "0.1.0"

# public name -> submodule defining it, imported on first access
_LAZY = {
    "CompactionReport": "compaction",
    "analyze_compaction": "compaction",
    "compact": "compaction",
    "DeepDecoderSpec": "networks",
    "SkipSpec": "networks",
    "make_input": "networks",
    "paper_skip": "networks",
    "sparsify": "backends",
    "Ticket": "ticket",
    "load_ticket": "ticket",
    "ticket_from_model": "ticket",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "DeepDecoderSpec",
    "InputError",
    "SkipSpec",
    "Ticket",
    "__version__",
    "load_ticket",
    "make_input",
    "paper_skip",
    "ticket_from_model",
    "CompactionReport",
    "analyze_compaction",
    "compact",
    "sparsify",
]

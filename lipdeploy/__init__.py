"""lipdeploy: deploy sparse deep image priors (lottery image priors).

Importing the package does no CUDA or Triton work; kernels compile on first use. The public names below load on
first access (PEP 562), so that importing a light submodule (``lipdeploy.cli`` for ``lipdeploy --help``,
``lipdeploy.errors``) does not import torch.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from .errors import InputError

if TYPE_CHECKING:
    from .compact import CompactionReport, analyze_compaction, compact
    from .networks import DeepDecoderSpec, SkipSpec, make_input, paper_skip
    from .sparse import sparsify
    from .ticket import Ticket, load_ticket, ticket_from_model

__version__ = "0.1.0"

# public name -> submodule defining it, imported on first access
_LAZY = {
    "CompactionReport": "compact",
    "analyze_compaction": "compact",
    "compact": "compact",
    "DeepDecoderSpec": "networks",
    "SkipSpec": "networks",
    "make_input": "networks",
    "paper_skip": "networks",
    "sparsify": "sparse",
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


class _Package(types.ModuleType):
    """Keeps ``lipdeploy.compact`` the function: the import system binds a loaded submodule as an attribute of its
    package, which would replace a public function of the same name (eager imports used to rebind it afterwards)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _LAZY.get(name) == name and hasattr(value, name):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


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

"""The registry of execution backends for one compacted conv layer, and the names that select them.

A :class:`Backend` turns one :class:`~lipdeploy.compaction.CompactLayer` into the module that runs it. ``BACKENDS``
maps each backend's name to it; that name is the one vocabulary of the API (``sparsify(backend=...)``,
``FitConfig.backend``), the timing cache and the benchmarks' result rows. :func:`resolve` checks a user's spelling
against the registered names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..compaction import CompactLayer

__all__ = ["AUTO", "BACKENDS", "Backend", "register", "resolve"]

AUTO = "auto"
"""Not a backend: per layer, the fastest registered backend that supports the layer (see ``lipdeploy.backends``)."""


class Backend:
    """One way to run a compacted conv layer.

    Subclasses set ``name`` (the registry key), ``description`` (one line, shown to users), and:

    - ``sparse``: the built module stores only the kept weights (a ``SparseConv2d``), so a fitting cannot move a
      pruned weight; a dense module keeps the mask through the fit's gradient masking instead (``lipdeploy.fit``).
    - ``dispatched``: the ``"auto"`` dispatcher times this backend against the ``"dense"`` baseline.
    - ``fuses_reflection_pad``: the built module can take over a ``ReflectionPad2d`` that only feeds this conv
      (``build(..., padding=, padding_mode="reflect")``), so the padded copy is never materialised.
    """

    name: str = ""
    description: str = ""
    sparse: bool = False
    dispatched: bool = False
    fuses_reflection_pad: bool = False

    def supports(self, layer: CompactLayer, device: torch.device | None = None) -> bool:
        """Whether this backend can run ``layer`` (on ``device``; None: whatever device it will be moved to)."""
        raise NotImplementedError

    def build(self, layer: CompactLayer, padding: int | None = None, padding_mode: str | None = None) -> nn.Module:
        """A fresh module computing ``layer`` from its current weight, bias and mask, on the weight's device.

        ``padding`` / ``padding_mode`` replace the layer's own (a fused reflection pad); None keeps them.
        """
        raise NotImplementedError

    def configs(self, layer: CompactLayer, out_pixels: int, device: torch.device) -> Sequence[Any]:
        """Kernel configurations the dispatcher times for ``layer`` (``out_pixels`` output pixels per image).

        ``[None]``: one candidate, the module as built; ``[]``: nothing worth timing on this layer (the backend is
        then not built). The chosen config is set as the module's ``config``.
        """
        return [None]

    def candidate(self, config: Any) -> str:
        """The candidate's name in the timing cache: the backend name, plus the config's tag when it has one."""
        return self.name if config is None else f"{self.name}:{config.tag}"

    def __repr__(self) -> str:
        return f"<backend {self.name!r}: {self.description}>"


BACKENDS: dict[str, Backend] = {}
"""Registered backends by name. Add one with :func:`register` (see ``lipdeploy.backends`` for where it goes)."""


def register(backend: Backend) -> Backend:
    """Add ``backend`` to :data:`BACKENDS` under its name (a second registration of a name is an error)."""
    if not backend.name or backend.name == AUTO:
        raise ValueError(f"a backend needs a name other than {AUTO!r}, got {backend.name!r}")
    if backend.name in BACKENDS:
        raise ValueError(f"backend {backend.name!r} is already registered")
    BACKENDS[backend.name] = backend
    return backend


def resolve(name: str) -> str:
    """``name`` if it is a registered backend or ``"auto"``; otherwise a ValueError listing the names."""
    if name == AUTO or name in BACKENDS:
        return name
    raise ValueError(f"backend must be one of {', '.join([AUTO, *sorted(BACKENDS)])}; got {name!r}")

"""Execution backends for one compacted conv layer, one registry of them, and :func:`sparsify`.

A *backend* is one way to run a :class:`~lipdeploy.compaction.CompactLayer` (the hand-off compaction produces for each
remaining conv): a :class:`Backend` with ``name``, ``description``, ``supports(layer, device)``, ``build(layer)`` and,
for the per-layer dispatcher, ``configs(layer, ...)`` (the kernel configurations to time) and ``dispatched`` (whether
"auto" times it against "dense"). ``BACKENDS`` maps names to backends; ``sorted(BACKENDS)`` plus ``"auto"`` is the
one vocabulary of the API (``sparsify(backend=...)``, ``FitConfig.backend``), the dispatcher's timing cache and the
benchmarks' rows. Registered here:

- ``"dense"`` (:mod:`.dense`): PyTorch's conv on the compacted dense weight (cuDNN on CUDA); the dispatcher's baseline;
- ``"triton-csr"``, ``"triton-kernel"`` (:mod:`.sparse_kernels`): the Triton sparse kernels (``kernels.SparseConv2d``)
  in the unstructured and the kernel-granular packing;
- ``"triton-bsr"``, ``"triton-bsr32x16"`` (:mod:`.bsr`): the block-sparse Triton tensor-core kernels
  (``kernels.BsrConv2d``) in 16x16 / 32x16 channel blocks per tap; exact for any mask, timed by "auto" only on layers
  with empty blocks (block tickets);
- ``"reference"`` (:mod:`.sparse_kernels`): the same ``SparseConv2d`` computed by its pure-PyTorch reference (testing,
  CPU; never dispatched).

**A new backend** (a tensor-core kernel, a vendor library, ...) is one new module in this package that subclasses
:class:`Backend` and calls :func:`register` at import, plus its import below and its tests; ``sparsify``, the
dispatcher, ``fit`` and the benchmarks then offer it by name. Backends may import ``lipdeploy.kernels`` and core;
core (networks, masks, ticket, compaction) never imports backends.
"""

from __future__ import annotations

from . import bsr, dense, sparse_kernels  # noqa: F401  (register the built-in backends)
from .registry import AUTO, BACKENDS, Backend, register, resolve
from .sparsify import sparse_layers, sparsify

__all__ = ["AUTO", "BACKENDS", "Backend", "register", "resolve", "sparse_layers", "sparsify"]

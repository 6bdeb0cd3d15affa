"""The harness's latency runners, named in one table: each is a runtime on a device running a conv backend.

A latency row's ``runner`` field is a runner's name (``torch-cpu``, ``triton-cuda`` ...): a *runtime + device*
pair, because the same conv backend times differently under PyTorch and ONNX Runtime, or on CPU and GPU. What runs
each convolution is the runner's ``conv_backend``, named in the vocabulary of :mod:`lipdeploy.backends`
(``dense``: a dense convolution, pruned weights stored as zeros or removed by compaction; ``triton-csr``: the Triton
sparse kernels on the unstructured CSR packing). The names are those of every committed results folder, so all rows
share report columns.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Literal

import torch


def _installed(*modules: str) -> bool:
    """Whether every module can be imported here (looked up, not imported: Triton's import takes seconds)."""
    return all(importlib.util.find_spec(m) is not None for m in modules)


@dataclass(frozen=True)
class LatencyRunner:
    """How one latency job runs a method's network.

    ``runtime``: what executes the graph (``torch`` or ``onnxruntime``); ``device``: ``cpu`` or ``cuda``;
    ``network``: which form of the ticket runs (``masked``: the reference network with zeros, as a user fits it;
    ``compacted``: :func:`lipdeploy.compaction.compact`; ``exported``: the ONNX file of
    :func:`lipdeploy.export.onnx_export.export_onnx`); ``conv_backend``: what runs each convolution, a
    :mod:`lipdeploy.backends` name; ``fitting_step``: whether an Adam step is timed besides the forward pass;
    ``sparse_only``: skipped for networks without pruned weights (nothing sparse to run).
    """

    name: str
    runtime: Literal["torch", "onnxruntime"]
    device: Literal["cpu", "cuda"]
    network: Literal["masked", "compacted", "exported"]
    conv_backend: str
    needs: tuple[str, ...] = ()  # importable modules it runs on
    fitting_step: bool = True
    sparse_only: bool = False

    def available(self) -> bool:
        """Whether this machine can run it: its device is present and its packages are installed."""
        if self.device == "cuda" and not torch.cuda.is_available():
            return False
        return _installed(*self.needs)


# In the order the plan schedules them (and the report's columns come out sorted by name anyway).
LATENCY_RUNNERS: dict[str, LatencyRunner] = {
    r.name: r
    for r in (
        LatencyRunner("torch-cpu", "torch", "cpu", "masked", "dense"),
        LatencyRunner("torch-cpu-compact", "torch", "cpu", "compacted", "dense", fitting_step=False),
        # ONNX Runtime densifies sparse initializers at load: the dense-weight export is what it runs either way
        LatencyRunner("onnxruntime-cpu", "onnxruntime", "cpu", "exported", "dense", ("onnxruntime",), False),
        LatencyRunner("torch-cuda", "torch", "cuda", "masked", "dense"),
        LatencyRunner("triton-cuda", "torch", "cuda", "compacted", "triton-csr", ("triton",), sparse_only=True),
    )
}


def runner(name: str) -> LatencyRunner:
    """The runner called ``name``; ``ValueError`` for an unknown one."""
    try:
        return LATENCY_RUNNERS[name]
    except KeyError:
        raise ValueError(f"unknown latency runner {name!r} (known: {', '.join(LATENCY_RUNNERS)})") from None


def available_runners() -> list[str]:
    """Names of the latency runners this machine can run, in table order."""
    return [r.name for r in LATENCY_RUNNERS.values() if r.available()]

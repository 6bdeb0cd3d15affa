"""Latency per latency runner (forward and one Adam fitting step) and stored sizes (dense and sparse ONNX files).

The runners are named in :data:`lipdeploy.bench.harness.runners.LATENCY_RUNNERS`; how each one runs:

- ``torch-cpu``: the masked network as a user fits it (dense convolutions; pruned weights are zeros);
- ``torch-cpu-compact``: :func:`lipdeploy.compaction.compact` (dead channels removed; exact), forward only;
- ``onnxruntime-cpu``: the ticket exported by :func:`lipdeploy.export.onnx_export.export_onnx` (dense weights: ONNX
  Runtime densifies sparse initializers at load anyway), forward only, with as many threads as PyTorch uses;
- ``torch-cuda``: the masked network on the GPU (PyTorch defaults, TF32 convs allowed), ``triton.testing.do_bench``;
- ``triton-cuda``: :func:`lipdeploy.backends.sparsify` with the ``triton-csr`` backend.

Forward passes run in DIP mode (training-mode BatchNorm: per-image statistics) under ``torch.no_grad``.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lipdeploy.backends import sparsify
from lipdeploy.compaction import compact
from lipdeploy.fit_result import PrunedGradients
from lipdeploy.networks import make_input
from lipdeploy.ticket import Ticket

from ..timing import device_ms
from .runners import runner


def timed_ms(fn, warmup: int, repeats: int) -> dict[str, float]:
    """Median wall time of ``fn`` in ms after ``warmup`` untimed calls (the same loop as
    :func:`lipdeploy.bench.timing.median_ms`, so medians compare with earlier rows), with the spread of the timed
    calls: ``min``, quartiles ``q1``/``q3`` and ``max``. A wide spread (or a load average above the core count, which
    the rows record) says the machine was busy while measuring."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    q = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else [times[0]] * 3
    return {"median": statistics.median(times), "min": min(times), "q1": q[0], "q3": q[2], "max": max(times)}


def _timed(out: dict[str, Any], metric: str, fn, warmup: int, repeats: int) -> None:
    """``out[metric]`` = the median ms, ``out["_spread"][metric]`` = its min / q1 / q3 / max."""
    stats = timed_ms(fn, warmup, repeats)
    out[metric] = stats.pop("median")
    out.setdefault("_spread", {})[metric] = stats


def _step_fn(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, pruned: PrunedGradients | None = None):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
    pruned = pruned or PrunedGradients()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.mse_loss(model(x), target).backward()
        pruned()  # the fit's gradient masking: pruned weights stay zero
        opt.step()

    return step


def _fwd_fn(model: torch.nn.Module, x: torch.Tensor):
    def fwd() -> None:
        with torch.no_grad():
            model(x)

    return fwd


def measure(
    t: Ticket, runner_name: str, h: int, w: int, warmup: int, repeats: int, onnx_dir: Path, name: str
) -> dict[str, Any]:
    """{"forward_ms": ..., "step_ms": ...} (medians) for ``t`` on latency runner ``runner_name`` at an ``h`` x ``w``
    output (no ``step_ms`` for runners that time the forward pass only)."""
    run = runner(runner_name)
    x = make_input(t.arch, h, w)
    target = torch.rand((1, 3, h, w), generator=torch.Generator().manual_seed(0))
    if run.device == "cuda":
        return _measure_cuda(t, run.conv_backend, x, target, warmup, repeats)
    if run.runtime == "onnxruntime":
        # deferred: ONNX Runtime is imported only by the runs that time it (its import costs start-up time)
        from lipdeploy.export.onnx_export import INPUT_NAME, ort_session

        path = _export(t, onnx_dir, name, "dense")
        sess = ort_session(path, threads=torch.get_num_threads())
        feeds = {INPUT_NAME: x.numpy()}
        res: dict[str, Any] = {}
        _timed(res, "forward_ms", lambda: sess.run(None, feeds), warmup, repeats)
        return res
    res = {}
    if run.network == "compacted":
        model = compact(t, "init", "image")
        _timed(res, "forward_ms", _fwd_fn(model, x), warmup, repeats)
        return res
    model = t.build("init")
    params = dict(model.named_parameters())
    pruned = PrunedGradients({params[n]: m for n, m in t.masks.items()})
    _timed(res, "forward_ms", _fwd_fn(model, x), warmup, repeats)
    _timed(res, "step_ms", _step_fn(model, x, target, pruned), warmup, repeats)
    return res


def _measure_cuda(t: Ticket, conv_backend: str, x, target, warmup: int, repeats: int) -> dict[str, Any]:
    dev = torch.device("cuda")
    model = t.build("init").to(dev)
    if conv_backend != "dense":
        model = sparsify(model, backend=conv_backend)
    x, target = x.to(dev), target.to(dev)
    fwd, step = _fwd_fn(model, x), _step_fn(model, x, target)
    # do_bench's budgets are milliseconds: the preset's counts become a floor of 25 ms warm-up, 100 ms of repeats
    return {
        "forward_ms": device_ms(fwd, dev, rep_ms=max(100, repeats), warmup_ms=max(25, warmup)),
        "step_ms": device_ms(step, dev, rep_ms=max(100, repeats), warmup_ms=max(25, warmup)),
    }


def _export(t: Ticket, onnx_dir: Path, name: str, fmt: str) -> Path:
    """Export once per (method, format); later calls reuse the file."""
    from lipdeploy.export.onnx_export import export_onnx  # deferred: only jobs that export pay for onnx's import

    path = Path(onnx_dir) / f"{name}-{fmt}.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        export_onnx(t, path, weights="init", bn="image", weights_format=fmt, force=True)
    return path


def onnx_sizes(t: Ticket, onnx_dir: Path, name: str) -> dict[str, int]:
    """Bytes of the dense- and sparse-weight ONNX files of ``t`` (empty when the exporter is not installed)."""
    try:
        import lipdeploy.export.onnx_export  # noqa: F401
    except ImportError:
        return {}
    out = {}
    for fmt in ("dense", "sparse"):
        out[fmt] = _export(t, onnx_dir, name, fmt).stat().st_size
    return out

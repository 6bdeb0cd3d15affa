"""Latency per backend (forward and one Adam fitting step) and stored sizes (dense and sparse ONNX files).

Backends:
- ``torch-cpu``: the masked network as a user fits it (dense convolutions; pruned weights are zeros);
- ``torch-cpu-compact``: :func:`lipdeploy.compact.compact` (dead channels removed; exact), forward only;
- ``onnxruntime-cpu``: the ticket exported by :func:`lipdeploy.export.onnx_export.export_onnx` (dense weights: ONNX
  Runtime densifies sparse initializers at load anyway), forward only, with as many threads as PyTorch uses;
- ``torch-cuda``: the masked network on the GPU (PyTorch defaults, TF32 convs allowed), ``triton.testing.do_bench``;
- ``triton-cuda``: :func:`lipdeploy.sparse.sparsify` with the Triton backend.

Forward passes run in DIP mode (training-mode BatchNorm: per-image statistics) under ``torch.no_grad``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lipdeploy.masks import freeze_pruned
from lipdeploy.networks import make_input
from lipdeploy.ticket import Ticket


def _step_fn(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.mse_loss(model(x), target).backward()
        opt.step()

    return step


def _fwd_fn(model: torch.nn.Module, x: torch.Tensor):
    def fwd() -> None:
        with torch.no_grad():
            model(x)

    return fwd


def measure(
    t: Ticket, backend: str, h: int, w: int, warmup: int, repeats: int, onnx_dir: Path, name: str
) -> dict[str, Any]:
    """{"forward_ms": ..., "step_ms": ...} (medians) for ``t`` on ``backend`` at an ``h`` x ``w`` output."""
    from .timing import median_ms

    x = make_input(t.arch, h, w)
    target = torch.rand((1, 3, h, w), generator=torch.Generator().manual_seed(0))
    if backend == "torch-cpu":
        model = t.build("init")
        hooks = freeze_pruned(model, {n: m for n, m in t.masks.items() if not bool(m.all())})
        res = {
            "forward_ms": median_ms(_fwd_fn(model, x), warmup, repeats),
            "step_ms": median_ms(_step_fn(model, x, target), warmup, repeats),
        }
        for hk in hooks:
            hk.remove()
        return res
    if backend == "torch-cpu-compact":
        from lipdeploy.compact import compact

        model = compact(t, "init", "image")
        return {"forward_ms": median_ms(_fwd_fn(model, x), warmup, repeats)}
    if backend == "onnxruntime-cpu":
        from lipdeploy.export.onnx_export import INPUT_NAME, ort_session

        path = _export(t, onnx_dir, name, "dense")
        sess = ort_session(path, threads=torch.get_num_threads())
        feeds = {INPUT_NAME: x.numpy()}
        return {"forward_ms": median_ms(lambda: sess.run(None, feeds), warmup, repeats)}
    if backend in ("torch-cuda", "triton-cuda"):
        return _measure_cuda(t, backend, x, target, warmup, repeats)
    raise ValueError(f"unknown backend {backend!r}")


def _measure_cuda(t: Ticket, backend: str, x, target, warmup: int, repeats: int) -> dict[str, Any]:
    from .timing import device_ms

    dev = torch.device("cuda")
    model = t.build("init").to(dev)
    if backend == "triton-cuda":
        from lipdeploy.sparse import sparsify

        model = sparsify(model, backend="triton")
    x, target = x.to(dev), target.to(dev)
    fwd, step = _fwd_fn(model, x), _step_fn(model, x, target)
    # do_bench's budgets are milliseconds: the preset's counts become a floor of 25 ms warm-up, 100 ms of repeats
    return {
        "forward_ms": device_ms(fwd, dev, rep_ms=max(100, repeats), warmup_ms=max(25, warmup)),
        "step_ms": device_ms(step, dev, rep_ms=max(100, repeats), warmup_ms=max(25, warmup)),
    }


def _export(t: Ticket, onnx_dir: Path, name: str, fmt: str) -> Path:
    """Export once per (method, format); later calls reuse the file."""
    from lipdeploy.export.onnx_export import export_onnx

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

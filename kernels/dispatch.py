"""Per-layer backend choice: time the sparse and the dense path once on CUDA, cache the verdict as JSON."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

__all__ = ["choose_backend", "cache_path"]

_MEMO: dict[str, str] = {}


def cache_path() -> Path:
    root = os.environ.get("LIPDEPLOY_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "lipdeploy")
    return Path(root) / "backend_choice.json"


def _load() -> dict[str, str]:
    try:
        return json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}


def choose_backend(
    layer_key: str,
    run_sparse: Callable[[], object],
    run_dense: Callable[[], object],
    margin: float = 1.05,
) -> str:
    """Return "sparse" if ``run_sparse`` beats ``run_dense`` by ``margin`` on this GPU, else "dense".

    ``layer_key`` should identify the layer shape, sparsity pattern and input size (e.g.
    ``"128x128x3x3-s1-256-d0.10"``); the key is prefixed with the GPU name.
    Without CUDA (or triton) this returns "dense" without timing anything.
    """
    if not torch.cuda.is_available():
        return "dense"
    try:
        from triton.testing import do_bench
    except ImportError:
        return "dense"
    key = f"{torch.cuda.get_device_name()}|{layer_key}"
    if key in _MEMO:
        return _MEMO[key]
    cache = _load()
    if key not in cache:
        t_sparse = do_bench(run_sparse)
        t_dense = do_bench(run_dense)
        cache[key] = "sparse" if t_sparse * margin < t_dense else "dense"
        path = cache_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({**_load(), key: cache[key]}, indent=1, sort_keys=True))
            tmp.replace(path)
        except OSError:
            pass
    _MEMO[key] = cache[key]
    return cache[key]

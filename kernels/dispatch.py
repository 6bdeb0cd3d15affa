"""Per-layer execution choice: time every candidate once on this device, keep the fastest, cache the verdict as JSON.

A *candidate* is one way to run a layer: ``"dense"`` (cuDNN on the compacted dense weight, the baseline) or one backend
of ``lipdeploy.backends.BACKENDS`` with one of its kernel configs (the sparse kernels name theirs
``"<packing format>:<KernelConfig tag>"``); the caller (``lipdeploy.backends.sparsify``) builds them.
:func:`choose_fastest` times them all with the same timer and returns the winner's name; a non-baseline candidate must
beat the baseline by ``margin`` (timing noise must not turn a tie into a slower layer). Verdicts and every candidate's
time are cached in ``$LIPDEPLOY_CACHE/backend_choice.json`` (default ``~/.cache/lipdeploy``), keyed by the device name
and the caller's layer key, so tuning a network costs once per GPU, layer shape, input size and sparsity pattern
-- and once more when a candidate appears that the cached verdict never timed (a backend added since).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from lipdeploy.fileio import atomic_write_text

__all__ = ["choose_fastest", "cache_path", "cached_times", "Timer"]

Timer = Callable[[Callable[[], object]], float]
"""Median milliseconds of one call of the given function."""

# do_bench budget per candidate while tuning: ~0.05-1 ms layers get 10-200 timed calls in 20 ms, enough for a stable
# median; a network's ~25 convs x ~7 candidates then tune in a few seconds (plus Triton's one-off compiles).
TUNE_WARMUP_MS = 5
TUNE_REP_MS = 20


def cache_path() -> Path:
    root = os.environ.get("LIPDEPLOY_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "lipdeploy")
    return Path(root) / "backend_choice.json"


def _load() -> dict:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _store(key: str, entry: dict) -> None:
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # atomic: a concurrent reader sees the old or the new file, never half of one
        atomic_write_text(path, json.dumps({**_load(), key: entry}, indent=1, sort_keys=True))
    except OSError:
        pass  # a read-only home only costs re-timing next time


def _device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def _cuda_timer() -> Timer | None:
    if not torch.cuda.is_available():
        return None
    try:
        from triton.testing import do_bench  # optional (the [triton] extra): without it nothing is timed
    except ImportError:
        return None
    return lambda fn: float(do_bench(fn, warmup=TUNE_WARMUP_MS, rep=TUNE_REP_MS, return_mode="median"))


def choose_fastest(
    layer_key: str,
    candidates: Mapping[str, Callable[[], object]],
    baseline: str = "dense",
    margin: float = 1.05,
    timer: Timer | None = None,
) -> str:
    """Name of the fastest of ``candidates`` (name -> zero-argument function running the layer once).

    ``baseline`` wins unless another candidate is faster by ``margin`` (``t * margin < t_baseline``). ``timer`` defaults
    to ``triton.testing.do_bench`` (median) on CUDA; without CUDA (or triton) and without an explicit ``timer`` nothing
    is timed and the baseline is returned. A cached verdict is reused only if the cached winner is still among the
    candidates, the baseline is unchanged and every current candidate was timed for it (:func:`_reusable`: a layer
    tuned before a backend existed is timed again once that backend is offered); otherwise everything is timed again.
    """
    if baseline not in candidates:
        raise ValueError(f"baseline {baseline!r} is not among the candidates {sorted(candidates)}")
    timer = timer or _cuda_timer()
    if timer is None:
        return baseline
    key = f"{_device_name()}|{layer_key}"
    entry = _load().get(key)
    if not _reusable(entry, candidates, baseline):
        ms = {name: timer(fn) for name, fn in candidates.items()}
        best = min((n for n in ms if n != baseline), key=ms.__getitem__, default=baseline)
        choice = best if ms[best] * margin < ms[baseline] else baseline
        entry = {"choice": choice, "baseline": baseline, "margin": margin, "candidates": sorted(ms), "ms": ms}
        _store(key, entry)
    return entry["choice"]


def _reusable(entry: object, candidates: Mapping[str, object], baseline: str) -> bool:
    """Whether a cached ``entry`` still answers for ``candidates``: same baseline, its winner still offered, and no
    candidate missing from the entry's ``"candidates"`` (the names it timed); anything else is timed again."""
    if not (isinstance(entry, dict) and entry.get("choice") in candidates and entry.get("baseline") == baseline):
        return False
    timed = entry.get("candidates")
    return isinstance(timed, list) and set(candidates) <= set(timed)


def cached_times(layer_key: str) -> dict[str, float]:
    """Every candidate's measured ms for ``layer_key`` on this device (empty if it was never tuned here)."""
    entry = _load().get(f"{_device_name()}|{layer_key}")
    return dict(entry.get("ms", {})) if isinstance(entry, dict) else {}

"""Median timings shared by the benchmarks: CUDA events through ``triton.testing.do_bench``, a host clock on CPU.

The GPU scripts (``gpu.layers``, ``gpu.network``) also run on CPU (``--device cpu``, Triton through its interpreter)
so that CI smoke-tests them; CPU figures from those runs are not performance numbers.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch


def median_ms(fn: Callable[[], Any], warmup: int, repeats: int, sync: Callable[[], None] | None = None) -> float:
    """Median wall time of ``fn`` in ms after ``warmup`` untimed calls (``sync`` after each call, if given)."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def device_ms(
    fn: Callable[[], Any],
    device: torch.device,
    rep_ms: float = 100.0,
    warmup_ms: float = 25.0,
    grad_to_none: Sequence[torch.Tensor] | None = None,
) -> float:
    """Median ms of ``fn`` on ``device``: ``do_bench`` (events, L2 flushed between runs) on CUDA; on CPU a single
    timed call (the CPU path exists for smoke tests through Triton's interpreter, not for numbers)."""
    if device.type == "cuda":
        from triton.testing import do_bench  # optional (the [triton] extra): only CUDA timings use it

        return float(
            do_bench(fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=list(grad_to_none or []), return_mode="median")
        )

    def call() -> None:
        for t in grad_to_none or ():
            t.grad = None
        fn()

    return median_ms(call, warmup=0, repeats=1)

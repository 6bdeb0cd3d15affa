"""The executor interface the harness runs jobs through (:mod:`.executor` holds the implementations: serial, Ray).

Its own module so that :class:`~.bench.Bench` can name the interface while the executors import ``Bench``: no cycle.
"""

from __future__ import annotations

from typing import Any

from .jobs import Job


class Executor:
    """Who runs the unfinished jobs of a :class:`Bench` run. ``in_process``: Bench runs them itself, one after the
    other in this process (the serial loop, with its progress bar); otherwise :meth:`run` does."""

    name = "executor"
    in_process = False

    def run(self, bench: Any, jobs: list[Job], stats: Any) -> None:
        """Run ``jobs`` (unfinished, in plan order), record each finished one in ``bench.store``, and count into
        ``stats`` (ran, failed, fits)."""
        raise NotImplementedError

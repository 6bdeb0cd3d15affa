"""The resumable benchmark harness behind ``lipdeploy bench``: plan work units (jobs), run this shard's share,
append rows, resume, rebuild the report.

Why jobs and not one loop: the cpu and paper presets take hours; a crash, a pre-empted cluster node or a laptop lid
must cost one job, not the run. The parts:

- :mod:`.presets`: every setting of a run (``ci``, ``cpu``, ``paper``);
- :mod:`.jobs`: the methods compared and the ordered, shardable job plan;
- :mod:`.runners`: the latency runners (runtime, device, conv backend), in one table;
- :mod:`.workspace`: images and every method's network (tickets found on demand);
- :mod:`.engine`: the fitting engine as the benchmark uses it (fits, IMP, deep decoders);
- :mod:`.measure`: the rows of each job kind; :mod:`.latency` and :mod:`.memprobe` take the measurements;
- :mod:`.gan` and :mod:`.gan_measure`: the ``gan`` preset's jobs (generator priors), run by the same Bench;
- :mod:`.bench`: :class:`Bench`, which runs and records the jobs, then rebuilds the report
  (:mod:`lipdeploy.bench.report`, which reads the folder through :mod:`lipdeploy.bench.rows` only).
"""

from ..rows import RowStore
from .bench import Bench, RunStats, run_environment
from .jobs import Job, Method, methods_for, parse_shard, plan, shard_jobs
from .presets import PRESETS, Preset, get_preset, rounds_for
from .runners import LATENCY_RUNNERS, LatencyRunner, available_runners

__all__ = [
    "LATENCY_RUNNERS",
    "PRESETS",
    "Bench",
    "Job",
    "LatencyRunner",
    "Method",
    "Preset",
    "RowStore",
    "RunStats",
    "available_runners",
    "get_preset",
    "methods_for",
    "parse_shard",
    "plan",
    "rounds_for",
    "run_environment",
    "shard_jobs",
]

"""Benchmarks (importable as lipdeploy.bench), in three visibly separate parts:

- ``harness/``: the resumable, shardable sweep behind ``lipdeploy bench`` (presets, job plan, latency runners,
  measurements); ``report.py`` rebuilds its report from a results folder with ``derived.py`` (the folder's rows and
  the rows derived from them), ``verdicts.py`` (paired comparisons, claims, noise floor), ``tables.py``,
  ``frontier.py`` (structured tickets), ``per_task.py`` (multi-task presets), ``plots.py``, ``formatting.py`` and
  ``paper_claims.py``; ``rows.py`` is the folder layout the harness and the report share (the report never imports
  the harness);
- ``cpu/`` and ``gpu/``: standalone scripts (``python -m lipdeploy.bench.cpu.fit_step``,
  ``python -m lipdeploy.bench.gpu.layers`` ...), built on ``script.py`` (common options, environment record, results
  file rewritten after every row); ``timing.py`` holds the timers both the harness and the scripts use;
- ``results/``: committed measurements (read-only inputs to RESULTS.md; not packaged in the wheel).
"""

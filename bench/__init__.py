"""Benchmarks (importable as lipdeploy.bench), in three visibly separate parts:

- ``harness/``: the resumable, shardable sweep behind ``lipdeploy bench`` (presets, job plan, runner, measurements);
  ``report.py`` rebuilds its report from a results folder, and ``rows.py`` is the folder layout both share (the report
  never imports the harness);
- ``cpu/`` and ``gpu/``: standalone scripts (``python -m lipdeploy.bench.cpu.fit_step``,
  ``python -m lipdeploy.bench.gpu.layers`` ...), built on ``script.py`` (common options, environment record, results
  file rewritten after every row); ``timing.py`` holds the timers both the harness and the scripts use;
- ``results/``: committed measurements (read-only inputs to RESULTS.md; not packaged in the wheel).
"""

"""Benchmark harness (importable as lipdeploy.bench)."""

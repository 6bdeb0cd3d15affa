"""Standalone CPU benchmarks.

- :mod:`.fit_step`: lipdeploy's fitting step vs a plain PyTorch DIP loop (``python -m lipdeploy.bench.cpu.fit_step``);
- :mod:`.edge_latency`: exported tickets in ONNX Runtime on 2 threads (``python -m lipdeploy.bench.cpu.edge_latency``).
"""

"""Standalone GPU benchmarks (run one at a time, or all through ``bash bench/gpu/session.sh``).

- :mod:`.layers`: Triton sparse conv vs dense cuDNN per layer shape (``python -m lipdeploy.bench.gpu.layers``);
- :mod:`.network`: the whole DIP network, dense vs masked vs compacted vs sparse (``... .gpu.network``);
- :mod:`.verdict`: the GPU targets checked against a session's JSON (no GPU needed);
- :mod:`.kernel_sass`: the kernels' sm_90 SASS read offline (no GPU needed).

Every script also runs on CPU (``--device cpu``, Triton's interpreter) so that CI smoke-tests it; ``GPU_NOTES.md``
says what to expect from a first GPU run.
"""

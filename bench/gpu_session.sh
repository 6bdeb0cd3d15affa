#!/usr/bin/env bash
# Everything issue 4 needs from a GPU, in one call (the device tool lends a card rarely and briefly):
#   bash bench/gpu_session.sh            # from the repository root on the CUDA machine
# 1. installs lipdeploy into the machine's own Python without touching its torch/triton (offline, no deps);
# 2. runs the GPU-marked tests (kernels compiled for the real card, sparse vs reference, fitting on CUDA);
# 3. the layer benchmark and the whole-network benchmark (forward + fitting step), JSON named with the card.
# Results go to ${OUT:-bench/results}; logs to the same folder. Each step runs even if an earlier one failed.
set -u
OUT=${OUT:-bench/results}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
$PY -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/gpu_install.log" 2>&1 || tail -5 "$OUT/gpu_install.log"
CARD=$($PY -c "import torch; print(torch.cuda.get_device_name().replace('NVIDIA ', '').replace(' ', '_'))")
echo "card: $CARD"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv >"$OUT/gpu_smi_$CARD.txt" 2>&1
$PY -m pytest -m gpu -q tests/ >"$OUT/gpu_tests_$CARD.log" 2>&1
echo "gpu tests: $(tail -1 "$OUT/gpu_tests_$CARD.log")"
$PY -m lipdeploy.bench.gpu_layers -o "$OUT/gpu_layers_$CARD.json" >"$OUT/gpu_layers_$CARD.log" 2>&1
echo "gpu_layers rc=$?"
$PY -m lipdeploy.bench.gpu_network --sizes 256 --fit-steps 200 -o "$OUT/gpu_network_$CARD.json" \
  >"$OUT/gpu_network_$CARD.log" 2>&1
echo "gpu_network rc=$?"
# the short tables last: the device tool's reply carries the end of the output
grep -E "conv3x3_128_s1 +256 " "$OUT/gpu_layers_$CARD.log" | grep -E "dense|0.90|0.50" | tail -40
tail -25 "$OUT/gpu_network_$CARD.log"

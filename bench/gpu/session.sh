#!/usr/bin/env bash
# Everything the GPU verdict (bench/gpu/verdict.py) needs from a GPU, in one call (the device tool lends a card rarely and briefly):
#   bash bench/gpu/session.sh            # from the repository root on the CUDA machine
# Steps, most important first, each under a time cap so one slow step cannot starve the rest of the call
# (BUDGET seconds in all, default 540: the device tool's 600 s per command minus transfers):
# 1. install lipdeploy into the machine's own Python without touching its torch/triton (offline, no deps);
# 2. the target layer (128 -> 128 3x3 at 256x256, all sparsities, both masks and formats): target 1's 2.5x;
# 3. the GPU-marked tests (kernels compiled for the real card, sparse vs reference, fitting on CUDA; the
#    torch.compile test is left out: minutes of compiling);
# 4. the same layer on block tickets (gpu.layers --blocks: 256, 512, 64 px at 90/50/75/0% block sparsity; dense TF32,
#    dense fp32, csr, bsr16, bsr32; forward and forward+backward): target 4's 2.5x;
# 5. the engine's fitting step, eager vs captured (gpu.network --fit-step, 256 and 512 px, dense and bsr on 16x16
#    block tickets at 80/50/90%): target 5's 2x;
# 6. the whole network at 256x256: forward + fitting step, every variant incl. the tuned dispatcher (target 2's 2x);
# 7. the kernel-config sweep on the target layer (gpu.layers --tune: what to tune the defaults to);
# 8. every other layer shape and size.
# Results (JSON + logs named with the card, and the dispatcher's cache of measured verdicts) go to
# ${RES:-bench/results/gpu_session}; where $OUT is set (the device tool's return folder, at most 8 files) they are also
# packed into one $OUT/gpu_session_<card>.tar.gz. Each step runs even if an earlier one failed.
# SMOKE=1 runs the same steps on CPU (Triton interpreter, 4-channel layers, 16x16 / 64x64 images, few cases, no
# install): CI uses it to test this script's plumbing (files, caps, verdict, packing); its numbers mean nothing.
set -u
RES=${RES:-bench/results/gpu_session}
PY=${PYTHON:-python3}
BUDGET=${BUDGET:-540}
SIZE=256      # layer benchmarks' image size
NET_SIZE=256  # the network's (a multiple of 32)
SMOKE=${SMOKE:-0}
DEV=()     # extra flags for every benchmark command
FEW=()     # narrows the network and the all-layers steps
LAYERS=()  # narrows the all-layers step
NET=()     # narrows the network step
BSR_SIZES=(256 512 64)  # block-ticket layer rows, most important first (rows are saved as they come)
FIT_SIZES=(256 512)     # the fitting step's
BLK=()     # narrows the block-ticket layer step
# the fitting step's: dense and the block ticket on the bsr kernels (targets 5-6; no unstructured rows, which no
# target reads, so that both sizes fit the cap), sparsities most important first
FIT=(--fit-iters 100 --fit-variants bsr --sparsities 0.8 0.5 0.9)
if [ "$SMOKE" = 1 ]; then
  SIZE=16
  NET_SIZE=64
  BSR_SIZES=(16)
  FIT_SIZES=(8)  # with --levels 1: the interpreter pays per kernel launch, the 5-scale network takes minutes
  DEV=(--device cpu --channels 4)
  FEW=(--masks random --sparsities 0.9 0.5)
  BLK=(--block-sparsities 0.9 0.5)
  FIT=(--fit-iters 2 --levels 1 --fit-variants bsr --sparsities 0.8)
  NET=(--variants masked compact auto)  # the all-Triton variant takes minutes in the interpreter (tested elsewhere)
  LAYERS=(--layers conv1x1_128 --sizes 8 --formats csr)
  export TRITON_INTERPRET=1
fi
mkdir -p "$RES"
export LIPDEPLOY_CACHE="$RES"  # backend_choice.json: every layer's measured candidates

# run a step with at most $1 seconds, and never past the budget
step() {
  local cap=$1 name=$2
  shift 2
  local left=$((BUDGET - SECONDS))
  local t=$((cap < left ? cap : left))
  if ((t < 10)); then
    echo "$name: skipped (budget spent)"
    return
  fi
  # SIGINT first: pytest then still prints its failures (the H100 session of 2026-11-27 lost them to SIGTERM: the
  # log held only "FFF."), and the benchmark scripts have saved their rows as they came
  timeout -s INT -k 15 "$t" "$@" >"$RES/${name}_$CARD.log" 2>&1
  echo "$name: rc=$? after ${SECONDS}s (cap ${t}s)"
}

if [ "$SMOKE" = 1 ]; then
  CARD=cpu-smoke
else
  $PY -m pip install -q --no-deps --no-build-isolation -e . >"$RES/gpu_install.log" 2>&1 ||
    tail -5 "$RES/gpu_install.log"
  CARD=$($PY -c "import torch; print(torch.cuda.get_device_name().replace('NVIDIA ', '').replace(' ', '_'))")
fi
echo "card: $CARD"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv \
    >"$RES/gpu_smi_$CARD.txt" 2>&1
fi

step 75 gpu_target $PY -m lipdeploy.bench.gpu.layers --layers conv3x3_128_s1 --sizes $SIZE \
  ${DEV[@]+"${DEV[@]}"} ${FEW[@]+"${FEW[@]}"} -o "$RES/gpu_target_$CARD.json"
# the GPU tests second: on 2026-11-27 9 of 22 failed on an H100 and the step's cap cut off their tracebacks (see
# GPU_NOTES.md); the torch.compile test is left out (minutes of compiling, it ate the rest of that step)
step 100 gpu_tests $PY -m pytest -m gpu -q -p no:cacheprovider --tb=short -rfE tests/ -k "not compiled"
# targets 4-6: block tickets on the tensor-core kernels (compiles 2 x 3 bsr kernels per size), then the fitting step
step 120 gpu_bsr $PY -m lipdeploy.bench.gpu.layers --blocks --layers conv3x3_128_s1 --sizes "${BSR_SIZES[@]}" \
  ${DEV[@]+"${DEV[@]}"} ${BLK[@]+"${BLK[@]}"} -o "$RES/gpu_bsr_$CARD.json"
step 120 gpu_fitstep $PY -m lipdeploy.bench.gpu.network --fit-step --sizes "${FIT_SIZES[@]}" \
  ${DEV[@]+"${DEV[@]}"} "${FIT[@]}" -o "$RES/gpu_fitstep_$CARD.json"
# sparsities in order of importance (the 90% target, the 50% never-slower check, then the rest): rows are saved
# as they come, so a step cut off by its cap still returns the first ones
step 200 gpu_network $PY -m lipdeploy.bench.gpu.network --sizes $NET_SIZE --fit-steps 200 \
  --sparsities 0.9 0.5 0.98 0.8 0.95 ${DEV[@]+"${DEV[@]}"} ${FEW[@]+"${FEW[@]}"} ${NET[@]+"${NET[@]}"} \
  -o "$RES/gpu_network_$CARD.json"
step 90 gpu_tune $PY -m lipdeploy.bench.gpu.layers --layers conv3x3_128_s1 --sizes $SIZE --sparsities 0.5 0.9 \
  --masks imp --formats csr --tune ${DEV[@]+"${DEV[@]}"} -o "$RES/gpu_tune_$CARD.json"
step 300 gpu_layers $PY -m lipdeploy.bench.gpu.layers ${DEV[@]+"${DEV[@]}"} ${FEW[@]+"${FEW[@]}"} \
  ${LAYERS[@]+"${LAYERS[@]}"} -o "$RES/gpu_layers_$CARD.json"

$PY -m lipdeploy.bench.gpu.verdict "$RES" >"$RES/gpu_verdict_$CARD.txt" 2>&1
if [ -n "${OUT:-}" ]; then tar czf "$OUT/gpu_session_$CARD.tar.gz" -C "$RES" . && echo "packed $RES"; fi

# the short tables last: the device tool's reply carries the end of the output
echo "gpu tests: $(tail -1 "$RES/gpu_tests_$CARD.log")"
grep -E "conv3x3_128_s1 +$SIZE " "$RES/gpu_target_$CARD.log" | grep -E "dense|0.90|0.50" | tail -24
grep -E "conv3x3_128_s1 +${BSR_SIZES[0]} " "$RES/gpu_bsr_$CARD.log" | grep -E "fwd " | grep -E "dense|0.90|0.50" | tail -12
grep -E " step " "$RES/gpu_fitstep_$CARD.log" | tail -12
grep -A 12 "best kernel config" "$RES/gpu_tune_$CARD.log"
tail -25 "$RES/gpu_network_$CARD.log"
cat "$RES/gpu_verdict_$CARD.txt"

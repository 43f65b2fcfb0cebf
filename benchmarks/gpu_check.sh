#!/usr/bin/env bash
# The one prepared GPU run (about 6 minutes on an H200): install, build facts, the triton tests compiled for the GPU
# (the interpreter matrix plus the `gpu`-marked full-size tests), the kernel benchmark. Results go to the folder
# given as $1 (default: $OUT, else ./gpu-results): build_info.json, gpu_tests.log, kernels.jsonl, bench.log,
# capture.jsonl, capture.log.
#   device run:  bash benchmarks/gpu_check.sh "$OUT"
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu-results}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=python3

echo "== install"
if ! $py -m pip install --no-deps --no-build-isolation -e . >"$out/install.log" 2>&1; then
  tail -40 "$out/install.log"; exit 1
fi
$py -m oprd_kernels >"$out/build_info.json" 2>&1; head -c 600 "$out/build_info.json"; echo
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.used --format=csv >"$out/gpu.csv" 2>&1

echo "== tests (compiled kernels, then full sizes)"
timeout 200 $py -m pytest -q -x -p no:cacheprovider tests/test_triton_alignment.py tests/test_triton_bridge.py \
  tests/test_validation.py 2>&1 | tee "$out/gpu_tests.log" | tail -8

echo "== kernel benchmark"
timeout 270 $py benchmarks/bench_kernels.py --device cuda --time-budget 150 --out "$out/kernels.jsonl" 2>&1 \
  | grep -v -E "^USDT|CPUAllocator" | tee "$out/bench.log" | tail -24

echo "== capture benchmark"
timeout 80 $py benchmarks/bench_capture.py --device cuda --cases gpu-1.5B-shape --reps 3 --out "$out/capture.jsonl" \
  2>&1 | grep -v -E "^USDT|CPUAllocator|Model config" | tee "$out/capture.log" | tail -12

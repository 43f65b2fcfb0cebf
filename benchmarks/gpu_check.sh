#!/usr/bin/env bash
# The one prepared GPU run (about 6 minutes on an H200), in order of value: install and build facts; the triton tests
# compiled for the GPU (fused OPD passes, alignment); the actor update against top-16 OPD (the headline: Qwen2.5-1.5B
# dims, B = 2, responses of 4k and 16k tokens); the loss path at the paper's shapes; the teacher pass; the kernel
# benchmark. Every step has its own timeout, so one slow step cannot eat the others' time.
# Results go to the folder given as $1 (default: $OUT, else ./gpu-results): build_info.json, gpu.csv, *.log and
# actor_update_cuda.jsonl, loss_path_cuda.jsonl, teacher_pass_cuda.jsonl, kernels.jsonl, plots/.
#   device run:  bash benchmarks/gpu_check.sh "$OUT"
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu-results}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=python3
quiet() { grep -v -E "^USDT|CPUAllocator|Model config|FutureWarning|warnings.warn"; }

echo "== install"
if ! $py -m pip install --no-deps --no-build-isolation -e . >"$out/install.log" 2>&1; then
  tail -40 "$out/install.log"; exit 1
fi
$py -m oprd_kernels >"$out/build_info.json" 2>&1; head -c 600 "$out/build_info.json"; echo
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.used --format=csv >"$out/gpu.csv" 2>&1

echo "== tests (compiled kernels)"
timeout 100 $py -m pytest -q -x -p no:cacheprovider tests/test_triton_opd.py tests/test_triton_bridge.py \
  tests/test_triton_alignment.py 2>&1 | tee "$out/gpu_tests.log" | tail -6

echo "== actor update"
timeout 150 $py benchmarks/bench_actor_update.py --device cuda --seqs 4096 16384 --reps 3 \
  --out "$out/actor_update_cuda.jsonl" 2>&1 | quiet | tee "$out/actor_update.log" | tail -18

echo "== loss path"
timeout 80 $py benchmarks/bench_loss_path.py --device cuda --cases gpu-paper-2x16k --time-budget 50 \
  --out "$out/loss_path_cuda.jsonl" 2>&1 | quiet | tee "$out/loss_path.log" | tail -16

echo "== teacher pass"
timeout 50 $py benchmarks/bench_teacher_pass.py --device cuda --cases gpu-qwen1.5B-2x16k --reps 3 \
  --out "$out/teacher_pass_cuda.jsonl" 2>&1 | quiet | tee "$out/teacher_pass.log" | tail -8

echo "== kernel benchmark"
timeout 70 $py benchmarks/bench_kernels.py --device cuda --time-budget 40 --out "$out/kernels.jsonl" 2>&1 \
  | quiet | tee "$out/bench.log" | tail -14

echo "== plots"
$py benchmarks/plot_suite.py "$out"/*_cuda.jsonl --out-dir "$out/plots" 2>&1 | tail -3

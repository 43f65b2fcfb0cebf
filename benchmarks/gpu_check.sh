#!/usr/bin/env bash
# The one prepared GPU run (about 7 minutes on an H200 for the steps up to the plots, at most 7 more for the last
# three), in order of value: install and build facts; the GPU tests (the Triton kernels compiled for the GPU,
# torch.compile through the custom ops, then the realistic shapes: fused OPD at d = 1536, V = 151,936, N = 4,096,
# alignment at N_sel > 65,535); the actor update against top-16 OPD (the headline: Qwen2.5-1.5B dims, B = 2,
# responses of 4k and 16k tokens); the loss path at the paper's shapes; the teacher pass; the kernel benchmark; the
# fused OPD's tuning (slab GEMMs against cuBLAS, block candidates) and the peers; the memory settings at 1.5B and 7B; the
# multi-process tests.
# Every step has its own timeout, so one slow step cannot eat the others' time; every step's status goes to
# summary.tsv, a failed or timed-out step is printed as such, and the script exits 1 when any step did not pass.
# Results go to the folder given as $1 (default: $OUT, else ./gpu-results): summary.tsv, build_info.json, gpu.csv,
# *.log and actor_update_cuda.jsonl, loss_path_cuda.jsonl, teacher_pass_cuda.jsonl, kernels.jsonl, opd_tuning.jsonl,
# loss_path_peers_cuda.jsonl, plots/, memory_settings_cuda.jsonl, train_step_cuda.jsonl.
#   device run:  bash benchmarks/gpu_check.sh "$OUT"
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu-results}}"
export PYTHONUNBUFFERED=1
py=python3
# shellcheck source=benchmarks/gpu_steps.sh
source benchmarks/gpu_steps.sh
start_steps

run_step install 120 install.log $py -m pip install --no-deps --no-build-isolation -e .
if [ "$steps_failed" -ne 0 ]; then finish_steps; exit 1; fi
run_step build-info 30 build_info.json $py -m oprd_kernels
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.used --format=csv >"$out/gpu.csv" 2>&1

STEP_TAIL=6 run_step tests-compiled 160 gpu_tests.log $py -m pytest -q -p no:cacheprovider \
  tests/test_triton_opd.py tests/test_backend_alignment.py tests/test_backend_bridge.py tests/test_lifetimes.py \
  tests/test_position_checks.py tests/test_compile_cuda.py
STEP_TAIL=6 run_step tests-shapes 150 gpu_shapes.log $py -m pytest -q -p no:cacheprovider -m gpu \
  tests/test_gpu_shapes.py

STEP_TAIL=18 run_step actor-update 150 actor_update.log $py benchmarks/bench_actor_update.py --device cuda \
  --seqs 4096 16384 --reps 3 --out "$out/actor_update_cuda.jsonl"
run_step loss-path 80 loss_path.log $py benchmarks/bench_loss_path.py --device cuda --cases gpu-paper-2x16k \
  --time-budget 50 --out "$out/loss_path_cuda.jsonl"
STEP_TAIL=8 run_step teacher-pass 50 teacher_pass.log $py benchmarks/bench_teacher_pass.py --device cuda \
  --cases gpu-qwen1.5B-2x16k --reps 3 --out "$out/teacher_pass_cuda.jsonl"
STEP_TAIL=14 run_step kernels 70 bench.log $py benchmarks/bench_kernels.py --device cuda --time-budget 40 \
  --out "$out/kernels.jsonl"
# issue 17: the fused OPD's tuning at the paper's shapes (the slab GEMMs against cuBLAS, the block candidates), then
# the peers (Liger, TRL; skipped with the reason where the image lacks them) at 8k rows
STEP_TAIL=22 run_step opd-tuning 120 opd_tuning.log $py benchmarks/bench_opd_tuning.py --device cuda \
  --out "$out/opd_tuning.jsonl"
STEP_TAIL=12 run_step loss-path-peers 120 loss_path_peers.log $py benchmarks/bench_loss_path.py --device cuda \
  --cases gpu-peers-8k --out "$out/loss_path_peers_cuda.jsonl"
STEP_TAIL=3 run_step plots 60 plots.log bash -c "$py benchmarks/plot_suite.py $out/*_cuda.jsonl --out-dir $out/plots"

# issue 16: the memory plan's settings at real shapes (Qwen2.5-1.5B: all four; a 7B student: bf16 with fp32 and
# 8-bit moments, the latter only if torchao is installed there), then the multi-process tests on this machine's
# CPUs (2 processes on gloo: one GPU cannot hold two NCCL ranks, so NCCL itself is not checked here)
STEP_TAIL=10 run_step memory-1.5b 120 memory_settings.log $py benchmarks/bench_memory_settings.py --device cuda \
  --shape 1.5b --reps 3 --out "$out/memory_settings_cuda.jsonl"
STEP_TAIL=6 run_step memory-7b 150 memory_settings_7b.log $py benchmarks/bench_memory_settings.py --device cuda \
  --shape 7b --reps 2 --out "$out/memory_settings_cuda.jsonl"
STEP_TAIL=4 run_step multi-process 150 distributed.log $py -m pytest -q -p no:cacheprovider -m "slow or not slow" \
  tests/test_distributed.py

# issue 27: whole training steps, oprd train (hf and vllm engines) against TRL, Qwen's vocabulary, 1k-token responses;
# the vllm and TRL cases print SKIPPED where those packages are absent (the GPU image has no vLLM)
STEP_TAIL=8 run_step train-step 150 train_step.log $py benchmarks/bench_train_step.py --device cuda --tokens 1024 \
  --vocabs 151936 --steps 3 --out "$out/train_step_cuda.jsonl"

finish_steps

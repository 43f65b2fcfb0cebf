#!/usr/bin/env bash
# OPRD in verl 0.9.1 (FSDP2 actor, vLLM rollouts), the glue of oprd_verl_glue.py installed in every Ray worker.
# NOT RUN by this project (verl's FSDP engine needs CUDA and no GPU was lent): a recipe; see docs/integrations.md.
# Needs verl 0.9.1 with its own transformers (< 5.11), this repository on PYTHONPATH (oprd_kernels built in place),
# GSM8K-style parquet files in verl's data format, and a student and a teacher of one tokenizer and one width.
#   STUDENT=Qwen/Qwen2.5-1.5B-Instruct TEACHER=/ckpt/teacher TRAIN=train.parquet VAL=test.parquet \
#     bash examples/verl/run_oprd_fsdp2.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
: "${STUDENT:?set STUDENT to the student model path}" "${TEACHER:?set TEACHER to the teacher model path}"
: "${TRAIN:?set TRAIN to the training parquet}" "${VAL:?set VAL to the validation parquet}"
GPUS="${GPUS:-8}"
# The Ray workers of a local cluster inherit these two from this shell (a multi-node cluster needs them in its
# runtime_env instead).
export OPRD_VERL_CONFIG="{\"teacher\": \"$TEACHER\", \"positions\": \"all\", \"loss_agg_mode\": \"token-mean\"}"
export PYTHONPATH="$repo/python:$repo:$here${PYTHONPATH:+:$PYTHONPATH}"

python -m verl.trainer.main_ppo \
  algorithm.adv_estimator=grpo \
  data.train_files="$TRAIN" data.val_files="$VAL" \
  data.train_batch_size=256 data.max_prompt_length=1024 data.max_response_length=4096 \
  actor_rollout_ref.model.path="$STUDENT" \
  actor_rollout_ref.model.use_remove_padding=true \
  actor_rollout_ref.actor.strategy=fsdp2 \
  actor_rollout_ref.actor.ulysses_sequence_parallel_size=1 \
  actor_rollout_ref.actor.loss_agg_mode=token-mean \
  actor_rollout_ref.actor.ppo_mini_batch_size=64 \
  actor_rollout_ref.actor.use_dynamic_bsz=true \
  actor_rollout_ref.actor.ppo_max_token_len_per_gpu=16384 \
  actor_rollout_ref.actor.optim.lr=1e-6 \
  actor_rollout_ref.actor.use_kl_loss=false \
  actor_rollout_ref.rollout.name=vllm \
  actor_rollout_ref.rollout.n=4 \
  actor_rollout_ref.rollout.tensor_model_parallel_size=1 \
  actor_rollout_ref.rollout.gpu_memory_utilization=0.5 \
  trainer.n_gpus_per_node="$GPUS" trainer.nnodes=1 \
  trainer.total_epochs=1 trainer.logger='["console"]' \
  +ray_kwargs.ray_init.runtime_env.worker_process_setup_hook=oprd_verl_glue.install \
  "$@"

"""The trainer's rollout engine, as `rollout.engine` and `rollout.vllm_*` say: its settings checked before any model
work (`plan_engine`), the engine built (`build_engine`), the student's weights for its sync (`sync_state`), and the
off-policy drift a user must see (`logprob_gap`: the engine's sampled-token log-probs against the trainer's own)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from oprd.capture import capture_student
from oprd.capture.families import decoder_parts
from oprd.parallel.sharding import gathered_model_state
from oprd.rollout.batch import Rollouts
from oprd.rollout.engine import RolloutEngine
from oprd.rollout.hf import HFEngine
from oprd.rollout.vllm_settings import VLLMSettings, import_vllm, plan_vllm
from oprd.train.config import TrainConfig
from oprd.train.config_values import resolve_dtype
from oprd_kernels import lm_head_stats

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16"}


def plan_engine(config: TrainConfig, student_config, device: torch.device) -> VLLMSettings | None:
    """The in-process vLLM engine's settings (None for the hf engine and for a server, which has its own), or a
    ValueError naming the key: vLLM not installed, a head size it cannot run, a KV cache or model length too small."""
    r = config.rollout
    if r.engine == "hf" or r.vllm_url:
        return None
    dtype = _DTYPE_NAMES[resolve_dtype(r.vllm_dtype, device)]
    settings = plan_vllm(student_config, device=device.type, dtype=dtype, max_model_len=r.vllm_max_model_len,
                         kv_cache_mb=r.vllm_kv_cache_mb, gpu_memory_utilization=r.vllm_gpu_memory_utilization,
                         max_new_tokens=r.max_new_tokens)
    import_vllm()
    return settings


def build_engine(config: TrainConfig, student: nn.Module, tokenizer, eos_token_ids: list[int],
                 settings: VLLMSettings | None, sync_dir: Path) -> RolloutEngine:
    """HF `generate` on the student, vLLM in this process (weights from `sync`), or a vLLM server at
    `rollout.vllm_url` (weights handed over through files in `sync_dir`)."""
    r = config.rollout
    if r.engine == "hf":
        return HFEngine(student, tokenizer)
    if r.vllm_url:
        from oprd.rollout.vllm_server import VLLMServerEngine
        return VLLMServerEngine(r.vllm_url, tokenizer, eos_token_ids, student.config, sync_dir)
    from oprd.rollout.vllm_engine import VLLMEngine
    return VLLMEngine(student.config, tokenizer, eos_token_ids, settings)


def sync_state(student: nn.Module, sharded: bool) -> dict[str, torch.Tensor]:
    """The student's whole state dict, HF names; under FSDP2 gathered on every rank (each feeds its own engine)."""
    if sharded:
        return gathered_model_state(student)
    return {name: tensor.detach() for name, tensor in student.state_dict().items()}


@torch.no_grad()
def logprob_gap(student: nn.Module, rollouts: Rollouts) -> tuple[float, int]:
    """(sum of |engine log-prob - trainer log-prob| over the response tokens, their count): the trainer's from the
    student as it is now, through the fused LM-head statistics (no [tokens, vocab] logits)."""
    was_training = student.training
    student.eval()
    try:
        states = capture_student(student, rollouts.input_ids, rollouts.attention_mask, "last", final_state=True)
    finally:
        student.train(was_training)
    final = states.final[:, rollouts.response_logit_slice()]
    weight = decoder_parts(student).lm_head.weight
    if hasattr(weight, "full_tensor"):  # FSDP2: the head's shards, gathered (every rank calls this)
        weight = weight.full_tensor()
    ids = rollouts.responses.unsqueeze(-1)
    mine = lm_head_stats(final, weight.to(final.dtype), ids=ids).log_probs[..., 0].float()
    mask = rollouts.response_mask[:, rollouts.prompt_width:].bool()
    gap = (mine - rollouts.sampled_log_probs).abs()[mask]
    return float(gap.sum()), int(mask.sum())

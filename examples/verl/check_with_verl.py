"""Run the OPRD glue through verl 0.9.1's own code on CPU, and compare with `oprd train`'s objective.

Needs an environment with verl 0.9.1 (it pins transformers < 5.11, so not this project's test environment):
    python -m venv /tmp/verlenv && /tmp/verlenv/bin/pip install torch==2.13.0 verl==0.9.1 "transformers<5.11"
    PYTHONPATH=python:.:examples/verl /tmp/verlenv/bin/python examples/verl/check_with_verl.py
(run from the repository root after building oprd_kernels' C++ extension in place).

What runs for real: verl's `left_right_2_no_padding`, its `prepare_micro_batches`, its
`FSDPEngineWithLMHead.forward_step` wrapped by `oprd_verl_glue.install()` (the engine object is built by hand and its
device lookups answer "cpu": no FSDP, no Ray, no GPU), and its `agg_loss` for every `loss_agg_mode`. One sample
per micro-batch, because CPU attention has no varlen kernel and would let packed samples attend to each other.
"""

from __future__ import annotations

import random
import sys
from types import SimpleNamespace

import oprd_verl_glue
import torch
import verl.workers.engine.fsdp.transformer_impl as impl
from verl.trainer.ppo.core_algos import agg_loss
from verl.utils import tensordict_utils as tu
from verl.utils.torch_functional import entropy_from_logits
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead
from verl.workers.engine.utils import prepare_micro_batches
from verl.workers.utils.padding import left_right_2_no_padding

from oprd.integrations.verl_samples import AGG_MODES, verl_token_coefficients
from oprd.objective import ObjectiveSpec, compute_objective, plan_layers
from oprd.rollout import generate_rollouts
from oprd.tasks import ArithmeticTask
from oprd.tasks.tokenizers import build_char_tokenizer


def tiny(seed: int, layers: int, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))


def engine_for(student) -> FSDPEngineWithLMHead:
    """verl's actor engine without FSDP: only the attributes its forward_step reads."""
    engine = FSDPEngineWithLMHead.__new__(FSDPEngineWithLMHead)
    engine.module, engine.pad_to_length, engine.use_ulysses_sp = student, False, False
    engine.ulysses_sequence_parallel_size, engine._autocast_dtype = 1, torch.float32
    engine.engine_config = SimpleNamespace(entropy_checkpointing=False, entropy_from_logits_with_chunking=False)
    engine.compute_entropy_from_logits = entropy_from_logits
    engine.get_data_parallel_group = lambda: None
    impl.get_device_id = impl.get_device_name = lambda: "cpu"  # verl's platform is CUDA; this torch is CPU-only
    return engine


def check_forward_step() -> None:
    tokenizer = build_char_tokenizer()
    student, teacher = tiny(0, 3, tokenizer), tiny(1, 4, tokenizer)
    spec = ObjectiveSpec(method="oprd", positions="all", coefficient=1.5)
    plan = plan_layers(spec, student, teacher)
    torch.manual_seed(0)
    prompts = [e.prompt for e in ArithmeticTask(2).sample(4, random.Random(0))]
    rollouts = generate_rollouts(student, tokenizer, prompts, responses_per_prompt=2, max_new_tokens=12,
                                 temperature=1.0, top_p=1.0)
    width = rollouts.prompt_width
    batch = tu.get_tensordict({
        "input_ids": rollouts.input_ids, "attention_mask": rollouts.attention_mask,
        "position_ids": (rollouts.attention_mask.cumsum(1) - 1).clamp_min(0),
        "prompts": rollouts.input_ids[:, :width], "responses": rollouts.input_ids[:, width:],
        "response_mask": rollouts.response_mask[:, width:]})
    data = left_right_2_no_padding(batch)
    total = int(data["response_mask"].sum())
    tu.assign_non_tensor(data, use_dynamic_bsz=False, temperature=1.0, dp_size=1, batch_num_tokens=total,
                         global_batch_size=len(data), sp_size=1, micro_batch_size_per_gpu=1)
    micro_batches, _ = prepare_micro_batches(data)
    oprd_verl_glue.install()
    engine = engine_for(student)
    engine._oprd_run = oprd_verl_glue.OPRDRun(spec, plan, teacher, "token-mean")

    def policy_loss(model_output, data, dp_group=None):  # stands in for verl's policy loss, through the LM head
        return -model_output["log_probs"].values().mean(), {}

    kept = 0.0
    for keep in (True, False):
        engine._oprd_run.keep_policy_loss = keep
        got, logged = 0.0, 0.0
        for micro in micro_batches:
            loss, output = engine.forward_step(micro, loss_function=policy_loss, forward_only=False)
            got, logged = got + loss, logged + output["metrics"]["oprd/loss"]
        if keep:
            kept = float(got.detach())
    got.backward()
    got_grads = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    student.zero_grad(set_to_none=True)
    want = compute_objective(spec, student, teacher, rollouts, plan).loss
    want.backward()
    torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-5, atol=1e-6)
    for name, p in student.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(got_grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
    policy = kept - float(want.detach())
    assert policy > 0.1, f"keep_policy_loss=True should add verl's policy loss; the sums differ by {policy}"
    print(f"forward_step: {len(micro_batches)} micro-batches through verl's engine, OPRD loss "
          f"{float(got.detach()):.6f} (logged {logged:.6f}) = compute_objective {float(want.detach()):.6f}; "
          f"{len(got_grads)} gradients equal; "
          f"with keep_policy_loss the loss is {kept:.6f} (verl's policy loss added: {policy:.6f})")


def check_aggregation() -> None:
    torch.manual_seed(0)
    for mode in AGG_MODES:
        for dp_size in (1, 4):
            mask = (torch.rand(5, 7) > 0.4).long()
            mask[2] = 0
            loss = torch.rand(5, 7)
            extra = dict(batch_num_tokens=int(mask.sum()) * dp_size, global_batch_size=5 * dp_size) if dp_size > 1 \
                else {}
            want = agg_loss(loss, mask, mode, dp_size=dp_size, **extra)
            got = (verl_token_coefficients(mask, mode, dp_size=dp_size, **extra) * loss).sum()
            torch.testing.assert_close(got, want.to(got.dtype), rtol=1e-6, atol=1e-7)
    print(f"agg_loss: verl_token_coefficients equal verl's agg_loss for {list(AGG_MODES)} at dp_size 1 and 4")


if __name__ == "__main__":
    check_aggregation()
    check_forward_step()
    sys.exit(0)

"""Using oprd inside your own training loop: one OPRD update of a tiny random Llama student against a deeper random
Llama teacher (no downloads). Run: python examples/custom_training_loop.py

The teacher pass stops after the deepest distilled layer and keeps only the selected rows (oprd.capture.teacher_cache);
the student pass skips the LM head; the fused loss reads the student's layer outputs in place.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import oprd_kernels
from oprd import hidden_state_pairs, resolve_layers, select_positions
from oprd.capture import capture_student, teacher_cache


def tiny_llama(layers: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=96, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config)


def main() -> dict[str, float]:
    student, teacher = tiny_llama(layers=3, seed=0), tiny_llama(layers=5, seed=1)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)

    # A batch of "rollouts": left-padded prompts (4 columns) followed by right-padded responses.
    input_ids = torch.randint(0, 64, (2, 12))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :2] = 0  # shorter prompt, left-padded
    attention_mask[0, 10:] = 0  # shorter response, right-padded
    response_mask = attention_mask.clone()
    response_mask[:, :4] = 0

    s_layers = resolve_layers("all", student.config.num_hidden_layers)
    t_layers = hidden_state_pairs(s_layers, student.config.num_hidden_layers, teacher.config.num_hidden_layers)
    rows, weights = select_positions(response_mask, "last_k", k=5)

    cache = teacher_cache(teacher, input_ids, attention_mask, t_layers, rows)  # [L, N_sel, D] bf16
    states = capture_student(student, input_ids, attention_mask, s_layers)  # layer outputs, with gradients
    loss = oprd_kernels.alignment_loss(states.states, cache, rows=rows, weights=weights, loss_type="nmse")
    cosine = oprd_kernels.cosine_similarity(states.states, cache, rows=rows, weights=weights)
    loss.backward()
    optimizer.step()
    return {"loss": float(loss.detach()), "rep/cosine_similarity": float(cosine), "rows": int(rows.numel())}


if __name__ == "__main__":
    print(main())

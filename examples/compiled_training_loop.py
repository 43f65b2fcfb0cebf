"""The kernels inside `torch.compile(fullgraph=True)`: one update of a tiny random Llama student on the combined
objective L_OPD + mu * L_OPRD (sampled-token OPD through the fused LM-head loss, OPRD through the fused alignment
loss), the objective compiled with no graph break. No downloads. Run: python examples/compiled_training_loop.py

The losses are `torch.library` custom ops (oprd_kernels/custom_ops.py), so the compiler traces through them and
the same backends run as in eager mode. The model passes stay eager here; compile them too if you like.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import oprd_kernels
from oprd import hidden_state_pairs, resolve_layers, select_positions
from oprd.capture import capture_student, teacher_cache

MU = 1.0


def tiny_llama(layers: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=96, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config)


def objective(states, cache, rows, weights, final, head, sampled, teacher_log_probs, mask):
    """L_OPD + mu * L_OPRD from the student's captured states, final states and LM head."""
    oprd = oprd_kernels.alignment_loss(states, cache, rows=rows, weights=weights, loss_type="nmse")
    opd = oprd_kernels.fused_opd_loss_at_ids(final, head, sampled, teacher_log_probs, mask)
    return opd + MU * oprd


def main() -> dict[str, float]:
    student, teacher = tiny_llama(layers=3, seed=0), tiny_llama(layers=5, seed=1)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    compiled = torch.compile(objective, fullgraph=True)  # a graph break would raise here

    input_ids = torch.randint(0, 64, (2, 12))  # left-padded prompts (4 columns), then right-padded responses
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :2] = 0
    attention_mask[0, 10:] = 0
    response_mask = attention_mask.clone()
    response_mask[:, :4] = 0

    s_layers = resolve_layers("all", student.config.num_hidden_layers)
    t_layers = hidden_state_pairs(s_layers, student.config.num_hidden_layers, teacher.config.num_hidden_layers)
    rows, weights = select_positions(response_mask, "last_k", k=5)
    cache = teacher_cache(teacher, input_ids, attention_mask, t_layers, rows)
    # OPD's teacher side: the teacher's log-probs of each sampled token, read from the position before it
    columns = slice(3, 11)
    sampled = input_ids[:, 4:12].unsqueeze(-1)
    mask = response_mask[:, 4:12].bool()
    with torch.no_grad():
        t_final = capture_student(teacher, input_ids, attention_mask, "last", final_state=True).final[:, columns]
        teacher_log_probs = oprd_kernels.lm_head_stats(t_final, teacher.lm_head.weight, ids=sampled).log_probs

    captured = capture_student(student, input_ids, attention_mask, s_layers, final_state=True)
    args = (captured.states, cache, rows, weights, captured.final[:, columns], student.lm_head.weight, sampled,
            teacher_log_probs, mask)
    eager_loss = objective(*args)
    loss = compiled(*args)
    loss.backward()
    optimizer.step()
    return {"loss": float(loss.detach()), "eager_loss": float(eager_loss.detach())}


if __name__ == "__main__":
    print(main())

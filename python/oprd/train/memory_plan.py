"""What one OPRD training step holds in GPU memory, counted from the model shapes (docs/trainer.md, "Memory plan").

Every figure is a count of bytes, not a measurement: parameters, gradients and optimizer states per parameter for
each setting, the activations a Llama-style block saves for backward per token (with and without gradient
checkpointing), the frozen teacher, the compact teacher cache and the rollout KV cache. `scripts/memory_plan.py`
prints the table for the paper's model sizes; benchmarks/bench_memory_settings.py measures the activation terms at a
scaled shape on CPU against these counts.
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 1e9


@dataclass(frozen=True)
class Shape:
    """The numbers of a Llama-style decoder (Llama, Qwen2/2.5/3, Mistral) that memory depends on."""

    name: str
    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool  # the LM head shares the embedding's weight
    qkv_bias: bool = False  # Qwen2/2.5

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def parameters(self) -> int:
        d, kv, f = self.hidden, self.kv_dim, self.ffn
        attention = 2 * d * d + 2 * d * kv + ((d + 2 * kv) if self.qkv_bias else 0)
        block = attention + 3 * d * f + 2 * d  # q, k, v, o; gate, up, down; two RMSNorms
        return self.vocab * d * (1 if self.tied else 2) + self.layers * block + d

    def saved_per_token(self, checkpointing: bool) -> int:
        """bf16 bytes a block keeps for backward per token, summed over the blocks. Without checkpointing: the
        tensors autograd saves in one block (both norms' inputs and outputs, q/k/v and their rotated copies, the
        attention output, the residuals, gate, up, their activation and product), ~8 D + 3 kv + 4 F elements. With
        checkpointing only each block's input (D) is kept; the recompute of one block is `recompute_per_token`."""
        if checkpointing:
            return 2 * self.hidden * self.layers
        return 2 * (8 * self.hidden + 3 * self.kv_dim + 4 * self.ffn) * self.layers

    def recompute_per_token(self) -> int:
        """bf16 bytes of one block's saved tensors, alive while it is recomputed under checkpointing."""
        return 2 * (8 * self.hidden + 3 * self.kv_dim + 4 * self.ffn)

    def activation_bytes(self, tokens: int, checkpointing: bool) -> int:
        """What the update keeps for backward over `tokens` tokens: the blocks' saved tensors, and with checkpointing
        the one block being recomputed."""
        return (self.saved_per_token(checkpointing) + (self.recompute_per_token() if checkpointing else 0)) * tokens

    def kv_cache_per_token(self) -> int:
        """bf16 bytes of keys and values of every block, per token of a rollout."""
        return 2 * 2 * self.kv_dim * self.layers


# the paper's students and teachers (Qwen2.5 Instruct shapes, from their HF configs)
QWEN25_1_5B = Shape("Qwen2.5-1.5B", layers=28, hidden=1536, ffn=8960, heads=12, kv_heads=2, vocab=151936, tied=True,
                    qkv_bias=True)
QWEN25_7B = Shape("Qwen2.5-7B", layers=28, hidden=3584, ffn=18944, heads=28, kv_heads=4, vocab=152064, tied=False,
                  qkv_bias=True)

# bytes per trainable parameter: weights, gradients, optimizer states
STATE_BYTES = {
    "fp32 weights, fp32 AdamW": (4, 4, 8),
    "bf16 weights, fp32 AdamW": (2, 2, 8),
    "bf16 weights, 8-bit AdamW": (2, 2, 2),
}


@dataclass(frozen=True)
class Step:
    """One training step's shape: tokens per micro-batch (prompt + response), distilled rows, cached layers, and
    the rollout batch (sequences decoded together, each of `rollout_tokens` tokens)."""

    micro_batch_tokens: int = 16384
    distilled_rows: int = 16384
    cached_layers: int = 29  # "all": the embedding and every block
    rollout_sequences: int = 16
    rollout_tokens: int = 8192


def plan(student: Shape, teacher: Shape, states: str, checkpointing: bool, step: Step = Step()) -> dict[str, float]:
    """GB of each part of one step on one device (no sharding), and their total."""
    weights, grads, optimizer = STATE_BYTES[states]
    p = student.parameters
    parts = {
        "student weights": weights * p,
        "gradients": grads * p,
        "optimizer states": optimizer * p,
        "activations": student.activation_bytes(step.micro_batch_tokens, checkpointing),
        "teacher (bf16)": 2 * teacher.parameters,
        "teacher cache": 2 * step.cached_layers * step.distilled_rows * teacher.hidden,
        "rollout KV cache": student.kv_cache_per_token() * step.rollout_sequences * step.rollout_tokens,
    }
    out = {k: v / GB for k, v in parts.items()}
    # rollouts come first, with no gradients yet (set to None at the step's start); the update holds gradients,
    # activations and the cache; the peak is the larger of the two phases
    resident = out["student weights"] + out["optimizer states"] + out["teacher (bf16)"]
    update = out["gradients"] + out["activations"] + out["teacher cache"]
    out["total"] = resident + max(update, out["rollout KV cache"])
    return out

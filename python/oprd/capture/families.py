"""Where the hidden states of a supported Hugging Face decoder live: the embedding, the blocks, the final norm.

`hidden_states` index 0 is the embedding output, index i (1..L-1) the output of block i-1, index L the final norm's
output (HF's post-norm last entry). The families below share that layout: Llama, Qwen2, Qwen3, Mistral. Others are
rejected with the list of supported ones rather than captured wrongly.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

SUPPORTED_FAMILIES = ("llama", "qwen2", "qwen3", "mistral")


@dataclass(frozen=True)
class DecoderParts:
    base: nn.Module  # the decoder without the LM head (e.g. LlamaModel): what capture runs
    embed: nn.Module  # output = hidden_states[0]
    layers: nn.ModuleList  # output of layers[i] = hidden_states[i + 1] for i < L - 1
    norm: nn.Module  # output = hidden_states[L]
    lm_head: nn.Module | None  # None when given the base model

    @property
    def num_layers(self) -> int:
        return len(self.layers)


def decoder_parts(model: nn.Module) -> DecoderParts:
    """The parts of a supported causal LM (`*ForCausalLM`) or of its base model (`*Model`)."""
    config = getattr(model, "config", None)
    family = getattr(config, "model_type", None)
    if family not in SUPPORTED_FAMILIES:
        raise ValueError(f"capture: model family {family!r} ({type(model).__name__}) is not supported; supported "
                         f"families: {list(SUPPORTED_FAMILIES)}")
    base, lm_head = (model.model, getattr(model, "lm_head", None)) if hasattr(model, "model") else (model, None)
    for name in ("embed_tokens", "layers", "norm"):
        if not hasattr(base, name):
            raise ValueError(f"capture: {type(base).__name__} has no `{name}`; expected the {family} layout")
    if len(base.layers) != config.num_hidden_layers:
        raise ValueError(f"capture: {type(base).__name__} has {len(base.layers)} blocks but its config says "
                         f"{config.num_hidden_layers}")
    return DecoderParts(base, base.embed_tokens, base.layers, base.norm, lm_head)

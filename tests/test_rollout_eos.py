"""Responses end at any id of the model's EOS set (its generation config's list and the tokenizer's EOS), both in
`generate` and in the response mask."""

from __future__ import annotations

import pytest
import torch
from test_trainer import TOKENIZER, tiny_model
from transformers import GenerationConfig

from oprd.rollout import eos_token_ids, generate_rollouts, response_mask_from

OTHER_EOS = TOKENIZER.convert_tokens_to_ids("#")


def test_response_mask_stops_at_the_first_of_several_eos_ids():
    responses = torch.tensor([[5, 6, 2, 7, 2], [5, 9, 6, 9, 7], [9, 5, 5, 5, 5], [5, 5, 5, 5, 5]])
    mask = response_mask_from(responses, [2, 9])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]


@pytest.mark.parametrize("configured, expected", [
    (None, [2]), (2, [2]), (7, [7, 2]), ([7, 2], [7, 2]), ([9, 7], [9, 7, 2]),
])
def test_eos_set_is_the_generation_configs_list_and_the_tokenizers_eos(configured, expected):
    model = tiny_model(0)
    model.generation_config = GenerationConfig(eos_token_id=configured)
    assert eos_token_ids(model, TOKENIZER) == expected


def test_no_eos_anywhere_is_a_clear_error():
    class NoEos:
        eos_token_id = None

    model = tiny_model(0)
    model.generation_config = GenerationConfig(eos_token_id=None)
    with pytest.raises(ValueError, match="EOS"):
        eos_token_ids(model, NoEos())


def always_emits(token: int):
    """A tiny model whose next token is `token` at every position (an LM head that is all bias)."""
    model = tiny_model(0)
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-30.0)
        head.bias[token] = 30.0
    model.lm_head = head
    model.generation_config = GenerationConfig(eos_token_id=[TOKENIZER.eos_token_id, OTHER_EOS])
    return model


@pytest.mark.parametrize("token", [OTHER_EOS, TOKENIZER.eos_token_id])
def test_generation_stops_on_every_id_of_the_models_eos_list(token):
    model = always_emits(token)
    torch.manual_seed(0)
    rollouts = generate_rollouts(model, TOKENIZER, ["1+2=", "33+4="], responses_per_prompt=2, max_new_tokens=6,
                                 temperature=1.0, top_p=1.0)
    assert rollouts.response_lengths.tolist() == [1, 1, 1, 1]  # the EOS itself is the whole response
    assert (rollouts.responses[:, 0] == token).all()
    assert rollouts.responses.shape[1] == 1  # generate stopped too (it did not run to max_new_tokens)

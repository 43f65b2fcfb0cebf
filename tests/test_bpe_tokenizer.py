"""oprd.tasks.tokenizers.build_bpe_tokenizer: the cross-tokenizer teacher's tokenizer of the Bridge demo."""

from __future__ import annotations

import random

import pytest

from oprd.tasks import ArithmeticTask
from oprd.tasks.tokenizers import DEFAULT_ALPHABET, build_bpe_tokenizer


def _texts() -> list[str]:
    return [e.prompt + e.solution for e in ArithmeticTask(3).sample(300, random.Random(3))]


def test_round_trips_task_text_with_tokens_of_several_characters():
    tok = build_bpe_tokenizer(_texts(), vocab_size=80)
    text = ArithmeticTask(3).sample(1, random.Random(99))[0]
    full = text.prompt + text.solution
    ids = tok(full, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == full
    assert len(ids) < len(full)  # merges: some tokens span several characters
    with_special = tok(full)["input_ids"]
    assert with_special[0] == tok.bos_token_id and with_special[1:] == ids


def test_every_alphabet_character_has_a_token_even_if_the_texts_lack_it():
    tok = build_bpe_tokenizer(["12+34=46"], vocab_size=40)  # no '*', ';', ',' or '-' in the texts
    for c in DEFAULT_ALPHABET:
        ids = tok(c, add_special_tokens=False)["input_ids"]
        assert ids and tok.decode(ids) == c, c


def test_specials_and_padding_side():
    tok = build_bpe_tokenizer(_texts())
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", "<pad>")
    assert tok.padding_side == "left"


@pytest.mark.parametrize("texts, vocab, error, match", [
    ([], 80, TypeError, "texts"), ("12+3", 80, TypeError, "texts"), ([1, 2], 80, TypeError, "texts"),
    (["1+1=2"], 4, ValueError, "vocab_size"), (["1+1=2"], True, ValueError, "vocab_size")])
def test_bad_arguments_are_named(texts, vocab, error, match):
    with pytest.raises(error, match=match):
        build_bpe_tokenizer(texts, vocab)

"""A second tokenizer for the demo's arithmetic text, of another algorithm than the character one: a byte-level
BPE trained locally (no download) on task strings, so its tokens span several characters."""

from __future__ import annotations

import random

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from oprd.tasks import ArithmeticTask


def bpe_tokenizer(vocab_size: int = 80, digits: int = 2) -> PreTrainedTokenizerFast:
    examples = ArithmeticTask(digits).sample(400, random.Random(7))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>", "<pad>"],
                                  show_progress=False)  # the alphabet: the characters of the task text
    tok.train_from_iterator([e.prompt + e.solution for e in examples], trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   padding_side="left", clean_up_tokenization_spaces=False)

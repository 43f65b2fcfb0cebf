"""A second tokenizer for the demo's arithmetic text, of another algorithm than the character one: the library's
byte-level BPE (oprd.tasks.tokenizers.build_bpe_tokenizer) trained on task strings, so its tokens span several
characters."""

from __future__ import annotations

import random

from transformers import PreTrainedTokenizerFast

from oprd.tasks import ArithmeticTask
from oprd.tasks.tokenizers import build_bpe_tokenizer


def bpe_tokenizer(vocab_size: int = 80, digits: int = 2) -> PreTrainedTokenizerFast:
    examples = ArithmeticTask(digits).sample(400, random.Random(7))
    return build_bpe_tokenizer([e.prompt + e.solution for e in examples], vocab_size)

"""Fast tokenizers for the demo's synthetic tasks, built locally with `tokenizers` (no download): the character one
the demo's models share, and a byte-level BPE for a teacher of another tokenizer (OPRD-Bridge).

The character one: one token per character keeps the task's arithmetic visible to a tiny model and makes every
response length equal to its character count. Ids: `<pad>` 0, `<bos>` 1, `<eos>` 2, `<unk>` 3, then the alphabet
in the given order. Encoding with `add_special_tokens=True` prepends `<bos>` (never appends `<eos>`: the trainer
adds it to targets); padding is on the left, as batched generation needs.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
DEFAULT_ALPHABET = "0123456789+-*=,; "  # covers oprd.tasks.arithmetic prompts and solutions


def build_char_tokenizer(alphabet: str | None = None) -> PreTrainedTokenizerFast:
    """A `PreTrainedTokenizerFast` with one token per character of `alphabet` (default `DEFAULT_ALPHABET`).

    Any string over the alphabet round-trips through encode / decode(skip_special_tokens=True); characters outside
    it encode to `<unk>`. `save_pretrained` + `AutoTokenizer.from_pretrained` reloads it from the local folder.
    """
    func = "build_char_tokenizer"
    if alphabet is None:
        alphabet = DEFAULT_ALPHABET
    if not isinstance(alphabet, str):
        raise TypeError(f"{func}: `alphabet` must be a str or None; got {type(alphabet).__name__}")
    if not alphabet:
        raise ValueError(f"{func}: `alphabet` must hold at least one character; got {alphabet!r}")
    repeated = sorted({c for c in alphabet if alphabet.count(c) > 1})
    if repeated:
        raise ValueError(f"{func}: `alphabet` must not repeat characters; got {alphabet!r} (repeats {repeated!r})")

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({c: len(SPECIAL_TOKENS) + i for i, c in enumerate(alphabet)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    # Split before every code point ("[\s\S]", unlike ".", also matches newlines) so each character is one word.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()  # join tokens with no separator (the default would insert spaces)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B:1", special_tokens=[("<bos>", vocab["<bos>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
        padding_side="left", clean_up_tokenization_spaces=False)


def build_bpe_tokenizer(texts: list[str], vocab_size: int = 80,
                        alphabet: str | None = None) -> PreTrainedTokenizerFast:
    """A byte-level BPE fast tokenizer trained on `texts` (no download): another algorithm than the character one,
    with tokens spanning several characters, for a teacher that does not share the student's tokenizer.

    `alphabet` (default `DEFAULT_ALPHABET`) is trained on too, so every character a character-tokenizer student can
    write has a token (byte-level BPE has no unknown token: an unseen character would vanish). Specials `<s>`,
    `</s>`, `<pad>`; encoding with special tokens prepends `<s>`; padding on the left.
    """
    func = "build_bpe_tokenizer"
    if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"{func}: `texts` must be a non-empty list of str; got {type(texts).__name__}")
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 8:
        raise ValueError(f"{func}: `vocab_size` must be an int >= 8; got {vocab_size!r}")
    alphabet = DEFAULT_ALPHABET if alphabet is None else alphabet
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>", "<pad>"],
                                  show_progress=False)
    tok.train_from_iterator([alphabet, *texts], trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   padding_side="left", clean_up_tokenization_spaces=False)

"""Cross-tokenizer alignment (oprd.bridge.token_alignment): byte ends of the tokens the student sampled, the teacher's
own encoding of the same text, and the pairing of the positions whose spans end at the same byte.

Every tokenizer is built here from a tiny in-test corpus with the `tokenizers` library (no downloads): a byte-level
BPE (GPT-2/Qwen style), a Unigram with Metaspace (SentencePiece style), a Llama-style BPE with byte fallback, a
lowercasing WordPiece (BERT style), the repository's character tokenizer, and a BPE with a `</w>` suffix decoder (one
the module does not replay, so it decodes prefixes). The trainers break ties in hash order, so a trained vocabulary
can differ between runs: tests on trained tokenizers check properties on random ids, and hand-worked cases use only
tokens every run has (single characters, bytes) or a vocabulary written here.
"""

from __future__ import annotations

import json
import os
import random
import re
from itertools import accumulate

import pytest
import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from oprd.bridge.token_alignment import TeacherView, pair_by_boundaries, teacher_view, token_byte_ends
from oprd.rollout import Rollouts
from oprd.tasks.tokenizers import build_char_tokenizer

CORPUS = [
    "Hello world, héllo wörld! The café serves crème brûlée.",
    "日本語のテキストと中文的文本。",
    "emoji 😀 and 🎉 here, 👍🏽 too",
    "the quick brown fox jumps over the lazy dog",
    "a  b   c\n\nnew lines\tand tabs",
    "1 + 2 = 3; 40 * 5 = 200",
    "It's unaffable, isn't it? We'd go.",
] * 3


def wrap(tok: Tokenizer, **special) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **special)


def byte_level_strings(text: str) -> list[str]:
    """The ByteLevel characters of each byte of `text`, from the library's pre-tokenizer (one char per byte)."""
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    return list("".join(piece for piece, _ in pre.pre_tokenize_str(text)))


@pytest.fixture(scope="module")
def byte_bpe() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=360, special_tokens=["<eos>", "<pad>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_tokens([AddedToken("<think>", special=False)])
    return wrap(tok, eos_token="<eos>", pad_token="<pad>")


@pytest.fixture(scope="module")
def unigram() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(CORPUS, trainers.UnigramTrainer(vocab_size=160, unk_token="<unk>",
                                                            special_tokens=["<eos>", "<pad>", "<unk>"]))
    return wrap(tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")


@pytest.fixture(scope="module")
def llama_like() -> PreTrainedTokenizerFast:
    """SentencePiece-BPE conversion style: "▁" for spaces, a prefix "▁", <0xNN> tokens for characters not in the
    vocabulary, decoder Replace + ByteFallback + Fuse + Strip."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=150, special_tokens=["<unk>", "<s>", "</s>"],
                                                        limit_alphabet=40))
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    spec["model"]["byte_fallback"] = True
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return wrap(tok, eos_token="</s>", bos_token="<s>", unk_token="<unk>")


@pytest.fixture(scope="module")
def wordpiece() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(cleanup=True)
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=220,
                                                              special_tokens=["[PAD]", "[UNK]", "[SEP]"]))
    return wrap(tok, eos_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]")


@pytest.fixture(scope="module")
def chars() -> PreTrainedTokenizerFast:
    return build_char_tokenizer("".join(sorted(set("".join(CORPUS)))))


@pytest.fixture(scope="module")
def suffix_bpe() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>", end_of_word_suffix="</w>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.BPEDecoder(suffix="</w>")
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<eos>"],
                                                        end_of_word_suffix="</w>"))
    return wrap(tok, eos_token="<eos>", pad_token="<eos>", unk_token="<unk>")


@pytest.fixture(scope="module")
def hand_bpe() -> PreTrainedTokenizerFast:
    """A byte-level vocabulary chosen by hand: every single byte, "caf" and " 日本", and 😀's two halves."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<eos>": 0, "<pad>": 1}
    for piece in sorted(alphabet) + ["".join(byte_level_strings(w)) for w in ("caf", " 日本")]:
        vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(models.BPE(vocab, []))  # no merges: the text encodes to single bytes
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    tok.add_special_tokens(["<eos>", "<pad>"])
    tok.add_tokens(["".join(byte_level_strings("😀")[:2]), "".join(byte_level_strings("😀")[2:])])  # F09F, 9880
    return wrap(tok, eos_token="<eos>", pad_token="<pad>")


def ids_of(tokenizer, tokens: list[str]) -> list[int]:
    ids = tokenizer.convert_tokens_to_ids(tokens)
    assert tokenizer.unk_token_id not in ids or tokenizer.unk_token_id is None, tokens
    return ids


def decode(tokenizer, ids) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


# ----------------------------------------------------------------------------------------------- pair_by_boundaries


def test_pairs_are_the_tokens_ending_at_the_same_byte():
    # "unhappiness": un|happi|ness (2, 7, 11) against unh|app|iness (3, 6, 11): only the whole word is shared
    assert pair_by_boundaries([2, 7, 11], [3, 6, 11]) == ([2], [2])
    # un|happi|ness against un|happ|iness (2, 6, 11)
    assert pair_by_boundaries([2, 7, 11], [2, 6, 11]) == ([0, 2], [0, 2])
    # "a  b": byte-level a|Ġ|Ġb (1, 2, 4) against a merged-whitespace a|ĠĠ|b (1, 3, 4)
    assert pair_by_boundaries([1, 2, 4], [1, 3, 4]) == ([0, 2], [0, 2])
    # "café!" in bytes (é is 2): c|a|f|C3|A9|! (1..6) against ca|fé|! (2, 5, 6)
    assert pair_by_boundaries([1, 2, 3, 4, 5, 6], [2, 5, 6]) == ([1, 4, 5], [0, 1, 2])
    assert pair_by_boundaries([0, 3], [0, 1, 2, 3]) == ([0, 1], [0, 3])
    assert pair_by_boundaries([], [1, 2]) == ([], [])
    assert pair_by_boundaries((), ()) == ([], [])


def test_pairing_matches_a_set_intersection_on_random_boundaries():
    rng = random.Random(7)
    for _ in range(50):
        s = sorted(rng.sample(range(60), rng.randint(0, 30)))
        t = sorted(rng.sample(range(60), rng.randint(0, 30)))
        ps, pt = pair_by_boundaries(s, t)
        assert [s[i] for i in ps] == [t[j] for j in pt] == sorted(set(s) & set(t))


@pytest.mark.parametrize("student, teacher, error, message", [
    ([1, 1], [1], ValueError, r"`student_ends` must be strictly increasing.*got 1 at index 1 after 1"),
    ([1], [3, 2], ValueError, r"`teacher_ends` must be strictly increasing.*got 2 at index 1 after 3"),
    ([-1], [1], ValueError, r"`student_ends` must be strictly increasing and >= 0; got -1"),
    ([1.0], [1], TypeError, r"`student_ends` must hold ints; got float at index 0"),
    (torch.tensor([1]), [1], TypeError, r"`student_ends` must be a list of ints; got Tensor"),
])
def test_pairing_rejects_bad_ends(student, teacher, error, message):
    with pytest.raises(error, match=message):
        pair_by_boundaries(student, teacher)


# ----------------------------------------------------------------------------------------------- token_byte_ends


def test_byte_level_ends_fall_inside_split_characters(hand_bpe):
    b = byte_level_strings
    tokens = ["caf", *b("é"), "".join(b(" 日本")), "".join(b("😀")[:2]), "".join(b("😀")[2:]), "!"]
    ids = ids_of(hand_bpe, tokens)
    text, ends = token_byte_ends(hand_bpe, ids)
    assert text == "café 日本😀!"
    assert ends == [3, 4, 5, 12, 14, 16, 17]  # é is C3|A9, " 日本" 7 bytes, 😀 F09F|9880
    eos, pad = hand_bpe.eos_token_id, hand_bpe.pad_token_id
    text, ends = token_byte_ends(hand_bpe, torch.tensor([eos, ids[0], pad, ids[1], eos]))
    assert (text, ends) == ("caf\ufffd", [0, 3, 3, 6, 6])  # specials add nothing; a final lone C3 is U+FFFD


def test_byte_level_single_bytes_spell_any_utf8(byte_bpe):
    text = "".join(chr(c) for c in range(128)) + "é€😀ÿ߿\U0010ffff"
    tokens = byte_level_strings(text)
    text_out, ends = token_byte_ends(byte_bpe, ids_of(byte_bpe, tokens))
    assert text_out == text and ends == list(range(1, len(text.encode()) + 1))


def test_metaspace_drops_the_first_tokens_prefix_space(unigram):
    vocab = unigram.get_vocab()
    assert {"▁", "h", "é", "日"} <= set(vocab)
    text, ends = token_byte_ends(unigram, ids_of(unigram, ["▁", "h", "é", "▁", "日"]))
    assert (text, ends) == ("hé 日", [0, 1, 3, 4, 7])
    text, ends = token_byte_ends(unigram, ids_of(unigram, ["<eos>", "▁", "h", "▁"]))
    assert (text, ends) == ("h ", [0, 0, 1, 2])  # the first token decoded is the first after skipped specials


def test_byte_fallback_runs_and_the_stripped_prefix_space(llama_like):
    ids = ids_of(llama_like, ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>", "▁", "a"])
    assert token_byte_ends(llama_like, ids) == ("😀 a", [1, 2, 3, 4, 5, 6])
    assert token_byte_ends(llama_like, ids_of(llama_like, ["▁", "a", "▁", "a"])) == ("a a", [0, 1, 2, 3])
    invalid = ids_of(llama_like, ["<0xF0>", "▁", "<0x9F>"])  # not UTF-8: one U+FFFD per byte token
    assert token_byte_ends(llama_like, invalid) == ("\ufffd \ufffd", [3, 4, 7])
    assert token_byte_ends(llama_like, ids_of(llama_like, ["<0x20>", "▁", "a"])) == (" a", [0, 1, 2])


def test_wordpiece_joins_continuations_and_cleans_punctuation(wordpiece):
    tokens = ["a", "##b", ",", "c", "."]
    assert token_byte_ends(wordpiece, ids_of(wordpiece, tokens)) == ("ab, c.", [1, 2, 3, 5, 6])
    assert token_byte_ends(wordpiece, ids_of(wordpiece, ["##b", "a"])) == ("##b a", [3, 5])


def test_empty_ids_give_empty_text(byte_bpe):
    assert token_byte_ends(byte_bpe, []) == ("", [])


def garbage_bytes(tokenizer, ids: list[int]) -> set[int]:
    """Positions of the byte-fallback tokens (<0xNN>) in a run that is not UTF-8, but the run's last, and of the
    special tokens among them: the library turns the whole run into U+FFFD, so what their prefixes decode to is not
    part of the text."""
    specials = set(tokenizer.all_special_ids)
    kept = [(k, t) for k, (i, t) in enumerate(zip(ids, tokenizer.convert_ids_to_tokens(ids)))
            if i not in specials and t is not None]
    out, run = set(), []
    for k, t in kept + [(None, "")]:
        if re.fullmatch(r"<0x[0-9A-F]{2}>", t):
            run.append((k, int(t[3:5], 16)))
            continue
        try:
            bytes(b for _, b in run).decode("utf-8")
        except UnicodeDecodeError:
            out.update(range(run[0][0], run[-1][0]))  # with the special tokens between them
        run = []
    return out


def check_against_prefixes(tokenizer, ids, text, ends) -> bool:
    """The reference: decode every prefix. A prefix that decodes to a prefix of the text ends exactly there. One
    that does not stopped inside a character: it decodes to the text up to some character, then U+FFFD for the
    unfinished bytes (for a byte-fallback run, for all of the run so far). Garbage bytes (see `garbage_bytes`) end
    one byte into their U+FFFD. True when every prefix decoded to a prefix of the text."""
    full, replacement = text.encode(), "\ufffd".encode()
    assert text == decode(tokenizer, ids)
    assert len(ends) == len(ids) and ends == sorted(ends) and (not ids or ends[-1] == len(full))
    boundaries = list(accumulate((len(c.encode()) for c in text), initial=0))
    garbage = garbage_bytes(tokenizer, ids)
    clean = not garbage
    for k, end in enumerate(ends):
        if k in garbage:
            assert end - 1 in boundaries and full[end - 1:].startswith(replacement), (k, ids[:k + 1])
            continue
        prefix = decode(tokenizer, ids[:k + 1]).encode()
        if full.startswith(prefix):
            assert end == len(prefix), (k, ids[:k + 1])
            continue
        clean = False
        common = max(b for b in boundaries if b <= len(os.path.commonprefix([prefix, full])))
        assert common < end < len(full) and end not in boundaries, (k, ids[:k + 1])
        assert set(prefix[common:].decode()) == {"\ufffd"}, (k, ids[:k + 1])  # (a byte-fallback run: all of it)
    return clean


@pytest.mark.parametrize("name", ["byte_bpe", "unigram", "llama_like", "wordpiece", "chars", "suffix_bpe"])
def test_byte_ends_of_random_ids_equal_prefix_decoding(name, request):
    tokenizer = request.getfixturevalue(name)
    rng = random.Random(name)
    clean = 0
    for _ in range(12):
        ids = [rng.randrange(len(tokenizer)) for _ in range(rng.randint(1, 40))]
        text, ends = token_byte_ends(tokenizer, ids)
        _, by_prefixes = token_byte_ends(tokenizer, ids, method="prefix")
        if check_against_prefixes(tokenizer, ids, text, ends):
            clean += 1
            assert by_prefixes == ends
        else:  # prefix decoding cannot see which byte of a character a token ends on: it reports one byte in
            boundaries = set(accumulate((len(c.encode()) for c in text), initial=0))
            assert all(p in boundaries or p - 1 in boundaries for p in by_prefixes)
            garbage = garbage_bytes(tokenizer, ids)

            def firsts(found):  # the first token reaching each boundary, garbage aside: what pairing uses
                return {e: min(k for k, x in enumerate(found) if x == e and k not in garbage)
                        for k, e in enumerate(found) if e in boundaries and k not in garbage}

            assert firsts(by_prefixes) == firsts(ends)
    assert clean >= (0 if name in ("byte_bpe", "llama_like") else 12)


def test_byte_level_random_ids_produce_lossy_text_that_still_matches(byte_bpe):
    rng = random.Random(3)
    lossy = 0
    for _ in range(30):
        ids = [rng.randrange(len(byte_bpe)) for _ in range(30)]
        text, ends = token_byte_ends(byte_bpe, ids)
        lossy += "\ufffd" in text
        check_against_prefixes(byte_bpe, ids, text, ends)
    assert lossy > 5  # the test exercised invalid UTF-8 (sampled bytes that form no character)


class CountingDecode:
    def __init__(self, tokenizer):
        self.decode, self.calls = tokenizer.decode, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.decode(*args, **kwargs)


@pytest.mark.parametrize("name, fast", [("byte_bpe", True), ("unigram", True), ("llama_like", True),
                                        ("wordpiece", True), ("chars", True), ("suffix_bpe", False)])
def test_known_decoders_decode_once_and_others_every_prefix(name, fast, request, monkeypatch):
    tokenizer = request.getfixturevalue(name)
    counter = CountingDecode(tokenizer)
    monkeypatch.setattr(tokenizer, "decode", counter)
    token_byte_ends(tokenizer, list(range(4, 24)))
    assert counter.calls == (1 if fast else 21)


def test_a_custom_python_decoder_falls_back_to_prefixes(chars):
    class Joiner:
        def decode_chain(self, tokens):
            return tokens

    custom = wrap(Tokenizer.from_str(chars.backend_tokenizer.to_str()), eos_token="<eos>", pad_token="<pad>")
    custom.backend_tokenizer.decoder = decoders.Decoder.custom(Joiner())
    ids = custom("12+3=", add_special_tokens=False)["input_ids"]
    assert token_byte_ends(custom, ids) == ("12+3=", [1, 2, 3, 4, 5])


def test_bytes_that_do_not_reproduce_decode_name_the_tokenizer(byte_bpe, monkeypatch):
    monkeypatch.setattr(byte_bpe, "decode", lambda ids, **kwargs: "something else")
    with pytest.raises(ValueError, match=r"per-token bytes of \w+ \(decoder ByteLevel.*do not "
                                         r"reproduce.*method='prefix'"):
        token_byte_ends(byte_bpe, [5, 6])


@pytest.mark.parametrize("ids, method, error, message", [
    ([1, -2], "auto", ValueError, r"`ids` must be >= 0; got -2"),
    (torch.tensor([1.0]), "auto", TypeError, r"`ids` must be a 1-D integer tensor.*torch.float32"),
    (torch.tensor([[1]]), "auto", TypeError, r"`ids` must be a 1-D integer tensor.*shape \(1, 1\)"),
    ("12", "auto", TypeError, r"`ids` must be .* list of ints; got str"),
    ([1], "fast", ValueError, r"`method` must be one of \['auto', 'prefix'\]; got 'fast'"),
])
def test_token_byte_ends_rejects_bad_arguments(byte_bpe, ids, method, error, message):
    with pytest.raises(error, match=message):
        token_byte_ends(byte_bpe, ids, method=method)


def test_a_slow_tokenizer_is_refused_with_the_way_out():
    class SlowTokenizer:
        name_or_path = "slow-model"

        def decode(self, ids, **kwargs):
            return ""

    with pytest.raises(TypeError, match=r"`tokenizer` must be a fast tokenizer.*got SlowTokenizer\('slow-model'\)"):
        token_byte_ends(SlowTokenizer(), [1])
    with pytest.raises(TypeError, match=r"`teacher_tokenizer` must be a fast tokenizer"):
        teacher_view(None, build_char_tokenizer(), SlowTokenizer(), [])


# ----------------------------------------------------------------------------------------------- teacher_view


def make_rollouts(tokenizer, prompts: list[str], prompt_index: list[int], responses: list[list[int]],
                  width: int | None = None) -> Rollouts:
    """The batch layout of oprd.rollout.batch: prompts left-padded to P, responses right-padded to T (>= longest)."""
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    rows = [encoded[i] for i in prompt_index]
    p = max(len(r) for r in rows)
    t = max([len(r) for r in responses] + [width or 0])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(rows), p + t), pad, dtype=torch.long)
    attention = torch.zeros_like(ids)
    response_mask = torch.zeros_like(ids)
    for b, (prompt, response) in enumerate(zip(rows, responses)):
        ids[b, p - len(prompt):p + len(response)] = torch.tensor(prompt + response, dtype=torch.long)
        attention[b, p - len(prompt):p + len(response)] = 1
        response_mask[b, p:p + len(response)] = 1
    return Rollouts(ids, attention, response_mask, p, torch.tensor(prompt_index))


def test_full_path_pairs_a_byte_level_student_with_a_character_teacher(hand_bpe):
    b = byte_level_strings
    tokens = ["caf", *b("é"), "".join(b(" 日本")), "".join(b("😀")[:2]), "".join(b("😀")[2:]), "!"]
    response = ids_of(hand_bpe, tokens) + [hand_bpe.eos_token_id]
    rollouts = make_rollouts(hand_bpe, ["Q:", "Longer Q:"], [1, 0], [response, []], width=10)
    teacher = build_char_tokenizer("café 日本😀!QLonger:")
    view = teacher_view(rollouts, hand_bpe, teacher, ["Q:", "Longer Q:"])
    # student ends 3, 4(mid é), 5, 12, 14(mid 😀), 16, 17, EOS; teacher chars end 1, 2, 3, 5, 6, 9, 12, 16, 17, EOS
    p, s_width = rollouts.prompt_width, rollouts.input_ids.shape[1]
    p_t = view.prompt_width
    assert p_t == 1 + len("Longer Q:")  # <bos> + one token per character
    assert (view.student_rows - p).tolist() == [0, 2, 3, 5, 6, 7]
    assert (view.teacher_rows - p_t).tolist() == [2, 3, 6, 7, 8, 9]
    assert (view.response_positions, view.unpaired) == (8, 2)
    t_width = view.input_ids.shape[1]
    assert t_width == p_t + len("café 日本😀!") + 1 and s_width == p + 10
    row = view.input_ids[0].tolist()
    assert row[:p_t] == teacher("Longer Q:")["input_ids"]
    assert row[p_t:] == teacher("café 日本😀!", add_special_tokens=False)["input_ids"] + [teacher.eos_token_id]
    assert view.input_ids[1].tolist() == [teacher.pad_token_id] * 7 + teacher("Q:")["input_ids"] + \
        [teacher.pad_token_id] * (t_width - p_t)
    assert view.attention_mask.tolist() == [[1] * t_width, [0] * 7 + [1] * 3 + [0] * (t_width - p_t)]


def test_a_pair_inside_a_character_where_both_sides_split_it_at_the_same_byte(hand_bpe, chars):
    halves = ["".join(byte_level_strings("😀")[:2]), "".join(byte_level_strings("😀")[2:])]
    response = ids_of(hand_bpe, [*halves, "!"])  # sampled F09F|9880|!, while the text encodes to single bytes
    rollouts = make_rollouts(hand_bpe, PROMPTS, [0], [response])
    view = teacher_view(rollouts, hand_bpe, hand_bpe, PROMPTS)
    assert view.input_ids[0, view.prompt_width:].tolist() == ids_of(hand_bpe, [*byte_level_strings("😀!")])
    assert (view.student_rows - rollouts.prompt_width).tolist() == [0, 1, 2]  # student ends 2, 4, 5
    assert (view.teacher_rows - view.prompt_width).tolist() == [1, 3, 4]  # teacher ends 1, 2, 3, 4, 5
    view = teacher_view(rollouts, hand_bpe, chars, PROMPTS)  # a character teacher has no end inside 😀
    assert (view.student_rows - rollouts.prompt_width).tolist() == [1, 2] and view.unpaired == 1


def seen(tokenizer, ids: list[int], k: int, text: str) -> tuple[bool, bytes]:
    """What tokens 0..k have seen of the row's text, by decoding them: (True, the prefix) when they decode to a
    prefix of the text, else (False, the text up to the character where they stop agreeing: inside a character)."""
    prefix, full = decode(tokenizer, ids[:k + 1]).encode(), text.encode()
    if full.startswith(prefix):
        return True, prefix
    common = len(os.path.commonprefix([prefix, full]))
    return False, full[:max(b for b in accumulate((len(c.encode()) for c in text), initial=0) if b <= common)]


def check_layout(view: TeacherView, b: int, prompt: list[int], response: list[int], pad: int) -> None:
    """Row b: the prompt left-padded to P_t, then the response right-padded; attention on both."""
    p_t, width = view.prompt_width, view.input_ids.shape[1]
    left, right = p_t - len(prompt), width - p_t - len(response)
    assert view.input_ids[b].tolist() == [pad] * left + prompt + response + [pad] * right
    assert view.attention_mask[b].tolist() == [0] * left + [1] * (len(prompt) + len(response)) + [0] * right


def check_view(view: TeacherView, rollouts: Rollouts, student, teacher, prompts_for_teacher, eos_ids,
               maximal: bool = True) -> int:
    """Layout, counts, and the invariant: each paired teacher position has seen the same text as its student, and
    (`maximal`) every boundary both reach by decoding is paired. Returns how many rows the teacher decodes back to
    the text."""
    p, s_width = rollouts.prompt_width, rollouts.input_ids.shape[1]
    p_t, t_width = view.prompt_width, view.input_ids.shape[1]
    mask = rollouts.response_mask
    assert view.response_positions == int(mask.sum())
    assert view.unpaired == view.response_positions - view.student_rows.numel()
    assert view.student_rows.dtype == view.teacher_rows.dtype == torch.long
    assert view.student_rows.tolist() == sorted(view.student_rows.tolist())
    assert bool(mask.reshape(-1)[view.student_rows].bool().all())
    pairs = {}
    for s, t in zip(view.student_rows.tolist(), view.teacher_rows.tolist()):
        assert s // s_width == t // t_width and s % s_width >= p and t % t_width >= p_t
        pairs.setdefault(s // s_width, []).append((s % s_width - p, t % t_width - p_t))
    pad = teacher.pad_token_id if teacher.pad_token_id is not None else teacher.eos_token_id
    round_trips = 0
    for b in range(len(mask)):
        ids = rollouts.input_ids[b, p:][mask[b, p:].bool()].tolist()
        ended = bool(ids) and ids[-1] in eos_ids
        text_ids = ids[:-1] if ended else ids
        text = decode(student, text_ids)
        encoding = teacher(text, add_special_tokens=False, return_offsets_mapping=True)
        t_ids = encoding["input_ids"]
        prompt = teacher(prompts_for_teacher[int(rollouts.prompt_index[b])])["input_ids"]
        check_layout(view, b, prompt, t_ids + ([teacher.eos_token_id] if ended else []), pad)
        exact = decode(teacher, t_ids) == text
        round_trips += exact

        def teacher_seen(j):
            if exact:
                return seen(teacher, t_ids, j, text)
            return True, text[:max(e for _, e in encoding["offset_mapping"][:j + 1])].encode()

        row = pairs.get(b, [])
        if ended and row and row[-1][0] == len(ids) - 1:
            assert row.pop()[1] == len(t_ids)  # the EOS pair: both have seen the whole text
        for i, j in row:  # the same prefix of the text, or both inside a character (decoding cannot say which byte)
            s_seen, t_seen = seen(student, text_ids, i, text), teacher_seen(j)
            assert s_seen == t_seen if s_seen[0] else not t_seen[0], (b, i, j, s_seen, t_seen)
        if maximal and exact and "\ufffd" not in text:  # (a U+FFFD makes an unfinished character look finished)
            firsts_s, firsts_t = {}, {}
            for i in range(len(text_ids)):
                firsts_s.setdefault(seen(student, text_ids, i, text), i)
            for j in range(len(t_ids)):
                firsts_t.setdefault(seen(teacher, t_ids, j, text), j)
            common = sorted(c for c in firsts_s.keys() & firsts_t.keys() if c[0])
            clean = [(i, j) for i, j in row if seen(student, text_ids, i, text)[0]]
            assert clean == [(firsts_s[c], firsts_t[c]) for c in common], (b, clean, common, firsts_s, firsts_t)
    return round_trips


def random_responses(student, rng, rows: int, eos_ids: list[int], texts: list[str] | None = None):
    """Sampled-looking responses: random ids of the student's vocabulary (non-canonical tokenisations), most ending
    with an EOS, one truncated, one empty, one only the EOS."""
    vocab = [i for i in range(len(student)) if i not in student.all_special_ids]
    out = [[], [eos_ids[0]]]
    for r in range(rows - 2):
        body = student(texts[r], add_special_tokens=False)["input_ids"] if texts else \
            [rng.choice(vocab) for _ in range(rng.randint(1, 24))]
        out.append(body + ([rng.choice(eos_ids)] if r % 3 else []))
    return out


PROMPTS = ["Question: what is 2 + 2?\nAnswer:", "Say hello.", "日本語で?"]


@pytest.mark.parametrize("student_name, teacher_name", [
    ("byte_bpe", "unigram"), ("unigram", "byte_bpe"), ("llama_like", "byte_bpe"), ("byte_bpe", "llama_like"),
    ("byte_bpe", "wordpiece"), ("chars", "unigram"), ("unigram", "suffix_bpe"),
])
def test_teacher_view_pairs_positions_that_have_seen_the_same_text(student_name, teacher_name, request):
    student, teacher = request.getfixturevalue(student_name), request.getfixturevalue(teacher_name)
    rng = random.Random(student_name + teacher_name)
    eos_ids = [student.eos_token_id]
    texts = [rng.choice(CORPUS)[rng.randrange(10):][:rng.randint(5, 40)] for _ in range(4)]
    responses = random_responses(student, rng, 8, eos_ids) + random_responses(student, rng, 6, eos_ids, texts)
    index = [rng.randrange(len(PROMPTS)) for _ in responses]
    rollouts = make_rollouts(student, PROMPTS, index, responses, width=30)
    teacher_prompts = [p.upper() for p in PROMPTS]
    view = teacher_view(rollouts, student, teacher, teacher_prompts)
    round_trips = check_view(view, rollouts, student, teacher, teacher_prompts, set(eos_ids))
    assert round_trips >= (2 if teacher_name != "wordpiece" else 0)  # both ways of finding teacher ends are used
    assert view.student_rows.numel() > 20


@pytest.mark.parametrize("name", ["byte_bpe", "unigram", "llama_like", "chars"])
def test_the_same_tokenizer_on_both_sides_pairs_every_position_with_itself(name, request):
    tokenizer = request.getfixturevalue(name)
    texts = ["café 😀 ok", "日本語のテキスト", "lead and  double", "Hello world, héllo wörld!"]
    eos = tokenizer.eos_token_id
    bodies = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    for body in bodies:  # the condition: the teacher's encoding of the decoded text is the student's ids
        assert tokenizer(decode(tokenizer, body), add_special_tokens=False)["input_ids"] == body
    responses = [body + ([eos] if k % 2 else []) for k, body in enumerate(bodies)] + [[eos], []]
    rollouts = make_rollouts(tokenizer, PROMPTS, [0, 1, 2, 0, 1, 2], responses)
    view = teacher_view(rollouts, tokenizer, tokenizer, PROMPTS)
    assert view.unpaired == 0 and view.response_positions == sum(len(r) for r in responses)
    assert view.prompt_width == rollouts.prompt_width
    assert torch.equal(view.input_ids, rollouts.input_ids[:, :view.input_ids.shape[1]])
    assert torch.equal(view.attention_mask, rollouts.attention_mask[:, :view.input_ids.shape[1]])
    s_width, t_width = rollouts.input_ids.shape[1], view.input_ids.shape[1]
    assert (view.student_rows // s_width).tolist() == (view.teacher_rows // t_width).tolist()
    assert (view.student_rows % s_width).tolist() == (view.teacher_rows % t_width).tolist()


def test_only_eos_and_empty_responses(byte_bpe, unigram):
    eos = byte_bpe.eos_token_id
    rollouts = make_rollouts(byte_bpe, PROMPTS, [0, 1], [[eos], []], width=3)
    view = teacher_view(rollouts, byte_bpe, unigram, PROMPTS)
    p_t, t_width = view.prompt_width, view.input_ids.shape[1]
    assert t_width == p_t + 1 and view.input_ids[:, p_t].tolist() == [unigram.eos_token_id, unigram.pad_token_id]
    assert view.student_rows.tolist() == [rollouts.prompt_width]
    assert view.teacher_rows.tolist() == [p_t]
    assert (view.response_positions, view.unpaired) == (1, 0)
    empty = make_rollouts(byte_bpe, PROMPTS, [0, 1], [[], []], width=2)
    view = teacher_view(empty, byte_bpe, unigram, PROMPTS)
    assert view.input_ids.shape[1] == view.prompt_width and view.student_rows.numel() == 0
    assert (view.response_positions, view.unpaired) == (0, 0)


def test_a_teacher_without_eos_leaves_the_students_eos_unpaired_and_pads_with_its_pad(byte_bpe, chars):
    tok = Tokenizer.from_str(chars.backend_tokenizer.to_str())
    no_eos = wrap(tok, pad_token="<pad>", bos_token="<bos>")
    response = byte_bpe("12 + 3", add_special_tokens=False)["input_ids"] + [byte_bpe.eos_token_id]
    rollouts = make_rollouts(byte_bpe, PROMPTS, [0], [response])
    view = teacher_view(rollouts, byte_bpe, no_eos, PROMPTS)
    assert view.input_ids[0, view.prompt_width:].tolist() == no_eos("12 + 3", add_special_tokens=False)["input_ids"]
    assert view.unpaired == 1
    last = rollouts.prompt_width + len(response) - 1
    assert last not in view.student_rows.tolist()


def test_several_student_eos_ids_and_a_special_inside_the_response(byte_bpe, chars):
    think = byte_bpe.convert_tokens_to_ids("<think>")
    pad = byte_bpe.pad_token_id  # a special token inside the text: no bytes, so it has no partner
    body = byte_bpe("1 + 2", add_special_tokens=False)["input_ids"]
    responses = [body + [pad] + body + [think], body + [think]]
    rollouts = make_rollouts(byte_bpe, PROMPTS, [0, 1], responses)
    view = teacher_view(rollouts, byte_bpe, chars, PROMPTS, student_eos_ids=[think])
    p, s_width = rollouts.prompt_width, rollouts.input_ids.shape[1]
    paired = set(view.student_rows.tolist())
    assert p + len(body) not in paired  # the pad inside row 0
    assert {p + 2 * len(body) + 1, s_width + p + len(body)} <= paired  # the <think> "EOS" of both rows
    assert view.input_ids[0, view.prompt_width:].tolist()[-1] == chars.eos_token_id
    check_view(view, rollouts, byte_bpe, chars, PROMPTS, {think})


def test_method_prefix_decodes_student_prefixes_and_uses_teacher_offsets(byte_bpe, unigram, monkeypatch):
    rng = random.Random(11)
    eos_ids = [byte_bpe.eos_token_id]
    texts = [rng.choice(CORPUS)[:rng.randint(5, 40)] for _ in range(4)]
    responses = random_responses(byte_bpe, rng, 6, eos_ids) + random_responses(byte_bpe, rng, 6, eos_ids, texts)
    rollouts = make_rollouts(byte_bpe, PROMPTS, [k % 3 for k in range(len(responses))], responses)
    auto = teacher_view(rollouts, byte_bpe, unigram, PROMPTS)
    counter = CountingDecode(byte_bpe)
    monkeypatch.setattr(byte_bpe, "decode", counter)
    view = teacher_view(rollouts, byte_bpe, unigram, PROMPTS, method="prefix")
    assert counter.calls > 2 * len(responses)  # every prefix was decoded
    check_view(view, rollouts, byte_bpe, unigram, PROMPTS, set(eos_ids), maximal=False)  # offsets see less
    assert torch.equal(view.input_ids, auto.input_ids) and view.student_rows.numel() > 20


def test_teacher_offsets_without_a_span_of_their_own_give_no_boundary(hand_bpe, chars):
    text = "  a 😀"
    encoding = hand_bpe(text, add_special_tokens=False, return_offsets_mapping=True)
    assert encoding["offset_mapping"] == [(0, 0), (2, 2), (2, 3), (4, 4), (4, 5), (4, 5), (4, 5), (4, 5)]
    # trim_offsets: whitespace tokens become zero-width (the first at 0, not at its end 1); 😀's bytes share a span
    rollouts = make_rollouts(chars, PROMPTS, [0], [chars(text, add_special_tokens=False)["input_ids"]])
    p = rollouts.prompt_width
    by_offsets = teacher_view(rollouts, chars, hand_bpe, PROMPTS, method="prefix")
    assert (by_offsets.student_rows - p).tolist() == [2, 4]  # "a" and "😀": ends 3 and 8
    assert (by_offsets.teacher_rows - by_offsets.prompt_width).tolist() == [2, 7]
    decoded = teacher_view(rollouts, chars, hand_bpe, PROMPTS)  # the teacher's decoding reproduces the text
    assert (decoded.student_rows - p).tolist() == [0, 1, 2, 3, 4]
    assert (decoded.teacher_rows - decoded.prompt_width).tolist() == [0, 1, 2, 3, 7]


def test_teacher_view_rejects_bad_batches(byte_bpe, unigram):
    good = make_rollouts(byte_bpe, PROMPTS, [0, 2], [[5, 6], [7]])
    with pytest.raises(ValueError, match=r"`rollouts.prompt_index` must index `prompts_for_teacher` \(length 2\); "
                                         r"got values in \[0, 2\]"):
        teacher_view(good, byte_bpe, unigram, PROMPTS[:2])
    with pytest.raises(TypeError, match=r"`prompts_for_teacher` must be a list of str; got list holding \['int'\]"):
        teacher_view(good, byte_bpe, unigram, [1, 2, 3])
    with pytest.raises(TypeError, match=r"`rollouts` must be an oprd.rollout.Rollouts; got dict"):
        teacher_view({}, byte_bpe, unigram, PROMPTS)
    holes = make_rollouts(byte_bpe, PROMPTS, [0, 2], [[5, 6, 7], [7]])
    holes.response_mask[0, holes.prompt_width + 1] = 0
    with pytest.raises(ValueError, match=r"`rollouts.response_mask` must mark each row's response as one run"):
        teacher_view(holes, byte_bpe, unigram, PROMPTS)
    in_prompt = make_rollouts(byte_bpe, PROMPTS, [0, 2], [[5], [7]])
    in_prompt.response_mask[0, 0] = 1
    with pytest.raises(ValueError, match=r"`rollouts.response_mask` must be 0 on the prompt columns"):
        teacher_view(in_prompt, byte_bpe, unigram, PROMPTS)
    bad_width = make_rollouts(byte_bpe, PROMPTS, [0, 2], [[5], [7]])
    bad_width.prompt_width = 99
    with pytest.raises(ValueError, match=r"`rollouts.prompt_width` must be an int in \[0, \d+\]; got 99"):
        teacher_view(bad_width, byte_bpe, unigram, PROMPTS)
    with pytest.raises(TypeError, match=r"`student_eos_ids` must be a list of ints or None; got \[1.5\]"):
        teacher_view(good, byte_bpe, unigram, PROMPTS, student_eos_ids=[1.5])
    with pytest.raises(ValueError, match=r"`method` must be one of \['auto', 'prefix'\]; got 'slow'"):
        teacher_view(good, byte_bpe, unigram, PROMPTS, method="slow")
    floats = make_rollouts(byte_bpe, PROMPTS, [0, 2], [[5], [7]])
    floats.prompt_index = floats.prompt_index.float()
    with pytest.raises(ValueError, match=r"`rollouts.prompt_index` must be an integer \[B=2\] tensor; got shape "
                                         r"\(2,\), dtype torch.float32"):
        teacher_view(floats, byte_bpe, unigram, PROMPTS)
    bare = wrap(Tokenizer.from_str(unigram.backend_tokenizer.to_str()))
    with pytest.raises(ValueError, match=r"`teacher_tokenizer` \w+ has neither a pad_token_id "
                                         r"nor an eos_token_id"):
        teacher_view(good, byte_bpe, bare, PROMPTS)

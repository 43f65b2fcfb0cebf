"""oprd.tasks.arithmetic against Python's int arithmetic, and oprd.tasks.tokenizers's round trip, save/load and
padding."""

import json
import random
import re

import pytest
from transformers import AutoTokenizer

from oprd.tasks import ArithmeticTask, Example, sft_text, write_jsonl
from oprd.tasks.tokenizers import DEFAULT_ALPHABET, SPECIAL_TOKENS, build_char_tokenizer

STEP = re.compile(r"(\d)\+(\d)\+(\d)=(\d)(\d)")


def check_worked(ex: Example, a: int, b: int) -> None:
    """Every step of `ex` is the right column of a + b with the right carry, and the answer is a + b."""
    assert ex.prompt == f"{a}+{b}="
    assert ex.answer == str(a + b)
    steps, answer = ex.solution.split(";")
    assert answer == ex.answer
    width = max(len(str(a)), len(str(b)))
    da, db = str(a).zfill(width)[::-1], str(b).zfill(width)[::-1]
    parts = steps.split(",")
    assert len(parts) == width
    carry = 0
    for i, part in enumerate(parts):
        m = STEP.fullmatch(part)
        assert m, f"step {i} {part!r} of {ex.solution!r} is not 'a+b+c=ks'"
        x, y, c, k, s = map(int, m.groups())
        assert (x, y, c) == (int(da[i]), int(db[i]), carry), f"step {i} of {ex.solution!r}"
        assert 10 * k + s == x + y + c, f"step {i} of {ex.solution!r}"
        carry = k
    # the answer is the final carry followed by the result digits, most significant first
    digits = "".join(STEP.fullmatch(p).group(5) for p in parts)[::-1]
    assert int(str(carry) + digits) == a + b


@pytest.mark.parametrize("digits", range(1, 7))
def test_samples_are_correct_worked_additions(digits):
    task = ArithmeticTask(digits)
    lo = 0 if digits == 1 else 10 ** (digits - 1)
    for ex in task.sample(300, random.Random(digits)):
        a, b = map(int, ex.prompt[:-1].split("+"))
        assert lo <= a < 10**digits and lo <= b < 10**digits  # exactly `digits` digits
        check_worked(ex, a, b)
        assert len(ex.solution) in (10 * digits, 10 * digits + 1) and len(ex.solution) <= task.max_solution_chars
        assert task.grade(ex.solution, ex.answer)


def test_solve_hand_worked_and_edge_cases():
    task = ArithmeticTask(2)
    assert task.solve(47, 85) == Example("47+85=", "7+5+0=12,4+8+1=13;132", "132")
    assert task.solve(10, 20).solution == "0+0+0=00,1+2+0=03;30"  # two-digit sums, no leading zero in the answer
    assert task.solve(99, 99).solution == "9+9+0=18,9+9+1=19;198"
    assert task.solve(0, 0).solution == "0+0+0=00;0"
    for a, b in [(5, 123), (999, 1), (0, 7), (123456, 999999), (10**9, 1)]:  # unequal widths, long carry chains
        check_worked(task.solve(a, b), a, b)


@pytest.mark.parametrize("bad", [-1, 3.0, "12", True, None])
def test_solve_rejects_bad_operands(bad):
    with pytest.raises((TypeError, ValueError), match="`a`"):
        ArithmeticTask().solve(bad, 1)
    with pytest.raises((TypeError, ValueError), match="`b`"):
        ArithmeticTask().solve(1, bad)


@pytest.mark.parametrize("digits, exc", [(0, ValueError), (7, ValueError), (-2, ValueError), (2.0, TypeError),
                                         ("2", TypeError), (True, TypeError)])
def test_digits_validation(digits, exc):
    with pytest.raises(exc, match=r"`digits`.*" + (re.escape(repr(digits)) if exc is ValueError else "")):
        ArithmeticTask(digits)


def test_sample_validation_and_determinism():
    task = ArithmeticTask(3)
    assert task.sample(50, random.Random(7)) == task.sample(50, random.Random(7))
    assert task.sample(50, random.Random(7)) != task.sample(50, random.Random(8))
    assert task.sample(0, random.Random(0)) == []
    with pytest.raises(ValueError, match="`n`.*-1"):
        task.sample(-1, random.Random(0))
    with pytest.raises(TypeError, match="`n`"):
        task.sample(2.0, random.Random(0))
    with pytest.raises(TypeError, match="`rng`"):
        task.sample(2, 0)


@pytest.mark.parametrize("response, expected", [
    ("7+5+0=12,4+8+1=13;132", "132"),  # correct
    ("7+5+0=12,4+8+1=13;132<eos>junk", "132"),  # trailing garbage stops at the first non-digit
    ("7+5+0=12,4+8+1=13;132;999", "132"),  # the first marker counts
    ("7+5+0=12,4+8+1=13;132 4", "132"),
    ("7+5+0=12,4+8+1=13;122", "122"),  # wrong but well-formed
    ("7+5+0=12,4+8+1=13;1", "1"),  # truncated inside the answer
    ("7+5+0=12,4+8+1=13;", None),  # truncated at the marker
    ("7+5+0=12,4+8+1=1", None),  # truncated before the marker
    ("7+5+0=12,4+8+1=13; 132", None),  # nothing directly after the marker
    ("", None),
    (";0", "0"),
])
def test_extract_answer(response, expected):
    assert ArithmeticTask.extract_answer(response) == expected


def test_grade():
    task = ArithmeticTask(2)
    ex = task.solve(47, 85)
    assert task.grade(ex.solution, "132")
    assert task.grade(ex.solution + ",7+5", "132")
    assert not task.grade(ex.solution + "7+5", "132")  # a digit right after the answer is part of it: "1327"
    assert not task.grade(ex.solution[:-1], "132")  # truncated answer "13"
    assert not task.grade(ex.solution.replace(";132", ";133"), "132")
    assert not task.grade(ex.solution.replace(";132", ";0132"), "132")  # exact match, not numeric equality
    assert not task.grade("7+5+0=12", "132")
    with pytest.raises(TypeError, match="`answer`"):
        task.grade(ex.solution, 132)
    with pytest.raises(TypeError, match="`response`"):
        task.grade(None, "132")


def test_sft_text_and_write_jsonl(tmp_path):
    task = ArithmeticTask(2)
    exs = task.sample(5, random.Random(0))
    assert sft_text(exs[0]) == exs[0].prompt + exs[0].solution
    path = tmp_path / "prompts.jsonl"
    assert write_jsonl(path, exs, prompt_field="question", answer_field="gold") == 5
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == [{"question": e.prompt, "gold": e.answer, "solution": e.solution} for e in exs]
    with pytest.raises(ValueError, match="`answer_field`"):
        write_jsonl(path, exs, answer_field="prompt")
    with pytest.raises(ValueError, match="`prompt_field`"):
        write_jsonl(path, exs, prompt_field="solution")
    with pytest.raises(TypeError, match=r"`examples\[1\]`"):
        write_jsonl(path, [exs[0], "x"])


# --- tokenizer ---

@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def test_special_token_ids(tok):
    assert [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2, 3]
    assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == list(SPECIAL_TOKENS)
    assert len(tok) == 4 + len(DEFAULT_ALPHABET)
    assert tok.padding_side == "left"
    assert tok("12")["input_ids"] == [1, tok.convert_tokens_to_ids("1"), tok.convert_tokens_to_ids("2")]
    assert tok("12", add_special_tokens=False)["input_ids"] == tok.convert_tokens_to_ids(["1", "2"])
    assert tok("1?")["input_ids"][-1] == 3  # outside the alphabet -> <unk>


def test_round_trip_random_strings(tok):
    rng = random.Random(0)
    for _ in range(300):
        text = "".join(rng.choice(DEFAULT_ALPHABET) for _ in range(rng.randint(0, 40)))
        ids = tok.encode(text)
        assert len(ids) == len(text) + 1 and ids[0] == tok.bos_token_id  # one token per character, after <bos>
        assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode(tok.encode("  1 ,; "), skip_special_tokens=True) == "  1 ,; "  # no space clean-up


def test_custom_alphabet_and_validation():
    tok = build_char_tokenizer("ab\n c")
    assert tok.decode(tok.encode("a\n\nb  c"), skip_special_tokens=True) == "a\n\nb  c"
    with pytest.raises(ValueError, match="`alphabet`.*'aba'"):
        build_char_tokenizer("aba")
    with pytest.raises(ValueError, match="`alphabet`"):
        build_char_tokenizer("")
    with pytest.raises(TypeError, match="`alphabet`"):
        build_char_tokenizer(["a", "b"])


def test_save_load_same_ids(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    texts = [ex.prompt + ex.solution for ex in ArithmeticTask(3).sample(20, random.Random(1))] + ["", " ;x"]
    for text in texts:
        assert loaded.encode(text) == tok.encode(text)
        assert loaded.decode(loaded.encode(text), skip_special_tokens=True) == tok.decode(tok.encode(text),
                                                                                          skip_special_tokens=True)
    assert loaded.padding_side == "left"
    assert [loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id, loaded.unk_token_id] == [0, 1, 2, 3]
    assert loaded(texts[:3], padding=True)["input_ids"] == tok(texts[:3], padding=True)["input_ids"]


def test_left_padding_and_attention_mask(tok):
    batch = tok(["1+2=", "12+34=", "="], padding=True)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert all(len(row) == 7 for row in ids)  # longest: <bos> + 6 characters
    for text, row, m in zip(["1+2=", "12+34=", "="], ids, mask):
        n_pad = 7 - (len(text) + 1)
        assert row[:n_pad] == [0] * n_pad and m == [0] * n_pad + [1] * (len(text) + 1)
        assert row[n_pad:] == tok.encode(text)


@pytest.mark.parametrize("digits", range(1, 7))
def test_every_sampled_character_is_in_vocab(tok, digits):
    for ex in ArithmeticTask(digits).sample(200, random.Random(digits)):
        ids = tok.encode(sft_text(ex), add_special_tokens=False)
        assert tok.unk_token_id not in ids and len(ids) == len(sft_text(ex))

"""Prompt files (oprd.rollout.prompts.load_prompts): bad bytes, non-string fields and missing fields are errors that
name the file, the line and the field; answers are read only when asked for."""

from __future__ import annotations

import json
import re

import pytest

from oprd.rollout.prompts import MissingFieldError, load_prompts


def write_lines(path, *lines: str):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_bytes_that_are_not_utf8_name_the_file_and_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "1+1="}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"latin1\.jsonl:2 is not UTF-8 text \(byte 0xe9 at column 16\)"):
        load_prompts(path)


NOT_STRINGS = [(None, "null"), ([1, 2], "a list ([1, 2])"), (True, "a boolean (true)"), ({"a": 1}, "an object"),
               (2.5, "a number (2.5)")]


@pytest.mark.parametrize("field, value, seen", [("prompt", 7, "a number (7)")] +
                         [(field, v, seen) for field in ("prompt", "answer") for v, seen in NOT_STRINGS])
def test_a_field_that_is_not_a_string_is_rejected_not_trained_on_as_text(tmp_path, field, value, seen):
    record = {"prompt": "1+1=", "answer": "2", field: value}
    path = write_lines(tmp_path / "p.jsonl", '{"prompt": "2+2=", "answer": "4"}', json.dumps(record))
    allowed = "a string" if field == "prompt" else "a string or an integer"
    with pytest.raises(ValueError, match=rf"p\.jsonl:2: field {field!r} must be {allowed}; got {re.escape(seen)}"):
        load_prompts(path, "prompt", "answer")


def test_integer_answers_read_as_their_digits(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", '{"prompt": "2+2=", "answer": 4}', '{"prompt": "9-9=", "answer": -0}',
                       '{"prompt": "1+1=", "answer": "2"}')
    assert load_prompts(path, "prompt", "answer") == [{"prompt": "2+2=", "answer": "4"},
                                                      {"prompt": "9-9=", "answer": "0"},
                                                      {"prompt": "1+1=", "answer": "2"}]


def test_answers_are_read_only_when_asked_for(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", '{"prompt": "1+1="}', '{"prompt": "2+2=", "answer": null}')
    assert load_prompts(path, "prompt", "") == [{"prompt": "1+1="}, {"prompt": "2+2="}]
    with pytest.raises(MissingFieldError, match=r"p\.jsonl:1 has no field 'answer'") as info:
        load_prompts(path, "prompt", "answer")
    assert (info.value.field, info.value.kind) == ("answer", "answer")


def test_lines_split_only_at_newlines_and_a_bom_is_accepted(tmp_path):
    """A JSON string may hold U+2028 (a line break to str.splitlines); Windows editors write a BOM and CRLF."""
    path = tmp_path / "p.jsonl"
    text = '{"prompt": "a\u2028b", "answer": "1"}\r\n\r\n{"prompt": "c", "answer": "2"}\r\n'
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert load_prompts(path, "prompt", "answer") == [{"prompt": "a\u2028b", "answer": "1"},
                                                      {"prompt": "c", "answer": "2"}]


def test_a_directory_is_named_as_such(tmp_path):
    with pytest.raises(ValueError, match="is a directory; give the path of a JSONL prompt file"):
        load_prompts(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_prompts(tmp_path / "absent.jsonl")

"""Cross-tokenizer position alignment for OPRD-Bridge: the teacher reads its own tokenisation of the student's text.

With different tokenizers the teacher cannot run on the student's ids (the reference code did that). Each student
response is decoded to text and re-encoded by the teacher; a student token and a teacher token are paired when their
spans END at the same byte of that text (`oprd.bridge.boundaries`). The student's ends come from the ids it sampled
(`oprd.bridge.byte_ends`). The teacher's ends come from its own decoding when that reproduces the text, else from
its character offsets. The EOS that ends a student response is paired with an EOS appended to the teacher's tokens
(`teacher_view`).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate
from typing import Sequence

import torch
from torch import Tensor

from oprd.bridge.boundaries import _first_of_runs, _merge, _unshadowed, pair_by_boundaries
from oprd.bridge.byte_ends import METHODS, _backend, _byte_ends, _describe, _Pieces, token_byte_ends
from oprd.rollout.prompt_format import prompt_ids, uses_template

__all__ = ["METHODS", "TeacherView", "pair_by_boundaries", "teacher_view", "token_byte_ends"]


# ----------------------------------------------------------------------------------------------- teacher side


def _offset_bytes(func: str, text: str, offsets: Sequence[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """(starts, ends) in bytes from character offsets (code points of the Python str)."""
    if text.isascii():
        byte_at = range(len(text) + 1)
    else:
        byte_at = list(accumulate((len(c.encode()) for c in text), initial=0))
    starts, ends = [], []
    for k, (start, end) in enumerate(offsets):
        if not 0 <= start <= end <= len(text):
            raise ValueError(f"{func}: the teacher tokenizer gave offsets {(start, end)} for token {k} of a text of "
                             f"{len(text)} characters; expected 0 <= start <= end <= {len(text)}")
        starts.append(byte_at[start])
        ends.append(byte_at[end])
    return starts, ends


def _teacher_boundaries(func: str, pieces: _Pieces | None, ids: list[int], offsets, text: str):
    """(token indices, strictly increasing byte ends) of the teacher tokens that end at a distinct boundary.

    Exact decoded ends when the teacher's decoding reproduces the text (a byte-level teacher then also ends inside
    characters, as the student does); otherwise (normalisers, unknown tokens, a prefix space the decoder drops, a
    decoder not replayed here) its character offsets, where a span the next token overlaps has no boundary (see
    `_unshadowed`). `pieces` None: offsets only.
    """
    if pieces is not None and pieces.fast:
        decoded, ends, skip = _byte_ends(pieces, ids, "auto")
        if decoded == text:
            return _first_of_runs(ends, skip)
    return _unshadowed(*_offset_bytes(func, text, offsets))


# ----------------------------------------------------------------------------------------------- batch


@dataclass
class TeacherView:
    input_ids: Tensor  # [B, P_t + T_t]: the teacher's own encoding of each row's prompt (left-padded), response text
    attention_mask: Tensor  # [B, P_t + T_t]
    prompt_width: int  # P_t
    student_rows: Tensor  # int64 [N_pair]: flat indices b * (P + T) + s into the student's batch, sorted
    teacher_rows: Tensor  # int64 [N_pair]: the partner flat indices b * (P_t + T_t) + s_t into the teacher batch
    response_positions: int  # student response positions considered (response_mask.sum())
    unpaired: int  # of those, how many have no partner


def _check_rollouts(func: str, rollouts, prompts: object) -> None:
    names = ("input_ids", "attention_mask", "response_mask", "prompt_width", "prompt_index")
    missing = [n for n in names if not hasattr(rollouts, n)]
    if missing:
        raise TypeError(f"{func}: `rollouts` must be an oprd.rollout.Rollouts; got {type(rollouts).__name__} "
                        f"(missing {missing})")
    ids, mask = rollouts.input_ids, rollouts.response_mask
    if not isinstance(ids, Tensor) or ids.dim() != 2:
        raise ValueError(f"{func}: `rollouts.input_ids` must be a [B, P + T] tensor; got "
                         f"{tuple(ids.shape) if isinstance(ids, Tensor) else type(ids).__name__}")
    for name in ("attention_mask", "response_mask"):
        t = getattr(rollouts, name)
        if not isinstance(t, Tensor) or t.shape != ids.shape:
            raise ValueError(f"{func}: `rollouts.{name}` must have the shape of input_ids {tuple(ids.shape)}; got "
                             f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
    width = rollouts.prompt_width
    if not isinstance(width, int) or not 0 <= width <= ids.shape[1]:
        raise ValueError(f"{func}: `rollouts.prompt_width` must be an int in [0, {ids.shape[1]}]; got {width!r}")
    if not isinstance(prompts, (list, tuple)) or any(not isinstance(p, str) for p in prompts):
        raise TypeError(f"{func}: `prompts_for_teacher` must be a list of str; got {type(prompts).__name__}"
                        + ("" if not isinstance(prompts, (list, tuple)) else
                           f" holding {sorted({type(p).__name__ for p in prompts})}"))
    index = rollouts.prompt_index
    if not isinstance(index, Tensor) or index.shape != (ids.shape[0],) or index.is_floating_point():
        raise ValueError(f"{func}: `rollouts.prompt_index` must be an integer [B={ids.shape[0]}] tensor; got "
                         + (f"shape {tuple(index.shape)}, dtype {index.dtype}" if isinstance(index, Tensor)
                            else type(index).__name__))
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= len(prompts)):
        raise ValueError(f"{func}: `rollouts.prompt_index` must index `prompts_for_teacher` (length {len(prompts)});"
                         f" got values in [{int(index.min())}, {int(index.max())}]")
    flags = mask != 0
    if bool(flags[:, :width].any()):
        raise ValueError(f"{func}: `rollouts.response_mask` must be 0 on the prompt columns 0..{width - 1}")
    response = flags[:, width:]
    if response.shape[1] > 1 and bool((response[:, 1:] & ~response[:, :-1]).any()):
        raise ValueError(f"{func}: `rollouts.response_mask` must mark each row's response as one run starting at "
                         f"column prompt_width={width} (right-padded responses); a row has a 1 after a 0")


def _special_id(tokenizer, *names: str) -> int | None:
    for name in names:
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return None


@dataclass
class _StudentRow:
    ids: list[int]  # the response ids under response_mask
    ended: bool  # the last one is an EOS
    text: str  # decoded from the ids before the EOS
    index: list[int]  # positions that end at a distinct byte boundary
    ends: list[int]  # their strictly increasing byte ends


def _student_row(pieces: _Pieces, ids: list[int], eos: set[int], method: str) -> _StudentRow:
    ended = bool(ids) and ids[-1] in eos
    text, ends, skip = _byte_ends(pieces, ids[:-1] if ended else ids, method)
    return _StudentRow(ids, ended, text, *_first_of_runs(ends, skip))


def _row_pairs(func: str, row: _StudentRow, teacher: _Pieces | None, encoding, teacher_eos: int | None):
    """(teacher response ids, paired student positions, paired teacher positions) for one row."""
    t_ids = list(encoding["input_ids"])
    t_index, t_ends = _teacher_boundaries(func, teacher, t_ids, encoding["offset_mapping"], row.text)
    ps, pt = _merge(row.ends, t_ends)
    s_pos, t_pos = [row.index[k] for k in ps], [t_index[k] for k in pt]
    if row.ended and teacher_eos is not None:  # both EOS states have seen the whole response
        s_pos.append(len(row.ids) - 1)
        t_pos.append(len(t_ids))
        t_ids.append(teacher_eos)
    return t_ids, s_pos, t_pos


def _left_right(prompts: list[list[int]], responses: list[list[int]], pad: int, dtype) -> tuple[Tensor, Tensor, int]:
    """(ids, attention mask, P_t): prompts left-padded to the widest, responses right-padded after them."""
    p_t = max((len(p) for p in prompts), default=0)
    width = p_t + max((len(r) for r in responses), default=0)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=dtype)
    for b, (prompt, response) in enumerate(zip(prompts, responses)):
        span = slice(p_t - len(prompt), p_t + len(response))
        ids[b, span] = torch.tensor(prompt + response, dtype=torch.long)
        attention[b, span] = 1
    return ids, attention, p_t


def _check_arguments(func: str, rollouts, student_tokenizer, teacher_tokenizer, prompts: object, student_eos_ids,
                     method: str, chat_template: str) -> tuple[int, set[int]]:
    """`teacher_view`'s arguments checked before any work; (the teacher's pad id, the student's EOS ids)."""
    if method not in METHODS:
        raise ValueError(f"{func}: `method` must be one of {list(METHODS)}; got {method!r}")
    _backend(func, "student_tokenizer", student_tokenizer)
    _backend(func, "teacher_tokenizer", teacher_tokenizer)
    uses_template(teacher_tokenizer, chat_template, func)  # a bad mode, or "on" without a template
    _check_rollouts(func, rollouts, prompts)
    pad = _special_id(teacher_tokenizer, "pad_token_id", "eos_token_id")
    if pad is None:
        raise ValueError(f"{func}: `teacher_tokenizer` {_describe(teacher_tokenizer)} has neither a pad_token_id nor "
                         f"an eos_token_id to pad the teacher batch with")
    if student_eos_ids is None:
        student_eos_ids = [i for i in [_special_id(student_tokenizer, "eos_token_id")] if i is not None]
    if not isinstance(student_eos_ids, (list, tuple, set)) or \
            any(not isinstance(i, int) or isinstance(i, bool) for i in student_eos_ids):
        raise TypeError(f"{func}: `student_eos_ids` must be a list of ints or None; got {student_eos_ids!r}")
    return pad, set(student_eos_ids)


def _pair_rows(func: str, rows: list[_StudentRow], teacher_tokenizer, teacher: _Pieces | None):
    """(the teacher's response ids per row, [(row, paired student positions)], [(row, paired teacher positions)]):
    each row's text encoded by the teacher with offsets, paired by byte ends (`teacher` None: from the offsets)."""
    encodings = teacher_tokenizer([r.text for r in rows], add_special_tokens=False, return_offsets_mapping=True)
    teacher_eos = _special_id(teacher_tokenizer, "eos_token_id")
    responses, s_flat, t_flat = [], [], []
    for b, row in enumerate(rows):
        encoding = {key: encodings[key][b] for key in ("input_ids", "offset_mapping")}
        t_ids, s_pos, t_pos = _row_pairs(func, row, teacher, encoding, teacher_eos)
        responses.append(t_ids)
        s_flat.append((b, s_pos))
        t_flat.append((b, t_pos))
    return responses, s_flat, t_flat


def teacher_view(rollouts, student_tokenizer, teacher_tokenizer, prompts_for_teacher: Sequence[str], *,
                 student_eos_ids: Sequence[int] | None = None, method: str = "auto",
                 chat_template: str = "auto") -> TeacherView:
    """The teacher's batch for `rollouts` and the pairing of student and teacher response positions.

    Row b: the teacher's encoding of `prompts_for_teacher[prompt_index[b]]` (`oprd.rollout.prompt_format` under
    `chat_template`, as `oprd.rollout.encode_prompts` encodes the student's: "auto" renders the teacher's own chat
    template when it has one, else encodes plainly with its special tokens), left-padded to P_t, then its encoding
    (no special tokens) of the text decoded from the student's response ids, right-padded. When the response ends
    with one of `student_eos_ids` (default: the student tokenizer's eos_token_id; pass
    `oprd.rollout.eos_token_ids(model, tok)` for models stopping on several) that EOS is left out of the text, the
    teacher's eos_token_id is appended, and the two EOS positions are paired; a teacher without an EOS leaves the
    student's unpaired. Pads are the teacher's pad_token_id, else its eos_token_id. Only response positions are
    paired; a student token without a teacher token ending at the same byte (part of a character, a special token
    inside the response) is counted in `unpaired`. method "prefix" is the way around a ValueError from the linear
    byte ends: the student's ends by decoding every prefix, the teacher's from its offsets.
    """
    func = "teacher_view"
    pad, eos = _check_arguments(func, rollouts, student_tokenizer, teacher_tokenizer, prompts_for_teacher,
                                student_eos_ids, method, chat_template)
    student, teacher = _Pieces(student_tokenizer), _Pieces(teacher_tokenizer)
    width, device = rollouts.prompt_width, rollouts.input_ids.device
    lengths = rollouts.response_mask[:, width:].ne(0).sum(dim=1).tolist()
    rows = [_student_row(student, r[width:width + n], eos, method)
            for r, n in zip(rollouts.input_ids.tolist(), lengths)]
    index = rollouts.prompt_index.tolist()
    needed = sorted(set(index))
    encoded = dict(zip(needed, prompt_ids(teacher_tokenizer, [prompts_for_teacher[i] for i in needed], chat_template,
                                             func=func)))
    responses, s_flat, t_flat = _pair_rows(func, rows, teacher_tokenizer, teacher if method == "auto" else None)
    ids, attention, p_t = _left_right([encoded[i] for i in index], responses, pad, rollouts.attention_mask.dtype)
    s_width, t_width = rollouts.input_ids.shape[1], ids.shape[1]
    student_rows = [b * s_width + width + p for b, pos in s_flat for p in pos]
    teacher_rows = [b * t_width + p_t + p for b, pos in t_flat for p in pos]
    positions = int(sum(lengths))
    return TeacherView(ids.to(device), attention.to(device), p_t,
                       torch.tensor(student_rows, dtype=torch.long, device=device),
                       torch.tensor(teacher_rows, dtype=torch.long, device=device),
                       positions, positions - len(student_rows))

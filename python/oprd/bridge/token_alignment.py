"""Cross-tokenizer position alignment for OPRD-Bridge: the teacher reads its own tokenisation of the student's text.

With different tokenizers the teacher cannot run on the student's ids (the reference code did that). Each student
response is decoded to text and re-encoded by the teacher; a student token and a teacher token are paired when their
spans END at the same byte of that text, because both states have then seen exactly the same text (the byte-offset
alignment of TRL's GOLD). Offsets are bytes of the UTF-8 text, so a byte-level token holding part of a character has
an end inside that character and pairs only with a teacher token ending at the same byte.

The student's ends come from the ids it sampled (possibly a non-canonical tokenisation), computed per token from the
vocabulary strings and the tokenizer's decoder in linear time and checked against `decode`; decoders not handled
that way fall back to decoding every prefix (quadratic). Special tokens contribute no bytes (the text is
`decode(ids, skip_special_tokens=True)`). The teacher's ends come from its own decoding when that reproduces the
text, else from its character offsets. The EOS that ends a student response is paired with an EOS appended to the
teacher's tokens (`teacher_view`).
"""

from __future__ import annotations

import codecs
import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate
from typing import Sequence

import torch
from tokenizers import decoders
from torch import Tensor

METHODS = ("auto", "prefix")
_LOCAL = {"Metaspace", "WordPiece", "Replace", "Strip"}  # per-token string maps; only the first token is special
_REPLACEMENT = "\ufffd".encode()
_BYTE_TOKEN = re.compile(rb"<0x([0-9A-Fa-f]{2})>")


# ----------------------------------------------------------------------------------------------- pairing


def _check_ends(func: str, name: str, ends: object) -> list[int]:
    if not isinstance(ends, (list, tuple)):
        raise TypeError(f"{func}: `{name}` must be a list of ints; got {type(ends).__name__}")
    previous = -1
    for k, e in enumerate(ends):
        if not isinstance(e, int) or isinstance(e, bool):
            raise TypeError(f"{func}: `{name}` must hold ints; got {type(e).__name__} at index {k}")
        if e <= previous:
            raise ValueError(f"{func}: `{name}` must be strictly increasing and >= 0; got {e} at index {k} after "
                             f"{previous}")
        previous = e
    return list(ends)


def pair_by_boundaries(student_ends: Sequence[int], teacher_ends: Sequence[int]) -> tuple[list[int], list[int]]:
    """(student indices, teacher indices) of the tokens whose spans end at the same byte boundary.

    Both inputs are strictly increasing byte end offsets over the same text; tokens without a partner are left out.
    One merge pass, O(len(student_ends) + len(teacher_ends)).
    """
    return _merge(_check_ends("pair_by_boundaries", "student_ends", student_ends),
                  _check_ends("pair_by_boundaries", "teacher_ends", teacher_ends))


def _merge(s: Sequence[int], t: Sequence[int]) -> tuple[list[int], list[int]]:
    pairs_s: list[int] = []
    pairs_t: list[int] = []
    i = j = 0
    while i < len(s) and j < len(t):
        if s[i] == t[j]:
            pairs_s.append(i)
            pairs_t.append(j)
            i += 1
            j += 1
        elif s[i] < t[j]:
            i += 1
        else:
            j += 1
    return pairs_s, pairs_t


def _first_of_runs(ends: Sequence[int], skip: set[int] = frozenset()) -> tuple[list[int], list[int]]:
    """Tokens that end past every earlier token, the first of each run of equal ends, leaving out `skip`. For exact
    decoded ends: a later token of a run added no bytes (a skipped special, an empty piece), so it has seen more
    than the text."""
    index, kept = [], []
    for k, e in enumerate(ends):
        if k not in skip and (not kept or e > kept[-1]):
            index.append(k)
            kept.append(e)
    return index, kept


def _unshadowed(starts: Sequence[int], ends: Sequence[int]) -> tuple[list[int], list[int]]:
    """For character offsets: the tokens with a span of their own, the first of each run of equal ends. A zero-width
    span says nothing of where the token ends (ByteLevel's trim_offsets gives a whitespace token (0, 0) or its end;
    an inserted prefix or a special token has none), and a span the next token overlaps is claimed by more than one
    token (the pieces of one character in a byte-level tokenizer, a Metaspace prefix "▁" given the first character's
    span), so an earlier one has not seen all of it."""
    index, kept = [], []
    for k, (s, e) in enumerate(zip(starts, ends)):
        own = s < e and (k + 1 == len(ends) or starts[k + 1] >= e)
        if own and (not kept or e > kept[-1]):
            index.append(k)
            kept.append(e)
    return index, kept


# ----------------------------------------------------------------------------------------------- student side


def _describe(tokenizer) -> str:
    name = getattr(tokenizer, "name_or_path", "") or ""
    return f"{type(tokenizer).__name__}({name!r})" if name else type(tokenizer).__name__


def _backend(func: str, name: str, tokenizer):
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(tokenizer, "decode"):
        raise TypeError(f"{func}: `{name}` must be a fast tokenizer (transformers.PreTrainedTokenizerFast, with a "
                        f"`backend_tokenizer` from the `tokenizers` library); got {_describe(tokenizer)}")
    return backend


def _as_ids(func: str, ids: object) -> list[int]:
    if isinstance(ids, Tensor):
        if ids.dim() != 1 or ids.is_floating_point() or ids.is_complex():
            raise TypeError(f"{func}: `ids` must be a 1-D integer tensor or a list of ints; got a tensor of shape "
                            f"{tuple(ids.shape)} and dtype {ids.dtype}")
        ids = ids.tolist()
    if not isinstance(ids, (list, tuple)) or any(not isinstance(i, int) or isinstance(i, bool) for i in ids):
        raise TypeError(f"{func}: `ids` must be a 1-D integer tensor or a list of ints; got {type(ids).__name__}")
    if any(i < 0 for i in ids):
        raise ValueError(f"{func}: `ids` must be >= 0; got {min(ids)}")
    return list(ids)


def _decode(tokenizer, ids: list[int]) -> str:
    """The text of `ids`: specials skipped, and no clean-up of spaces (which edits text across token boundaries, so
    no token would own the result)."""
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


@lru_cache(maxsize=1)
def _byte_level_table() -> dict[str, int]:
    """ByteLevel's byte <-> printable character map (GPT-2): printable Latin-1 bytes stand for themselves, the other
    bytes for the characters from U+0100 on, in byte order."""
    direct = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    shifted = [b for b in range(256) if b not in direct]
    table = {chr(b): b for b in direct}
    table.update({chr(256 + n): b for n, b in enumerate(shifted)})
    return table


def _stages(backend) -> list[dict] | None:
    """The decoder as a flat list of JSON stages ([] without a decoder); None when it cannot be serialised."""
    if backend.decoder is None:
        return []
    try:
        spec = json.loads(backend.decoder.__getstate__())
    except Exception:  # a custom (Python) decoder has no JSON form
        return None

    def flat(stage: dict) -> list[dict]:
        return [s for d in stage["decoders"] for s in flat(d)] if stage.get("type") == "Sequence" else [stage]

    return flat(spec)


def _split_plan(stages: list[dict] | None) -> tuple[list[dict], list[dict]] | None:
    """(leading per-token stages, tail stages) when every tail stage is one this module replays; else None."""
    if stages is None:
        return None
    k = 0
    while k < len(stages) and stages[k].get("type") in _LOCAL:
        k += 1
    local, tail = stages[:k], stages[k:]
    grouped = byte_fallback = False
    for n, stage in enumerate(tail):
        kind = stage.get("type")
        if kind == "ByteFallback" and not grouped:
            byte_fallback = grouped = True
        elif kind == "Fuse":
            grouped = True
        elif kind == "Strip":
            pass
        elif kind == "ByteLevel" and n == len(tail) - 1 and not byte_fallback:
            pass
        else:
            return None
    return local, tail


def _decoder_from(stages: list[dict]):
    """A `tokenizers` decoder built from JSON stages (decoders pickle as their JSON: __getstate__/__setstate__)."""
    decoder = decoders.Fuse()
    decoder.__setstate__(json.dumps({"type": "Sequence", "decoders": stages}).encode())
    return decoder


class _Pieces:
    """Per-token bytes of one tokenizer's decoding, as the library produces them, in linear time.

    The leading per-token stages (Metaspace, WordPiece, Replace, Strip) are run through the library's own decoder on
    one token at a time: a token's form depends only on whether it is the first one decoded (["", token] gives the
    form of a later token); forms are memoised per (id, first). A final ByteLevel maps each token's characters back
    to bytes through its table (the library then decodes the whole as lossy UTF-8, see `_utf8_ends`). The other
    stages are replayed over the pieces: ByteFallback (a run of <0xNN> tokens is one string when valid UTF-8, else
    one U+FFFD per byte, see `_invalid_run_ends`), Fuse, Strip. Specials are skipped before decoding, as the
    library does.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.backend = _backend("token_byte_ends", "tokenizer", tokenizer)
        self.stages = _stages(self.backend)
        plan = _split_plan(self.stages)
        self.fast = plan is not None
        self.local, self.tail = plan if plan is not None else ([], [])
        self.byte_level = bool(self.tail) and self.tail[-1]["type"] == "ByteLevel"  # per token: folded into _form
        self.tail = self.tail[:-1] if self.byte_level else self.tail
        self.local_decoder = _decoder_from(self.local) if self.local else None
        self.no_decoder = self.stages == []
        self.skipped = {i for i, tok in self.backend.get_added_tokens_decoder().items() if tok.special}
        self.memo: dict[tuple[int, bool], bytes | None] = {}

    def describe(self) -> str:
        kinds = [s.get("type") for s in self.stages] if self.stages is not None else ["custom"]
        return f"{_describe(self.tokenizer)} (decoder {'+'.join(kinds) or 'none'})"

    def _form(self, i: int, first: bool) -> bytes | None:
        key = (i, first)
        if key not in self.memo:
            token = self.backend.id_to_token(i)
            if token is None:
                form = None  # an id past the vocabulary: the library skips it too
            elif self.no_decoder:
                form = (token if first else " " + token).encode()  # tokens joined by spaces
            elif self.local_decoder is not None:
                form = self.local_decoder.decode([token] if first else ["", token]).encode()
            else:
                form = token.encode()
            if form is not None and self.byte_level:
                form = _byte_level_bytes(form)
            self.memo[key] = form
        return self.memo[key]

    def pieces(self, ids: list[int]) -> tuple[list[bytes], set[int]]:
        """(bytes of each position, positions whose bytes decode to no text: see `_invalid_run_ends`)."""
        out = [b""] * len(ids)
        where: list[int] = []
        items: list[bytes] = []
        for pos, i in enumerate(ids):
            if i in self.skipped:
                continue
            form = self._form(i, first=not items)
            if form is not None:
                where.append(pos)
                items.append(form)
        items, garbage = _replay(self.tail, items) if self.tail else (items, set())
        for pos, item in zip(where, items):
            out[pos] = item
        # a garbage item is never a run's last, so where[k + 1] exists; specials inside the run are garbage too
        return out, {pos for k in garbage for pos in range(where[k], where[k + 1])}


def _replay(tail: list[dict], items: list[bytes]) -> tuple[list[bytes], set[int]]:
    """Apply the tail stages to per-token byte pieces; `groups` are the tokens a stage sees as one string."""
    items = list(items)
    groups = [[k] for k in range(len(items))]
    garbage: set[int] = set()
    for stage in tail:
        kind = stage["type"]
        if kind == "ByteFallback":
            groups, garbage = _byte_fallback(items)
        elif kind == "Fuse":
            groups = [list(range(len(items)))] if items else []
        else:  # Strip
            for group in groups:
                _strip(items, group, stage["content"].encode(), stage["start"], stage["stop"])
    return items, garbage


def _byte_level_bytes(form: bytes) -> bytes:
    """ByteLevel: a token's characters back to the bytes they stand for (a token with other characters, such as an
    added token, is its own UTF-8)."""
    table = _byte_level_table()
    chars = form.decode("utf-8")
    return bytes(table[c] for c in chars) if all(c in table for c in chars) else form


def _byte_fallback(items: list[bytes]) -> tuple[list[list[int]], set[int]]:
    """Rewrite runs of <0xNN> pieces in place: their bytes when the run is valid UTF-8 (the run is then one string,
    one group), else U+FFFD each. Returns the new groups and the garbage items (see `_invalid_run_ends`)."""
    groups: list[list[int]] = []
    garbage: set[int] = set()
    k = 0
    while k < len(items):
        if not _BYTE_TOKEN.fullmatch(items[k]):
            groups.append([k])
            k += 1
            continue
        end = k
        while end < len(items) and _BYTE_TOKEN.fullmatch(items[end]):
            end += 1
        raw = bytes(int(_BYTE_TOKEN.fullmatch(items[x])[1], 16) for x in range(k, end))
        if _valid_utf8(raw):
            items[k:end] = [raw[x:x + 1] for x in range(len(raw))]
            groups.append(list(range(k, end)))
        else:
            text = _REPLACEMENT * len(raw)
            ends = _invalid_run_ends(len(raw))
            items[k:end] = [text[a:b] for a, b in zip([0, *ends], ends)]
            groups.extend([x] for x in range(k, end))
            garbage.update(range(k, end - 1))
        k = end
    return groups, garbage


def _valid_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _invalid_run_ends(count: int) -> list[int]:
    """Ends, in the run's text (one U+FFFD per byte token), of the tokens of a byte-fallback run that is not valid
    UTF-8: bytes that decode to no text, whatever else follows. Every token but the last holds part of that garbage
    and ends one byte into its first U+FFFD (and is never paired); the last ends after the run."""
    return [1] * (count - 1) + [count * len(_REPLACEMENT)]


def _strip(items: list[bytes], group: list[int], content: bytes, start: int, stop: int) -> None:
    """Strip: up to `start` leading and `stop` trailing `content` characters of the group's joined string."""
    joined = b"".join(items[x] for x in group)
    width = len(content)
    lead = 0
    while lead < start and joined.startswith(content, lead * width):
        lead += 1
    front = lead * width
    trail = 0
    while trail < stop and front + (trail + 1) * width <= len(joined) and \
            joined.endswith(content, front, len(joined) - trail * width):
        trail += 1
    back = trail * width
    for x in group:  # cut `front` bytes from the first pieces on
        cut = min(front, len(items[x]))
        items[x], front = items[x][cut:], front - cut
    for x in reversed(group):
        cut = min(back, len(items[x]))
        items[x], back = items[x][:len(items[x]) - cut], back - cut


def _invalid_spans(raw: bytes) -> list[tuple[int, int]]:
    """[start, end) of each invalid UTF-8 sequence of `raw` (maximal subparts: each decodes to one U+FFFD)."""
    spans, pos = [], 0
    while True:
        try:
            codecs.utf_8_decode(memoryview(raw)[pos:], "strict", True)
            return spans
        except UnicodeDecodeError as error:
            spans.append((pos + error.start, pos + error.end))
            pos += error.end


def _utf8_ends(pieces: list[bytes]) -> tuple[str, list[int]]:
    """The text of the joined pieces, decoded as lossy UTF-8 like the library (each invalid sequence becomes U+FFFD),
    and each piece's end in that text's bytes. An end inside a valid character (the piece holds part of it) stays
    inside it. An end inside an invalid sequence moves to the end of its U+FFFD: the bytes so far are the start of
    that sequence, so the prefix decodes to that same U+FFFD."""
    raw = b"".join(pieces)
    spans = _invalid_spans(raw)
    if not spans:
        return raw.decode("utf-8"), list(accumulate(map(len, pieces)))
    ends, shift, k = [], 0, 0
    for end in accumulate(map(len, pieces)):
        while k < len(spans) and spans[k][1] <= end:
            shift += len(_REPLACEMENT) - (spans[k][1] - spans[k][0])
            k += 1
        if k < len(spans) and spans[k][0] < end:  # a prefix ending here decodes to this very U+FFFD
            ends.append(spans[k][0] + shift + len(_REPLACEMENT))
        else:
            ends.append(end + shift)
    return raw.decode("utf-8", errors="replace"), ends


def _prefix_ends(tokenizer, ids: list[int], text: str) -> tuple[list[int], set[int]]:
    """Ends by decoding every prefix, O(n^2) decode calls, for any decoder: the length of the prefix's decoding when
    that is a prefix of the text. Otherwise the prefix stops inside a character (or a later token changed how it
    decodes), at a byte decoding cannot tell: it is reported one byte into the character where the decodings part,
    and returned in the set of positions never to pair. Made non-decreasing."""
    full = text.encode()
    ends, inside, best = [], set(), 0
    for k in range(1, len(ids) + 1):
        prefix = _decode(tokenizer, ids[:k]).encode()
        n = len(os.path.commonprefix([prefix, full]))
        if n < len(prefix):
            while 0 < n < len(full) and 0x80 <= full[n] < 0xC0:  # back to the start of that character
                n -= 1
            n = min(n + 1, len(full))
            inside.add(k - 1)
        best = max(best, n)
        ends.append(best)
    return ends, inside


def _byte_ends(pieces: _Pieces, ids: list[int], method: str) -> tuple[str, list[int], set[int]]:
    """(text, ends, positions never to pair: their bytes are not the text's)."""
    text = _decode(pieces.tokenizer, ids)
    if method == "prefix" or not pieces.fast:
        return (text, *_prefix_ends(pieces.tokenizer, ids, text))
    token_bytes, garbage = pieces.pieces(ids)
    ours, ends = _utf8_ends(token_bytes)
    if ours != text:
        a, b = ours.encode(), text.encode()
        at = len(os.path.commonprefix([a, b]))
        raise ValueError(f"token_byte_ends: the per-token bytes of {pieces.describe()} do not reproduce "
                         f"decode(ids, skip_special_tokens=True): they differ from byte {at} on ({a[at:at + 16]!r} "
                         f"vs {b[at:at + 16]!r}); pass method='prefix' to decode prefixes instead (O(n^2))")
    return text, ends, garbage


def token_byte_ends(tokenizer, ids, *, method: str = "auto") -> tuple[str, list[int]]:
    """(text, ends): the decoded text of `ids` and the cumulative UTF-8 byte end of each token in it.

    text is `tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)`: special tokens
    (EOS, pad, any added token marked special) and ids past the vocabulary contribute no bytes, so their end equals
    the previous token's. Ends are non-decreasing. An end at a character boundary means the tokens so far decode to
    exactly the text up to it; one inside a character means they hold part of it (the exact byte where bytes are
    known, else one byte in; the tokens of a byte-fallback run that is not UTF-8 all end one byte into it but the
    last). method "auto" computes each token's bytes in linear time for the decoders it knows (ByteLevel, Metaspace,
    WordPiece, Replace, Strip, ByteFallback, Fuse, none) and raises ValueError if they do not reproduce `text`;
    other decoders, and method "prefix", decode every prefix instead (O(n^2) decode calls; a token ending inside a
    character is then reported one byte into it).
    """
    func = "token_byte_ends"
    if method not in METHODS:
        raise ValueError(f"{func}: `method` must be one of {list(METHODS)}; got {method!r}")
    text, ends, _ = _byte_ends(_Pieces(tokenizer), _as_ids(func, ids), method)
    return text, ends


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


def teacher_view(rollouts, student_tokenizer, teacher_tokenizer, prompts_for_teacher: Sequence[str], *,
                 student_eos_ids: Sequence[int] | None = None, method: str = "auto") -> TeacherView:
    """The teacher's batch for `rollouts` and the pairing of student and teacher response positions.

    Row b: the teacher's encoding of `prompts_for_teacher[prompt_index[b]]` (add_special_tokens=True, as
    `oprd.rollout.encode_prompts` encodes the student's), left-padded to P_t, then its encoding (no special tokens)
    of the text decoded from the student's response ids, right-padded. When the response ends with one of
    `student_eos_ids` (default: the student tokenizer's eos_token_id; pass `oprd.rollout.eos_token_ids(model, tok)`
    for models stopping on several) that EOS is left out of the text, the teacher's eos_token_id is appended, and
    the two EOS positions are paired; a teacher without an EOS leaves the student's unpaired. Pads are the teacher's
    pad_token_id, else its eos_token_id. Only response positions are paired; a student token without a teacher token
    ending at the same byte (part of a character, a special token inside the response) is counted in `unpaired`.
    method "prefix" is the way around a ValueError from the linear byte ends: the student's ends by decoding every
    prefix, the teacher's from its offsets.
    """
    func = "teacher_view"
    if method not in METHODS:
        raise ValueError(f"{func}: `method` must be one of {list(METHODS)}; got {method!r}")
    _backend(func, "student_tokenizer", student_tokenizer)
    _backend(func, "teacher_tokenizer", teacher_tokenizer)
    student, teacher = _Pieces(student_tokenizer), _Pieces(teacher_tokenizer)
    _check_rollouts(func, rollouts, prompts_for_teacher)
    pad = _special_id(teacher_tokenizer, "pad_token_id", "eos_token_id")
    if pad is None:
        raise ValueError(f"{func}: `teacher_tokenizer` {_describe(teacher_tokenizer)} has neither a pad_token_id nor "
                         f"an eos_token_id to pad the teacher batch with")
    if student_eos_ids is None:
        student_eos_ids = [i for i in [_special_id(student_tokenizer, "eos_token_id")] if i is not None]
    if not isinstance(student_eos_ids, (list, tuple, set)) or \
            any(not isinstance(i, int) or isinstance(i, bool) for i in student_eos_ids):
        raise TypeError(f"{func}: `student_eos_ids` must be a list of ints or None; got {student_eos_ids!r}")
    eos = set(student_eos_ids)

    width, device = rollouts.prompt_width, rollouts.input_ids.device
    lengths = rollouts.response_mask[:, width:].ne(0).sum(dim=1).tolist()
    rows = [_student_row(student, r[width:width + n], eos, method)
            for r, n in zip(rollouts.input_ids.tolist(), lengths)]
    encodings = teacher_tokenizer([r.text for r in rows], add_special_tokens=False, return_offsets_mapping=True)
    index = rollouts.prompt_index.tolist()
    needed = sorted(set(index))
    encoded = teacher_tokenizer([prompts_for_teacher[i] for i in needed], add_special_tokens=True)["input_ids"]
    prompt_ids = dict(zip(needed, encoded))

    teacher_eos = _special_id(teacher_tokenizer, "eos_token_id")
    responses, s_flat, t_flat = [], [], []
    for b, row in enumerate(rows):
        encoding = {key: encodings[key][b] for key in ("input_ids", "offset_mapping")}
        t_ids, s_pos, t_pos = _row_pairs(func, row, teacher if method == "auto" else None, encoding, teacher_eos)
        responses.append(t_ids)
        s_flat.append((b, s_pos))
        t_flat.append((b, t_pos))
    ids, attention, p_t = _left_right([prompt_ids[i] for i in index], responses, pad, rollouts.attention_mask.dtype)
    s_width, t_width = rollouts.input_ids.shape[1], ids.shape[1]
    student_rows = [b * s_width + width + p for b, pos in s_flat for p in pos]
    teacher_rows = [b * t_width + p_t + p for b, pos in t_flat for p in pos]
    positions = int(sum(lengths))
    return TeacherView(ids.to(device), attention.to(device), p_t,
                       torch.tensor(student_rows, dtype=torch.long, device=device),
                       torch.tensor(teacher_rows, dtype=torch.long, device=device),
                       positions, positions - len(student_rows))

"""Byte ends of a tokenizer's tokens: where each token of the ids ends in the UTF-8 bytes of their decoded text.

Offsets are bytes of the UTF-8 text, so a byte-level token holding part of a character has an end inside that
character and pairs only with a teacher token ending at the same byte. The ends of ids a model sampled (possibly a
non-canonical tokenisation) are computed per token from the vocabulary strings and the tokenizer's decoder in linear
time and checked against `decode`; decoders not handled that way fall back to decoding every prefix (quadratic).
Special tokens contribute no bytes (the text is `decode(ids, skip_special_tokens=True)`).
"""

from __future__ import annotations

import codecs
import json
import os
import re
from functools import lru_cache
from itertools import accumulate

from tokenizers import decoders
from torch import Tensor

METHODS = ("auto", "prefix")
_LOCAL = {"Metaspace", "WordPiece", "Replace", "Strip"}  # per-token string maps; only the first token is special
_REPLACEMENT = "\ufffd".encode()
_BYTE_TOKEN = re.compile(rb"<0x([0-9A-Fa-f]{2})>")


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

"""Pairing of two tokenisations of one text by their byte boundaries.

A student token and a teacher token are paired when their spans END at the same byte of the text, because both
states have then seen exactly the same text (the byte-offset alignment of TRL's GOLD). Before the merge each side is
reduced to strictly increasing ends: from exact decoded ends the first token of each run of equal ends
(`_first_of_runs`), from character offsets the tokens with a span of their own (`_unshadowed`).
"""

from __future__ import annotations

from typing import Sequence


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

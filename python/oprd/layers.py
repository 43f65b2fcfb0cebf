"""Which layers are distilled, in Hugging Face `hidden_states` indexing, and how layers of models of different
depth are paired (OPRD-Bridge, PAPER_NOTES Eq. 11).

`hidden_states` of a model with L blocks has L + 1 entries: index 0 is the embedding output, index i (1..L) the
output of block i, and index L is the final, post-norm state (HF applies the last norm to the last entry).
"""

from __future__ import annotations

from typing import Sequence, Union

import torch

from oprd_kernels._validation import as_int

LAYER_MODES = ("last", "all", "even", "odd")
LayerSpec = Union[str, Sequence[int]]


def _check_depth(func: str, arg: str, value: object) -> int:
    number = as_int(value)
    if number is None:
        raise TypeError(f"{func}: `{arg}` must be an int (a number of transformer blocks); got {value!r}")
    if number < 1:
        raise ValueError(f"{func}: `{arg}` must be >= 1; got {number}")
    return number


def resolve_layers(spec: LayerSpec, num_layers: int) -> list[int]:
    """Sorted `hidden_states` indices selected by `spec` for a model with `num_layers` blocks.

    spec: "last" -> [L]; "all" -> [1..L] (every block output, as the paper's "all 28 layers"); "even" / "odd"
    count 0-based blocks as the authors' code does: "even" = blocks 0, 2, 4, ... = indices 1, 3, 5, ...; "odd" =
    blocks 1, 3, 5, ... = indices 2, 4, 6, ...; or an explicit sequence of ints in [0, L] (0 = embeddings),
    negative ints counting from the end as in Python (-1 = L). Duplicates and empty selections are rejected.
    """
    func = "resolve_layers"
    num_layers = _check_depth(func, "num_layers", num_layers)
    if isinstance(spec, str):
        if spec not in LAYER_MODES:
            raise ValueError(f"{func}: `spec` must be one of {list(LAYER_MODES)} or a list of layer indices; "
                             f"got {spec!r}")
        blocks = range(1, num_layers + 1)
        if spec == "last":
            return [num_layers]
        if spec == "all":
            return list(blocks)
        selected = [i for i in blocks if (i - 1) % 2 == (0 if spec == "even" else 1)]
        if not selected:
            raise ValueError(f"{func}: mode {spec!r} selects no layer of a model with {num_layers} block(s) (it "
                             f"counts 0-based blocks: 'odd' needs at least 2); use 'all' or 'last'")
        return selected
    if not isinstance(spec, (list, tuple)) or len(spec) == 0:
        raise TypeError(f"{func}: `spec` must be a mode name or a non-empty sequence of ints; got {spec!r}")
    indices = []
    for i in spec:
        if as_int(i) is None:
            raise TypeError(f"{func}: `spec` entries must be ints; got {i!r} in {list(spec)}")
        i = as_int(i)
        if not -(num_layers + 1) <= i <= num_layers:
            raise ValueError(f"{func}: `spec` entries must be hidden_states indices in [0, {num_layers}] (or "
                             f"[-{num_layers + 1}, -1] from the end) for a model with {num_layers} blocks; got {i}")
        indices.append(i % (num_layers + 1))
    if len(set(indices)) != len(indices):
        raise ValueError(f"{func}: `spec` lists a layer twice; got {list(spec)} (indices {indices})")
    return sorted(indices)


def proportional_map(num_student: int, num_teacher: int) -> list[int]:
    """0-based teacher block for each 0-based student block, per PAPER_NOTES Eq. 11 as the authors' code computes it.

    Student block i pairs with teacher block round(linspace(0, L_T - 1, L_S)[i]), first with first and last with
    last: the linspace is torch's float32 one and the rounding torch's, half to even (3 student blocks on 2 teacher
    blocks -> [0, 0, 1]). That float arithmetic is kept on purpose: in some pairs (23 -> 14, for one) a position that
    is a tie in exact arithmetic lands one ulp off it, and the reference pairs by where it lands. Equal depths give
    the identity; a one-block student pairs with the teacher's last block; a one-block teacher takes every student
    block.
    """
    func = "proportional_map"
    num_student = _check_depth(func, "num_student", num_student)
    num_teacher = _check_depth(func, "num_teacher", num_teacher)
    if num_student == num_teacher:
        return list(range(num_student))
    if num_student == 1:
        return [num_teacher - 1]
    if num_teacher == 1:
        return [0] * num_student
    positions = torch.linspace(0, num_teacher - 1, steps=num_student, dtype=torch.float32, device="cpu")
    return positions.round().long().tolist()


def hidden_state_pairs(student_indices: Sequence[int], num_student: int, num_teacher: int) -> list[int]:
    """Teacher `hidden_states` index paired with each student `hidden_states` index (from `resolve_layers`).

    Index 0 (embeddings) pairs with 0; block output i (1..L_S) pairs with the teacher block `proportional_map`
    gives it; the student's last index L_S (the post-norm state) pairs with the teacher's last, L_T.
    """
    blocks = proportional_map(num_student, num_teacher)
    for i in student_indices:
        if as_int(i) is None or not 0 <= i <= num_student:
            raise ValueError(f"hidden_state_pairs: `student_indices` must be ints in [0, {num_student}]; got {i!r}")
    return [0 if i == 0 else blocks[int(i) - 1] + 1 for i in student_indices]

"""oprd.layers against hand-worked cases."""

from fractions import Fraction

import pytest
import torch

from oprd.layers import hidden_state_pairs, proportional_map, resolve_layers


def test_modes_on_a_28_block_model():
    # even / odd count 0-based blocks, as the authors' code: even = blocks 0, 2, ... = hidden_states 1, 3, ...
    assert resolve_layers("last", 28) == [28]
    assert resolve_layers("all", 28) == list(range(1, 29))
    assert resolve_layers("even", 28) == [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27]
    assert resolve_layers("odd", 28) == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28]


def test_modes_on_odd_and_single_depth():
    assert resolve_layers("even", 5) == [1, 3, 5]
    assert resolve_layers("odd", 5) == [2, 4]
    assert resolve_layers("even", 1) == [1]
    assert resolve_layers("all", 1) == [1]


def test_a_mode_selecting_nothing_is_an_error():
    with pytest.raises(ValueError, match="'odd' selects no layer of a model with 1 block"):
        resolve_layers("odd", 1)


def test_explicit_lists_sorted_with_negative_and_embedding_indices():
    assert resolve_layers([3, 0, -1], 4) == [0, 3, 4]
    assert resolve_layers((-5,), 4) == [0]


@pytest.mark.parametrize("spec, match", [
    ("middle", "spec"), ([5], r"\[0, 4\]"), ([-6], "spec"), ([1, 1], "twice"), ([1, -4], "twice"), ([], "spec"),
])
def test_bad_layer_specs_raise_value_or_type_errors(spec, match):
    with pytest.raises((ValueError, TypeError), match=match):
        resolve_layers(spec, 4)


@pytest.mark.parametrize("spec", [[1.0], [True], 3])
def test_non_int_layer_entries_are_type_errors(spec):
    with pytest.raises(TypeError, match="spec"):
        resolve_layers(spec, 4)


@pytest.mark.parametrize("depth", [0, -3, 2.0, True])
def test_bad_depth(depth):
    with pytest.raises((ValueError, TypeError), match="num_layers"):
        resolve_layers("all", depth)


def test_proportional_map_28_to_36():
    # round(i * 35 / 27): worked by hand for the first, a middle and the last few blocks.
    m = proportional_map(28, 36)
    assert len(m) == 28
    assert m[:6] == [0, 1, 3, 4, 5, 6]  # 0, 1.30, 2.59, 3.89, 5.19, 6.48
    assert m[13] == 17  # 13 * 35 / 27 = 16.85
    assert m[-3:] == [32, 34, 35]  # 32.41, 33.70, 35
    assert all(b > a for a, b in zip(m, m[1:]))


def test_proportional_map_36_to_28():
    # round(i * 27 / 35): several student blocks share a teacher block.
    m = proportional_map(36, 28)
    assert len(m) == 36
    assert m[:6] == [0, 1, 2, 2, 3, 4]  # 0, .77, 1.54, 2.31, 3.09, 3.86
    assert m[-1] == 27 and m[-2] == 26  # 34 * 27 / 35 = 26.23
    assert all(b - a in (0, 1) for a, b in zip(m, m[1:]))
    assert sorted(set(m)) == list(range(28))


def test_proportional_map_edge_depths():
    assert proportional_map(28, 28) == list(range(28))
    assert proportional_map(1, 36) == [35]  # the single block is the last: last with last
    assert proportional_map(36, 1) == [0] * 36
    assert proportional_map(2, 36) == [0, 35]
    assert proportional_map(3, 2) == [0, 0, 1]  # 0.5 rounds half to even, as torch.round in the reference
    assert proportional_map(5, 3) == [0, 0, 1, 2, 2]  # 0, .5, 1, 1.5, 2 -> half to even


def _reference_map(num_student: int, num_teacher: int) -> list[int]:
    """The authors' rule: torch's float32 linspace rounded by torch (half to even); a one-block student takes the
    last teacher block. (Their identity and one-block-teacher shortcuts are what linspace gives anyway.)"""
    if num_student == 1:
        return [num_teacher - 1]
    return [int(torch.round(x)) for x in torch.linspace(0, num_teacher - 1, num_student)]


def test_proportional_map_is_the_reference_rule_on_a_sweep_of_depths():
    for ls in range(1, 70):
        for lt in range(1, 70):
            assert proportional_map(ls, lt) == _reference_map(ls, lt), (ls, lt)


def test_proportional_map_follows_float32_where_exact_arithmetic_would_tie():
    # 23 -> 14: block 11 sits at 11 * 13 / 22 = 6.5 exactly (half to even: 6), but torch's float32 linspace puts
    # it at 6.5000005, which rounds to 7. The reference pairs by the float value; so do we.
    exact = [round(Fraction(i * 13, 22)) for i in range(23)]
    assert proportional_map(23, 14) != exact
    assert proportional_map(23, 14)[11] == 7 and exact[11] == 6
    assert proportional_map(23, 14) == _reference_map(23, 14)


def test_proportional_map_matches_the_float_formula_away_from_ties():
    for ls, lt in [(28, 36), (36, 28), (24, 40), (7, 65), (12, 7)]:
        expected = [int((i / (ls - 1)) * (lt - 1) + 0.5) for i in range(ls)]
        assert proportional_map(ls, lt) == expected


def test_hidden_state_pairs_cover_embedding_blocks_and_final_state():
    assert hidden_state_pairs([0, 1, 14, 28], 28, 36) == [0, 1, 18, 36]
    assert hidden_state_pairs(resolve_layers("last", 36), 36, 28) == [28]
    with pytest.raises(ValueError, match="student_indices"):
        hidden_state_pairs([29], 28, 36)


@pytest.mark.parametrize("args", [(0, 5), (5, 0), (2.5, 3)])
def test_proportional_map_rejects_bad_depths(args):
    with pytest.raises((ValueError, TypeError), match="num_"):
        proportional_map(*args)

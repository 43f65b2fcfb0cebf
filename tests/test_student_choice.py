"""The demo's student is chosen by accuracy: the first candidate reaching the target share of the teacher's
accuracy, with the later candidates never evaluated; the best one, flagged, when none reaches it."""

from __future__ import annotations

import pytest
import torch

from oprd.student_choice import CandidateKeeper, choose_student


def candidates(accuracies):
    return [(10 * (i + 1), {"acc": torch.tensor(a)}) for i, a in enumerate(accuracies)]


def test_the_first_candidate_reaching_the_target_is_chosen_and_later_ones_are_not_evaluated():
    evaluated = []

    def accuracy_of(state):
        evaluated.append(float(state["acc"]))
        return float(state["acc"])

    choice, state = choose_student(candidates([0.1, 0.3, 0.66, 0.9, 0.7]), accuracy_of, teacher_accuracy=1.0,
                                   ratio=0.65)
    assert (choice.step, choice.reached, state["acc"].item()) == (30, True, pytest.approx(0.66))
    assert evaluated == pytest.approx([0.1, 0.3, 0.66])
    assert choice.candidates == [(10, pytest.approx(0.1)), (20, pytest.approx(0.3)), (30, pytest.approx(0.66))]


def test_when_none_reaches_the_target_the_best_is_taken_and_flagged():
    choice, _ = choose_student(candidates([0.2, 0.5, 0.4]), lambda s: float(s["acc"]), teacher_accuracy=1.0,
                               ratio=0.9)
    assert (choice.step, choice.reached) == (20, False) and len(choice.candidates) == 3


@pytest.mark.parametrize("ratio", [0, -0.1, 1.5])
def test_a_ratio_outside_0_1_is_refused(ratio):
    with pytest.raises(ValueError, match="--student-ratio must be in"):
        choose_student(candidates([0.5]), lambda s: 0.5, 1.0, ratio)


def test_the_keeper_copies_every_nth_step():
    model = torch.nn.Linear(2, 2)
    keeper = CandidateKeeper(3)
    for step in range(1, 8):
        with torch.no_grad():
            model.weight.fill_(step)
        keeper(step, model, 0.0)
    assert [s for s, _ in keeper.states] == [3, 6]
    assert [float(state["weight"][0, 0]) for _, state in keeper.states] == [3.0, 6.0]  # copies, not the live tensor
    with pytest.raises(ValueError, match="`every`"):
        CandidateKeeper(0)

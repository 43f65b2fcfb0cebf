"""The demo's student is chosen by accuracy: coarse to fine up to the first candidate reaching the target share of
the teacher's accuracy, the nearer of it and the last below, later candidates never evaluated; the best one, flagged,
when none reaches it."""

from __future__ import annotations

import pytest
import torch

from oprd.demo.student_choice import CandidateKeeper, choose_student


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


def test_the_last_below_is_taken_when_it_is_nearer_the_target():
    # the demo's distant setting: 0.145 just under a 0.15 target, then a jump to 0.477
    choice, state = choose_student(candidates([0.0, 0.145, 0.477]), lambda s: float(s["acc"]), 1.0, ratio=0.15)
    assert (choice.step, choice.reached, state["acc"].item()) == (20, True, pytest.approx(0.145))
    tie, _ = choose_student(candidates([0.25, 0.75]), lambda s: float(s["acc"]), 1.0, ratio=0.5)
    assert tie.step == 20  # equally near: the one reaching the target


def test_the_coarse_pass_then_the_fine_one_between_the_bracketing_coarse_candidates():
    evaluated = []

    def accuracy_of(state):
        evaluated.append(round(float(state["acc"]), 3))
        return float(state["acc"])

    accs = [0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.4, 0.62, 0.7, 0.9, 0.95, 0.97]
    choice, _ = choose_student(candidates(accs), accuracy_of, teacher_accuracy=1.0, ratio=0.65, stride=4)
    # coarse: steps 40 (0.05), 80 (0.62), 120 (0.97) reaches; fine: 90 (0.7) reaches; 0.62 is nearer 0.65 than 0.7
    assert evaluated == [0.05, 0.62, 0.97, 0.7]
    assert (choice.step, choice.accuracy) == (80, pytest.approx(0.62))
    assert [s for s, _ in choice.candidates] == [40, 80, 90, 120]


def test_the_fine_pass_starts_at_the_first_candidate():
    evaluated = []

    def accuracy_of(state):
        evaluated.append(round(float(state["acc"]), 3))
        return float(state["acc"])

    choice, _ = choose_student(candidates([0.8, 0.9, 0.95]), accuracy_of, teacher_accuracy=1.0, ratio=0.65, stride=3)
    assert evaluated == [0.95, 0.8] and choice.step == 10  # index 0 is a real candidate, not "none found"


def test_a_stride_not_dividing_the_count_still_evaluates_the_last_candidate():
    choice, _ = choose_student(candidates([0.1, 0.2, 0.3, 0.9]), lambda s: float(s["acc"]), 1.0, 0.65, stride=3)
    assert choice.step == 40 and choice.reached


def test_when_none_reaches_the_target_the_best_is_taken_and_flagged():
    choice, _ = choose_student(candidates([0.2, 0.5, 0.4]), lambda s: float(s["acc"]), teacher_accuracy=1.0,
                               ratio=0.9)
    assert (choice.step, choice.reached) == (20, False) and len(choice.candidates) == 3
    with pytest.raises(ValueError, match="`stride`"):
        choose_student(candidates([0.5]), lambda s: 0.5, 1.0, 0.5, stride=0)


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

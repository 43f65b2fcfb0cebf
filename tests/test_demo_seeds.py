"""Combining a demo method's seeds (mean and half-range spread) and the paper's gap closed beside ours."""

from __future__ import annotations

import pytest

from oprd.demo.report import paper_gap_closed, render_tables
from oprd.demo.seeds import combine_seeds


def entry(accuracy, seed):
    return {"seed": seed, "accuracy": accuracy, "gap_closed": accuracy / 2, "seconds": 2.0, "seconds_per_step": 0.5,
            "update_delta_peak_mb": 3.0 if seed == 0 else 0.0, "cosine_per_layer": {"1": accuracy, "2": 1.0},
            "accuracy_curve": [(0, 0.0), (4, accuracy)], "cosine_curve": []}


def test_mean_and_spread_over_seeds():
    combined = combine_seeds([entry(0.5, 0), entry(0.7, 1)], [0, 1])
    assert combined["accuracy"] == pytest.approx(0.6) and combined["accuracy_spread"] == pytest.approx(0.1)
    assert combined["gap_closed"] == pytest.approx(0.3) and combined["gap_closed_spread"] == pytest.approx(0.05)
    assert combined["update_delta_peak_mb"] == 3.0 and combined["seeds"] == [0, 1]
    assert combined["cosine_per_layer"] == {"1": pytest.approx(0.6), "2": 1.0}
    assert "accuracy_teacher_head" not in combined  # absent from the entries: not invented
    with pytest.raises(ValueError, match="one entry per seed"):
        combine_seeds([entry(0.5, 0)], [0, 1])


def test_the_paper_gap_is_computed_from_its_table():
    top1 = paper_gap_closed("opd_top1")
    assert top1[0] == pytest.approx((42.3 - 32.9) / (50.8 - 32.9))
    assert paper_gap_closed("oprd+opd") is None and paper_gap_closed("teacher") is None


def test_tables_show_mean_and_spread_and_the_paper_column():
    results = {"teacher_accuracy": 0.9, "student_accuracy": 0.5,
               "settings": {"eval_samples": 4, "eval_size": 96, "select_size": 64},
               "methods": {"oprd": combine_seeds([entry(0.5, 0), entry(0.7, 1)], [0, 1])}}
    tables = render_tables(results)
    assert "| oprd | 0.600 ± 0.100 | 30% ± 5% |" in tables
    assert "| oprd | 30% ± 5% | 94% | 93% | 98% |" in tables  # beside the paper's AIME24/25, AIMO

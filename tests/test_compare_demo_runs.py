"""scripts/compare_demo_runs.py: timings and the output path are ignored, any other difference is reported."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import compare_demo_runs  # noqa: E402

RUN = {"seed": 0, "seconds_per_step": 0.1, "accuracy_curve": [[0, 0.68], [40, 0.8]]}
RESULTS = {"settings": {"out": "a", "seed": 0}, "teacher_accuracy": 0.99,
           "methods": {"oprd": {"accuracy": 0.91, "seconds": 20.5, "runs": [RUN]}}}


def write(directory: Path, results: dict) -> Path:
    directory.mkdir()
    (directory / "results.json").write_text(json.dumps(results))
    return directory


def test_runs_that_differ_only_in_timings_and_path_are_the_same(tmp_path, capsys):
    other = json.loads(json.dumps(RESULTS))
    other["settings"]["out"] = "b"
    other["methods"]["oprd"]["seconds"] = 99.0
    other["methods"]["oprd"]["runs"][0]["seconds_per_step"] = 0.7
    assert compare_demo_runs.main([str(write(tmp_path / "a", RESULTS)), str(write(tmp_path / "b", other))]) == 0
    assert "0 differ" in capsys.readouterr().out


def test_a_changed_number_deep_in_a_curve_is_reported(tmp_path, capsys):
    other = json.loads(json.dumps(RESULTS))
    other["methods"]["oprd"]["runs"][0]["accuracy_curve"][1][1] = 0.81
    assert compare_demo_runs.main([str(write(tmp_path / "a", RESULTS)), str(write(tmp_path / "b", other))]) == 1
    out = capsys.readouterr().out
    assert "1 differ" in out and ".methods.oprd.runs[0].accuracy_curve[1][1]: 0.8 vs 0.81" in out


def test_a_missing_value_is_a_difference(tmp_path):
    other = json.loads(json.dumps(RESULTS))
    del other["teacher_accuracy"]
    assert compare_demo_runs.main([str(write(tmp_path / "a", RESULTS)), str(write(tmp_path / "b", other))]) == 1

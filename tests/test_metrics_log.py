"""oprd.runs.metrics_log: a torn last line is dropped with a warning; damage anywhere else is an error naming the file
and the line; truncation keeps the rows up to a step, byte for byte."""

import json

import pytest

from oprd.runs import metrics_log
from oprd.runs.metrics_log import MetricsLogWarning


def write_rows(path, steps):
    for step in steps:
        metrics_log.append(path, {"step": step, "loss": 1.0 / step})


def test_append_and_read_round_trip(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert metrics_log.read(path) == []
    write_rows(path, [1, 2])
    assert metrics_log.read(path) == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}]
    assert path.read_text().count("\n") == 2


def test_a_torn_last_line_is_dropped_with_a_warning(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_rows(path, [1, 2])
    intact = path.read_bytes()
    with open(path, "ab") as f:
        f.write(b'{"loss": 0.33, "st')  # a crash in the middle of the third append
    with pytest.warns(MetricsLogWarning, match=r"metrics.jsonl, line 3: the last line is incomplete"):
        assert [row["step"] for row in metrics_log.read(path)] == [1, 2]
    with pytest.warns(MetricsLogWarning):
        metrics_log.truncate(path, 2)
    assert path.read_bytes() == intact  # the torn line is gone, the rows kept are unchanged
    with open(path, "ab") as f:
        f.write(b'{"step": 3, "x": "\xe2\x82')  # torn inside a multi-byte character: still only a warning
    with pytest.warns(MetricsLogWarning):
        assert len(metrics_log.read(path)) == 2


def test_damage_before_the_last_line_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_rows(path, [1])
    with open(path, "a") as f:
        f.write('{"step": 2, "lo\n')  # an unparsable line that is not the last
    write_rows(path, [3])
    with pytest.raises(ValueError, match=rf"{path}, line 2: not valid JSON .*--overwrite"):
        metrics_log.truncate(path, 3)
    path.write_text(json.dumps({"step": 1}) + "\n" + json.dumps({"loss": 2.0}) + "\n")
    with pytest.raises(ValueError, match=rf"{path}, line 2: not a metrics row"):
        metrics_log.read(path)


def test_truncate_keeps_rows_up_to_the_step_and_skips_blank_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_rows(path, [1, 2])
    with open(path, "a") as f:
        f.write("\n")
    write_rows(path, [3, 4])
    metrics_log.truncate(path, 2)
    assert [row["step"] for row in metrics_log.read(path)] == [1, 2]
    assert not (tmp_path / "metrics.jsonl.tmp").exists()
    metrics_log.truncate(tmp_path / "absent.jsonl", 1)  # nothing to do
    assert not (tmp_path / "absent.jsonl").exists()

"""The run's metrics log, `<run.dir>/metrics.jsonl`: one JSON object per line, each with an int "step".

Each row is appended with a single write, so a crash can tear only the last line. A last line that does not parse
is therefore dropped with a warning. An unparsable line anywhere else, or a row without an int "step", means the
file was damaged some other way. Reading then stops with an error naming the file and the line, instead of
guessing. Blank lines are skipped.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path


class MetricsLogWarning(UserWarning):
    """A torn last line of the metrics log was dropped."""


def append(path: Path, row: dict) -> None:
    """Appends `row` as one line, written in one call."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")


def read(path: Path) -> list[dict]:
    """The rows of the log at `path` (none when it does not exist)."""
    return [row for _, row in _rows(Path(path))]


def truncate(path: Path, step: int) -> None:
    """Keeps the rows with "step" <= `step`, the ones a resumed run does not log again. The file is replaced
    atomically, and a torn last line goes with the dropped rows."""
    path = Path(path)
    if not path.exists():
        return
    kept = "".join(line + "\n" for line, row in _rows(path) if row["step"] <= step)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _rows(path: Path) -> list[tuple[str, dict]]:
    """(line text, parsed row) for every non-blank line, with the rule of the module docstring."""
    if not path.exists():
        return []
    lines = [(number, raw) for number, raw in enumerate(path.read_bytes().split(b"\n"), start=1) if raw.strip()]
    rows = []
    for i, (number, raw) in enumerate(lines):
        try:
            text = raw.decode("utf-8")
            row = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            if i == len(lines) - 1:
                warnings.warn(f"{path}, line {number}: the last line is incomplete (a crash while it was written?) "
                              f"and is dropped", MetricsLogWarning, stacklevel=3)
                break
            raise ValueError(f"{path}, line {number}: not valid JSON ({e}), and only the last line can be torn by a "
                             "crash; repair or delete that line, or start the run again with --overwrite") from None
        if not isinstance(row, dict) or isinstance(row.get("step"), bool) or not isinstance(row.get("step"), int):
            raise ValueError(f"{path}, line {number}: not a metrics row (a JSON object with an int \"step\"); repair "
                             "or delete that line, or start the run again with --overwrite")
        rows.append((text, row))
    return rows

"""Checks on a run directory when a run starts. A fresh run must not mix with another run's outputs, and crash
debris is removed.

A run's outputs are `checkpoints/step_*`, `checkpoints/latest`, `metrics.jsonl` and `final/` (written by
`oprd train`). A fresh run into a directory that holds any of them is refused, because a later `--resume` would
continue the old run's checkpoints. The user either continues the old run (`--resume`) or asks to overwrite it.
Overwriting deletes exactly those outputs. It never deletes other files or the directory itself, so a mistyped
`run.dir` cannot wipe a folder. Each checkpoint is first renamed to `.tmp-*` and then deleted, so a crash in the
middle leaves only debris. Symbolic links are unlinked, never followed.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from oprd.runs.checkpoint import latest_checkpoint, remove_temporaries

_STEP_PREFIX = "step_"


class RunDirError(ValueError):
    """The run directory holds another run's outputs; the message says how to continue."""


def remove_leftovers(run_dir: Path) -> None:
    """Removes what crashed saves leave behind: `.tmp-*` in `checkpoints/`, and the metrics log's temporary copy."""
    remove_temporaries(Path(run_dir) / "checkpoints")
    (Path(run_dir) / "metrics.jsonl.tmp").unlink(missing_ok=True)


def previous_outputs(run_dir: Path) -> list[Path]:
    """The outputs of an earlier run found in `run_dir` (empty: a fresh run may start there)."""
    run_dir, ckpt_dir = Path(run_dir), Path(run_dir) / "checkpoints"
    found = sorted(p for p in ckpt_dir.glob(f"{_STEP_PREFIX}*")) if ckpt_dir.is_dir() else []
    found += [p for p in (run_dir / "metrics.jsonl", run_dir / "final") if p.exists() or p.is_symlink()]
    return found


def prepare_fresh_run(run_dir: Path, overwrite: bool) -> None:
    """Makes `run_dir` ready for a run from step 0. Raises RunDirError when it holds another run's outputs, unless
    `overwrite` is set, in which case exactly those outputs (and `checkpoints/latest`) are deleted."""
    run_dir = Path(run_dir)
    found = previous_outputs(run_dir)
    if not found:
        return
    if not overwrite:
        names = ", ".join(str(p.relative_to(run_dir)) for p in found[:4]) + (", ..." if len(found) > 4 else "")
        raise RunDirError(f"run directory {run_dir} already holds a run ({names}); continue it with --resume, or "
                          "start again with --overwrite, which deletes its checkpoints, metrics and final model")
    ckpt_dir = run_dir / "checkpoints"
    for path in found:
        if path.is_symlink() or not path.is_dir():
            path.unlink()
        elif path.parent == ckpt_dir:  # a checkpoint: vanishes in one rename, then is deleted
            aside = Path(tempfile.mkdtemp(prefix=f".tmp-del-{path.name}-", dir=ckpt_dir))
            path.replace(aside)
            shutil.rmtree(aside)
        else:
            shutil.rmtree(path)
    (ckpt_dir / "latest").unlink(missing_ok=True)


def start_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> Path | None:
    """The run directory made ready for a run (debris removed; for a fresh run, checked or overwritten as
    `prepare_fresh_run` says), and the newest intact checkpoint to resume from (None for a fresh run)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_leftovers(run_dir)
    if not resume:
        prepare_fresh_run(run_dir, overwrite)
        return None
    return latest_checkpoint(run_dir)

"""Crash-safe training checkpoints that resume a run exactly, and that are checked before they are trusted.

A checkpoint is the directory `<run_dir>/checkpoints/step_<step:08d>/`:

    model/               HF `save_pretrained` output (config + safetensors weights)
    optimizer.pt         optimizer state dict
    scheduler.pt         LR scheduler state dict
    rng_state.pt         Python `random`, NumPy global, torch CPU and CUDA generator states (of rank 0)
    rng_state.rank<r>.pt the same for rank r >= 1 of a multi-process run (`rng_states`)
    trainer_state.json   step, data position, `extra`
    manifest.json        size and SHA-256 of every file above (`oprd.runs.manifest`); written last, it marks completion

Atomicity: everything is written into `.tmp-...` next to the target and fsynced. Then the manifest is written (to a
temporary name, fsynced, renamed), and the directory is renamed into place with `os.replace`. A crash at any point
therefore leaves either no `step_*` directory or a complete one. `latest` (a text file naming the newest checkpoint,
for people and tools) is replaced the same way. Old checkpoints are renamed to `.tmp-...` before deletion.
`.tmp-*` leftovers are never read, and the next save removes them (so does the trainer when a run starts). One
writer per run directory. Re-saving an existing step moves the old directory aside first. A hard kill between the
two renames leaves the step before as the newest checkpoint, and both copies stay in `.tmp-*` until the next save.

Integrity: `latest_checkpoint` returns the highest-numbered checkpoint whose manifest verifies: every listed file is
present with its recorded size and SHA-256. It warns about each newer broken checkpoint, naming it and what is
wrong, and raises `CheckpointError` when none verifies. Files the manifest does not list are ignored and never read.
A `step_*` directory without a manifest (saved by an oprd older than manifests, or not by oprd) cannot be verified
and counts as broken: such a run cannot be resumed, only started again.

Safety: every `.pt` file is read with `torch.load(weights_only=True)`, so a checkpoint file cannot run code (the
reference implementation's `weights_only=False` could). Hence the RNG states are stored as tensors and plain types.
The files are read and written by `checkpoint_files`, the random states captured and restored by `rng_state`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from oprd.runs.atomic_files import fsync_dir, write_atomic
from oprd.runs.checkpoint_files import fsync_tree, load_model_weights, load_pt, read_weights, write_synced
from oprd.runs.manifest import MANIFEST, build_manifest, check_manifest
from oprd.runs.rng_state import capture_rng_state, rank_rng_file, restore_rng_state

__all__ = ["TrainerState", "CheckpointError", "CheckpointWarning", "save_checkpoint", "latest_checkpoint",
           "load_checkpoint", "checkpoint_problems", "capture_rng_state", "checkpoint_states"]

_STATE = "trainer_state.json"
_FILES = (_STATE, "optimizer.pt", "scheduler.pt", "rng_state.pt", "model/config.json")
_SINGLE, _INDEX = "model/model.safetensors", "model/model.safetensors.index.json"  # single file or sharded weights
_TMP = ".tmp-"
_STEP_DIR = re.compile(r"step_(\d+)")
_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint (or every checkpoint of a run) is broken; the message names each one and what is wrong."""


class CheckpointWarning(UserWarning):
    """A broken checkpoint was skipped in favour of an older intact one."""


@dataclass
class TrainerState:
    """The trainer's own progress: optimizer steps taken, prompts consumed, and small JSON-serialisable extras."""

    step: int
    data_position: int
    extra: dict = field(default_factory=dict)


def save_checkpoint(run_dir: str | Path, *, model, optimizer, scheduler, state: TrainerState, keep: int = 2,
                    rng_states: list[dict] | None = None, model_state: dict | None = None,
                    optimizer_state: dict | None = None) -> Path:
    """Writes <run_dir>/checkpoints/step_<step:08d> atomically, with its manifest last, then updates
    <run_dir>/checkpoints/latest (a small text file naming the newest checkpoint directory, itself replaced
    atomically). Then deletes older complete checkpoints beyond `keep`, never the one just written. Returns the
    checkpoint path.

    rng_states: every rank's `capture_rng_state()` in rank order, when several processes train (rank 0, the one
    writing, saves its own in any case). model_state / optimizer_state: the whole states to write instead of
    `model.state_dict()` / `optimizer.state_dict()` (a sharded model's, gathered by `oprd.parallel.sharding`).

    A checkpoint already present for the same step is replaced. `state.extra` must survive a JSON round trip
    unchanged (no tuples, non-string keys or NaN), so that a resumed run sees exactly what was saved."""
    state_text = _state_text(state)  # validate before anything touches the disk
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
        raise ValueError(f"keep must be an int >= 1, got {keep!r}")
    ckpt_dir = Path(run_dir) / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step_{state.step:08d}"

    tmp, aside = Path(tempfile.mkdtemp(prefix=f"{_TMP}{final.name}-", dir=ckpt_dir)), None
    try:
        model.save_pretrained(tmp / "model", save_original_format=False,  # keys as in model.state_dict()
                              **({} if model_state is None else {"state_dict": model_state}))
        torch.save(optimizer.state_dict() if optimizer_state is None else optimizer_state, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(capture_rng_state(), tmp / "rng_state.pt")
        for rank, rng in enumerate((rng_states or [])[1:], start=1):
            torch.save(rng, tmp / rank_rng_file(rank))
        write_synced(tmp / _STATE, state_text)
        fsync_tree(tmp)
        _write_manifest(tmp)  # last: its presence means everything it lists is on disk
        if final.exists():  # re-save of a step: a rename cannot replace a non-empty directory, so move it aside
            aside = tempfile.mkdtemp(prefix=f"{_TMP}old-{final.name}-", dir=ckpt_dir)
            os.replace(final, aside)
        os.replace(tmp, final)
        fsync_dir(ckpt_dir)
    except BaseException:
        if aside is not None and not final.exists():
            os.replace(aside, final)
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    fd, latest_tmp = tempfile.mkstemp(prefix=f"{_TMP}latest-", dir=ckpt_dir)
    os.close(fd)
    write_synced(Path(latest_tmp), final.name + "\n")
    os.replace(latest_tmp, ckpt_dir / "latest")
    fsync_dir(ckpt_dir)

    others = sorted((p for p in _step_dirs(ckpt_dir) if p != final and (p / MANIFEST).is_file()), key=_step_of,
                    reverse=True)
    for old in others[keep - 1:]:
        os.replace(old, tempfile.mkdtemp(prefix=f"{_TMP}del-{old.name}-", dir=ckpt_dir))  # atomic "delete"
    remove_temporaries(ckpt_dir)
    fsync_dir(ckpt_dir)
    return final


def latest_checkpoint(run_dir: str | Path, *, hashes: bool = True, warn_skipped: bool = True) -> Path | None:
    """The highest-numbered checkpoint of `run_dir` that verifies, or None when it has no `step_*` directory.

    Verifying means that every file in the manifest is present with its recorded size and SHA-256 (with
    `hashes=False`, the cheap check of presence and sizes only, as a check before anything loads). Each newer
    checkpoint that fails gets a CheckpointWarning naming its path and what is wrong (with `warn_skipped=False`, only
    when none verifies). When none verifies, CheckpointError names the run directory and every broken checkpoint."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    found, broken = None, []
    for path in sorted(_step_dirs(ckpt_dir), key=_step_of, reverse=True):
        problems = checkpoint_problems(path, hashes)
        if not problems:
            found = path
            break
        broken.append((path, problems))
    if found is None or warn_skipped:
        for path, problems in broken:
            warnings.warn(f"checkpoint {path} is broken, skipped: {'; '.join(problems)}", CheckpointWarning,
                          stacklevel=2)
    if found is None and broken:
        names = ", ".join(f"{path} ({'; '.join(problems)})" for path, problems in broken)
        raise CheckpointError(f"{run_dir}: no intact checkpoint to resume from; broken: {names}. Restore an intact "
                              "checkpoint there, or start the run again with --overwrite")
    return found


def checkpoint_problems(path: str | Path, hashes: bool = True) -> list[str]:
    """What is wrong with the checkpoint at `path` (empty: intact). With `hashes=False` only presence and sizes are
    checked, which is cheap, and overwritten bytes go unnoticed."""
    return _inspect(Path(path), hashes)[1]


def _inspect(path: Path, hashes: bool) -> tuple[set[str], list[str]]:
    """(the files the manifest lists, what is wrong with the checkpoint at `path`)."""
    if not path.is_dir():
        return set(), ["not a directory"]
    if not (path / MANIFEST).is_file():
        return set(), [f"{MANIFEST} is missing (saved by an oprd older than checkpoint manifests, or not by oprd): "
                       "cannot be verified"]
    listed, problems = check_manifest(path, hashes)
    if not problems:
        required = [*_FILES, _INDEX if _INDEX in listed else _SINGLE]
        problems = [f"{MANIFEST} does not list {f}" for f in required if f not in listed]
    return listed, problems


def load_checkpoint(path: str | Path, *, model, optimizer=None, scheduler=None, restore_rng: bool = True,
                    verify: bool = True, rank: int = 0) -> TrainerState:
    """Loads weights into `model` in place (from safetensors, strict key match: ValueError naming missing/unexpected
    keys; model None: not loaded, for a sharded model, see `checkpoint_states`), then optimizer and scheduler state
    when given, restores the RNG states, and returns the TrainerState.

    The checkpoint is checked against its manifest first, and any problem raises CheckpointError naming the path and
    the file. With `verify=False` only the files' presence and sizes are checked: pass that only right after
    `latest_checkpoint` has verified the path, to avoid hashing everything twice. A missing directory raises
    FileNotFoundError. `.pt` files are read with `torch.load(weights_only=True)`, and one holding anything but
    tensors and plain types raises ValueError. `rank`: whose RNG states to restore (a multi-process run's rank)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {path}")
    listed, problems = _inspect(path, hashes=verify)
    if problems:
        raise CheckpointError(f"{path} is not an intact checkpoint: {'; '.join(problems)}")
    state = _parse_state(path / _STATE)
    if model is not None:
        load_model_weights(model, path / "model", sharded=_INDEX in listed)
    if optimizer is not None:
        optimizer.load_state_dict(load_pt(path / "optimizer.pt"))
    if scheduler is not None:
        scheduler.load_state_dict(load_pt(path / "scheduler.pt"))
    if restore_rng:
        rng_file = "rng_state.pt" if rank == 0 else rank_rng_file(rank)
        if rng_file not in listed:
            raise CheckpointError(f"{path} holds no random state for rank {rank} ({rng_file}): it was saved by a run "
                                  f"of fewer processes")
        restore_rng_state(load_pt(path / rng_file))
    return state


def checkpoint_states(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The checkpoint's model weights (as saved: a tied weight once) and optimizer state, as dicts, for a sharded
    model that loads them through `oprd.parallel.sharding.load_full_state`. Check the checkpoint first
    (`load_checkpoint`)."""
    weights = read_weights(Path(path) / "model", sharded=(Path(path) / _INDEX).is_file())
    return weights, load_pt(Path(path) / "optimizer.pt")


def remove_temporaries(ckpt_dir: str | Path) -> None:
    """Deletes the `.tmp-*` entries of a checkpoints directory: the debris of crashed saves, and replaced or retired
    checkpoints. Only safe while no save is running in that directory (one writer per run directory)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return
    for leftover in ckpt_dir.glob(f"{_TMP}*"):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


# --- trainer state --------------------------------------------------------------------------------------------------

def _state_text(state: TrainerState) -> str:
    """trainer_state.json's text; rejects states that would not come back unchanged from it."""
    for name in ("step", "data_position"):
        value = getattr(state, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"TrainerState.{name} must be an int >= 0, got {value!r}")
    if not isinstance(state.extra, dict):
        raise ValueError(f"TrainerState.extra must be a dict, got {type(state.extra).__name__}")
    payload = {"format": _FORMAT, "step": state.step, "data_position": state.data_position, "extra": state.extra}
    try:
        text = json.dumps(payload, allow_nan=False, indent=1)
    except (TypeError, ValueError) as e:
        raise ValueError(f"TrainerState.extra is not JSON-serialisable: {e}") from e
    if json.loads(text)["extra"] != state.extra:
        raise ValueError("TrainerState.extra changes in a JSON round trip (tuples or non-string keys?)")
    return text


def _parse_state(file: Path) -> TrainerState:
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise ValueError(f"{file}: not a trainer state of format {_FORMAT}")
    state = TrainerState(data.get("step"), data.get("data_position"), data.get("extra"))
    try:
        _state_text(state)
    except ValueError as e:
        raise ValueError(f"{file}: {e}") from e
    return state


# --- files -----------------------------------------------------------------------------------------------------------

def _step_dirs(ckpt_dir: Path) -> list[Path]:
    """Every `step_*` directory of `ckpt_dir`, complete or not."""
    if not ckpt_dir.is_dir():
        return []
    return [p for p in ckpt_dir.iterdir() if _STEP_DIR.fullmatch(p.name) and p.is_dir()]


def _step_of(path: Path) -> int:
    return int(_STEP_DIR.fullmatch(path.name).group(1))


def _write_manifest(root: Path) -> None:
    """Writes root/manifest.json atomically (temporary name, fsync, rename, fsync of the directory)."""
    write_atomic(root / MANIFEST, lambda tmp: tmp.write_text(build_manifest(root)))

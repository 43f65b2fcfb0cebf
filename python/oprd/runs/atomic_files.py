"""Files written so that a crash leaves the old version or the new one, never a torn one: the content goes to a
temporary name beside the target, is fsynced, renamed over the target, and the directory entry is fsynced."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def fsync_dir(path: str | os.PathLike) -> None:
    """Makes the directory's entries (new names, renames) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(file: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """`write(tmp)` writes the content to a temporary path; it then replaces `file` atomically. Returns `file`."""
    file = Path(file)
    tmp = file.with_name(file.name + ".tmp")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, file)
    fsync_dir(file.parent)
    return file

"""Integrity manifest of a directory: the size and SHA-256 of every file in it, in `manifest.json`.

A checkpoint writes its manifest last, so the manifest marks it complete, and resume checks the manifest before it
trusts the checkpoint. A truncated file shows up as a size mismatch, and overwritten bytes as a hash mismatch at the
same size. Files the manifest does not list are ignored: they are neither checked nor read. The manifest catches
crashes, full disks and bit rot. It does not stop an attacker, who could rewrite the manifest as well;
`weights_only` loading is what keeps checkpoint files from running code.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MANIFEST = "manifest.json"
_FORMAT = 1
_CHUNK = 1 << 20


def sha256_of(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def build_manifest(root: Path) -> str:
    """The manifest text for every file under `root` (except the manifest itself and its temporary copy)."""
    files = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            file = Path(dirpath) / name
            rel = file.relative_to(root).as_posix()
            if rel not in (MANIFEST, MANIFEST + ".tmp"):
                files[rel] = {"size": file.stat().st_size, "sha256": sha256_of(file)}
    return json.dumps({"format": _FORMAT, "files": dict(sorted(files.items()))}, indent=1)


def check_manifest(root: Path, hashes: bool = True) -> tuple[set[str], list[str]]:
    """(the files `root/manifest.json` lists, the problems found). No problems means every listed file is present
    with its recorded size and, when `hashes`, its recorded SHA-256. Each problem names the file and what is wrong."""
    try:
        data = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return set(), [f"{MANIFEST} is missing"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return set(), [f"{MANIFEST} is unreadable ({e})"]
    entries = data.get("files") if isinstance(data, dict) and data.get("format") == _FORMAT else None
    if not isinstance(entries, dict) or not all(_is_entry(e) for e in entries.values()):
        return set(), [f"{MANIFEST} is not a manifest of format {_FORMAT}"]
    problems = []
    for rel, entry in entries.items():
        file = root / rel
        if not file.is_file():
            problems.append(f"{rel} is missing")
        elif (size := file.stat().st_size) != entry["size"]:
            problems.append(f"{rel} has {size} bytes, the manifest says {entry['size']} (truncated or replaced)")
        elif hashes and sha256_of(file) != entry["sha256"]:
            problems.append(f"{rel} has the recorded size but not the recorded SHA-256 (its bytes were overwritten)")
    return set(entries), problems


def _is_entry(entry) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("size"), int) and not isinstance(entry["size"], bool)
            and isinstance(entry.get("sha256"), str))

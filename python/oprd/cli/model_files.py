"""What a local Hugging Face model directory must hold before it is worth loading, checked from file names, sizes and
headers alone (no tensor is read).

A directory needs `config.json` and weights in one of the layouts `transformers` loads (`WEIGHT_FILES`, in its order
of preference); a student also needs tokenizer files. Safetensors weights are checked against their own header: the
8-byte header length, the JSON header, and a file exactly as long as the header's largest `data_offsets` end (what
safetensors itself demands; a copy cut short fails here instead of in the middle of loading). Sharded weights need
every shard their index names. Each problem is a ValueError / FileNotFoundError naming the config key, the path and
what was looked for.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model")
_MAX_HEADER = 100_000_000  # safetensors refuses larger headers too


def check_model_dir(path: str, key: str, tokenizer: bool = False) -> Path:
    """`path` (the value of config key `key`) as a Path, after checking config.json, the weights and, with
    `tokenizer`, the tokenizer files."""
    directory = Path(path)
    where = f"`{key}` {path!r}"
    if not directory.exists():
        raise FileNotFoundError(f"{where} is not a local Hugging Face model directory (it does not exist); set "
                                f"{key} to a directory holding config.json and the weights")
    if not directory.is_dir():
        raise ValueError(f"{where} is not a local Hugging Face model directory (it is a file); set {key} to the "
                         "directory that holds config.json and the weights")
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{where} is not a local Hugging Face model directory (no config.json); set {key} "
                                "to the directory `save_pretrained` wrote")
    _check_weights(directory, where)
    if tokenizer and not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(f"{where} has no tokenizer (looked for {', '.join(TOKENIZER_FILES)}); save "
                                "the tokenizer there with tokenizer.save_pretrained")
    return directory


def _check_weights(directory: Path, where: str) -> None:
    name = next((n for n in WEIGHT_FILES if (directory / n).is_file()), None)
    if name is None:
        raise FileNotFoundError(f"{where} has no weights (looked for {', '.join(WEIGHT_FILES)})")
    if not name.endswith(".index.json"):
        problem = weight_file_problem(directory / name)
        if problem:
            raise ValueError(f"{where}: {problem}; copy the weights again")
        return
    index = directory / name
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise ValueError(f"{where}: {index} is not a weight index (JSON with a `weight_map` of tensor names to "
                         "shard files); copy the weights again") from None
    missing = [s for s in shards if not (directory / s).is_file()]
    if missing:
        raise FileNotFoundError(f"{where}: {len(missing)} of the {len(shards)} shards {name} names are missing "
                                f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); copy them there")
    for shard in shards:
        problem = weight_file_problem(directory / shard)
        if problem:
            raise ValueError(f"{where}: {problem}; copy the weights again")


def weight_file_problem(file: Path) -> str:
    """What is wrong with one weight file, from its size and header ("" when it looks whole). A `.bin` in torch's zip
    format must end in the zip directory; an older non-zip `.bin` is not checked."""
    if file.suffix == ".safetensors":
        return _safetensors_problem(file)
    with open(file, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    if is_zip and not zipfile.is_zipfile(file):
        return f"{file} is truncated (a torch zip file without its end record)"
    return ""


def _safetensors_problem(file: Path) -> str:
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{file} is truncated ({size} bytes, shorter than the 8-byte safetensors header length)"
        (length,) = struct.unpack("<Q", head)
        if length > _MAX_HEADER:
            return f"{file} is not a safetensors file (header length {length})"
        if 8 + length > size:
            return f"{file} is truncated ({size} bytes; its header alone is {8 + length})"
        try:
            header = json.loads(f.read(length))
            end = max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"),
                      default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return f"{file} is not a safetensors file (its header is not a JSON table of tensors)"
    expected = 8 + length + end
    if size < expected:
        return f"{file} is truncated ({size} bytes; its header describes {expected})"
    if size > expected:
        return f"{file} has {size - expected} bytes beyond the {expected} its header describes (not a whole file)"
    return ""

"""A checkpoint's files written and read safely: text written and fsynced, whole trees fsynced, `.pt` files read by
`torch.load` restricted to tensors and plain types (so a file cannot run code on load), and model weights read from
safetensors, one file at a time, after a strict key check."""

from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path

import torch
from safetensors import safe_open

from oprd.runs.atomic_files import fsync_dir


def write_synced(file: Path, text: str) -> None:
    """`text` written to `file` and fsynced before returning."""
    with open(file, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def fsync_tree(root: Path) -> None:
    """Every file and directory under `root` fsynced, deepest first."""
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def load_pt(file: Path):
    """`torch.load` restricted to tensors and plain types: a file cannot execute code on load. The one addition:
    torchao's quantised optimizer-state tensors (`optim.optimizer: adamw_8bit`), data containers rebuilt from their
    inner tensors, allowed when torchao is installed."""
    try:
        with torch.serialization.safe_globals(_optimizer_state_classes()):
            return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{file}: refused, holds more than tensors and plain types ({e})") from e


def _optimizer_state_classes() -> list:
    if "torchao" not in sys.modules:  # only a run whose optimizer imported it can have saved such states
        return []
    try:
        from torchao.optim.subclass_4bit import OptimState4bit
        from torchao.optim.subclass_8bit import OptimState8bit
        from torchao.optim.subclass_fp8 import OptimStateFp8
    except ImportError:
        return []
    return [OptimState8bit, OptimState4bit, OptimStateFp8]


def weight_files(model_dir: Path, sharded: bool) -> dict[Path, list[str]]:
    """Each safetensors file of a saved model with the keys it holds (one file, or the index's shards)."""
    if sharded:
        weight_map = json.loads((model_dir / "model.safetensors.index.json").read_text())["weight_map"]
        return {model_dir / f: [k for k, v in weight_map.items() if v == f] for f in sorted(set(weight_map.values()))}
    with safe_open(model_dir / "model.safetensors", framework="pt") as f:
        return {model_dir / "model.safetensors": list(f.keys())}


def load_model_weights(model: torch.nn.Module, model_dir: Path, sharded: bool) -> None:
    """Loads the safetensors weights of `model_dir` into `model`, one shard at a time, after a strict key check.

    A key may be absent from the files only when it shares storage with a present one (tied weights, which
    `save_pretrained` writes once)."""
    shards = weight_files(model_dir, sharded)
    saved = {k for keys in shards.values() for k in keys}

    expected = model.state_dict()
    storage_of = {k: (t.data_ptr(), t.shape, t.stride()) for k, t in expected.items() if t.numel() > 0}
    saved_storage = {storage_of[k] for k in saved if k in storage_of}
    missing = [k for k in expected if k not in saved and storage_of.get(k) not in saved_storage]
    unexpected = sorted(saved - expected.keys())
    if missing or unexpected:
        raise ValueError(f"{model_dir}: state dict does not match the model; missing keys {missing}, "
                         f"unexpected keys {unexpected}")
    for file in shards:
        with safe_open(file, framework="pt") as f:
            model.load_state_dict({k: f.get_tensor(k) for k in f.keys()}, strict=False)


def read_weights(model_dir: Path, sharded: bool) -> dict[str, torch.Tensor]:
    """Every tensor of a saved model's safetensors files, by key (a tied weight once, as saved)."""
    weights = {}
    for file in weight_files(model_dir, sharded):
        with safe_open(file, framework="pt") as f:
            weights.update({k: f.get_tensor(k) for k in f.keys()})
    return weights

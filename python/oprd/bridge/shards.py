"""Stage-0 rows as OPRD-Bridge Stage 1 reads them: the shard files, checked from their headers, and passes over them
that load one layer at a time.

Rows (what Stage 0 writes, what `read_shards` reads): files `rows-*.safetensors` in one directory, read in name order
(zero-pad the numbers). Each file holds, for every student hidden_states index l of the bridge's pairs,
`student.<l>` [n, D_s] and `teacher.<l>` [n, D_t]: the student's rows at layer l and its paired teacher layer's rows,
row i of both being the same token. Any floating dtype (float32; bfloat16 halves the disk); one n per file. Other
keys (the collector's int64 [n] `positions.student` / `positions.teacher`) must have n rows too and are not used. A
teacher layer paired with several student layers is stored once per pair; its PCA reads the first pair's copy, once.

Stage 1 reads the rows 1 + L_t + L_s times (`count_rows`, then `stream_rows` once per layer); `shard_reader` gives
a fresh pass each time, from a directory, a list of shards (files or in-memory mappings) or a callable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

SHARD_GLOB = "rows-*.safetensors"
_KEY = re.compile(r"(student|teacher)\.(\d+)")
_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")

Shard = Mapping[str, Tensor]


class ShardError(ValueError):
    """A row directory or shard that cannot be read as Stage-0 rows."""




class ShardFile(Mapping):
    """One `rows-*.safetensors` file as a read-only mapping key -> tensor, each tensor loaded when indexed (a pass
    over one layer reads only that layer). `num_rows` comes from the header, so counting rows reads no data."""

    def __init__(self, path: Path, shapes: dict[str, tuple[int, ...]]):
        self.path, self.shapes = path, shapes
        self.num_rows = next(iter(shapes.values()))[0]

    def __getitem__(self, key: str) -> Tensor:
        if key not in self.shapes:
            raise KeyError(key)
        with safe_open(str(self.path), framework="pt", device="cpu") as f:
            return f.get_tensor(key)

    def __contains__(self, key) -> bool:
        return key in self.shapes

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)

    def __repr__(self) -> str:
        return f"ShardFile({str(self.path)!r}, {self.num_rows} rows, {len(self.shapes)} tensors)"


def read_shards(directory: str | os.PathLike) -> list[ShardFile]:
    """The Stage-0 shards in `directory` (files `rows-*.safetensors`, in name order), checked from their headers
    alone: the same keys and widths in every file, one row count per file. A list, so it can be read many times."""
    root = Path(directory)
    if not root.is_dir():
        raise ShardError(f"read_shards: {str(root)!r} is not a directory (Stage 0 writes {SHARD_GLOB} files into one)")
    paths = sorted(root.glob(SHARD_GLOB), key=lambda p: p.name)
    if not paths:
        raise ShardError(f"read_shards: no {SHARD_GLOB} files in {str(root)!r}")
    shards = [ShardFile(p, _read_header(p)) for p in paths]
    _check_same_layout(shards)
    return shards


def _read_header(path: Path) -> dict[str, tuple[int, ...]]:
    """{key: shape} of one shard, checked: `student.<l>` / `teacher.<l>` 2-D floating and in pairs, every tensor
    (other keys too, such as the collector's `positions.*`, which the fit ignores) with one row count."""
    where = f"shard {str(path)!r}"
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    except SafetensorError as exc:
        raise ShardError(f"{where}: not a safetensors file ({exc}); rows are read from safetensors only") from None
    pairs = [k for k in meta if k.split(".")[0] in ("student", "teacher")]
    if not pairs:
        raise ShardError(f"{where}: holds no student.<l> / teacher.<l> tensors (keys {sorted(meta)})")
    for key in pairs:
        shape, dtype = meta[key]
        if not _KEY.fullmatch(key):
            raise ShardError(f"{where}: unexpected key {key!r}; row keys are 'student.<l>' and 'teacher.<l>'")
        if len(shape) != 2 or dtype not in _FLOAT_DTYPES:
            raise ShardError(f"{where}: `{key}` must be a 2-D floating tensor [rows, width]; got shape "
                             f"{list(shape)}, dtype {dtype}")
    unpaired = sorted(k for k in pairs if _partner(k) not in meta)
    if unpaired:
        raise ShardError(f"{where}: {unpaired} have no partner (each student.<l> needs teacher.<l> and back)")
    rows = {k: s[0] if s else None for k, (s, _) in meta.items()}
    if len(set(rows.values())) != 1:
        raise ShardError(f"{where}: tensors must share one row count (row i of all is one token); got {rows}")
    return {k: s for k, (s, _) in meta.items()}


def _partner(key: str) -> str:
    role, layer = key.split(".")
    return f"{'teacher' if role == 'student' else 'student'}.{layer}"


def _check_same_layout(shards: list[ShardFile]) -> None:
    """Every file has the first file's keys, and every student (teacher) tensor one student (teacher) width."""
    first = shards[0]
    for shard in shards[1:]:
        if set(shard.shapes) != set(first.shapes):
            raise ShardError(f"shard {str(shard.path)!r}: keys {sorted(shard.shapes)} differ from "
                             f"{sorted(first.shapes)} in {str(first.path)!r}")
    for role in ("student", "teacher"):
        widths = {(s.path.name, k): shape[1] for s in shards for k, shape in s.shapes.items()
                  if k.startswith(f"{role}.")}
        if len(set(widths.values())) != 1:
            raise ShardError(f"read_shards: the {role} tensors must share one width; got {sorted(set(widths.values()))}"
                             f" in {str(first.path.parent)!r}")


def shard_reader(shards) -> Callable[[], Iterable[Shard]]:
    """A function giving a fresh pass over `shards`: a callable is called per pass, a directory read with
    `read_shards`, a re-iterable (list, tuple) iterated again; a one-shot iterator is refused."""
    if callable(shards):
        return shards
    if isinstance(shards, Mapping):
        raise TypeError("fit_bridge: `shards` is a single shard (a mapping); pass a list of shards")
    if isinstance(shards, (str, os.PathLike)):
        files = read_shards(shards)
        return lambda: files
    try:
        once = iter(shards) is shards
    except TypeError:
        raise TypeError(f"fit_bridge: `shards` must be a list of shards, a directory, or a callable returning an "
                        f"iterable of shards; got {type(shards).__name__}") from None
    if once:
        raise TypeError(f"fit_bridge: `shards` is a one-shot iterator ({type(shards).__name__}), but the rows are read "
                        f"several times; pass a list, read_shards(directory), or a callable returning a fresh iterable")
    return lambda: shards


def _pass(read: Callable[[], Iterable[Shard]], sizes: list[int]) -> Iterator[tuple[int, Shard]]:
    """(shard index, shard) over one pass, checking it is the pass the rows were counted on."""
    count = 0
    for i, shard in enumerate(read()):
        if i >= len(sizes):
            raise ValueError(f"fit_bridge: `shards` gave more than the {len(sizes)} shards counted on the first pass")
        count += 1
        yield i, shard
    if count != len(sizes):
        raise ValueError(f"fit_bridge: `shards` gave {count} shards on a later pass, {len(sizes)} on the first")


def _rows(shard: Shard, i: int, key: str, width: int, n: int | None) -> Tensor:
    """shard[key], checked to be a floating [n, width] tensor."""
    if key not in shard:
        raise ValueError(f"fit_bridge: shard {i} has no `{key}` (it has {sorted(shard)})")
    t = shard[key]
    if not isinstance(t, Tensor) or not t.is_floating_point() or t.dim() != 2 or t.shape[1] != width or (
            n is not None and t.shape[0] != n):
        seen = f"shape {list(t.shape)}, dtype {t.dtype}" if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"fit_bridge: shard {i} `{key}` must be a floating tensor [{'n' if n is None else n}, "
                         f"{width}]; got {seen}")
    return t


def count_rows(read, keys: list[tuple[str, int]]) -> list[int]:
    """Rows per shard (the header's `num_rows` when the shard has one), checking every needed key is there."""
    sizes = []
    for i, shard in enumerate(read()):
        if not isinstance(shard, Mapping):
            raise TypeError(f"fit_bridge: shard {i} must be a mapping of key -> tensor; got {type(shard).__name__}")
        missing = [k for k, _ in keys if k not in shard]
        if missing:
            raise ValueError(f"fit_bridge: shard {i} has no {missing} (it has {sorted(shard)}); each shard needs "
                             f"student.<l> and teacher.<l> for every student layer l")
        n = getattr(shard, "num_rows", None)
        sizes.append(int(n) if n is not None else _rows(shard, i, *keys[0], None).shape[0])
    if not sizes:
        raise ValueError("fit_bridge: `shards` is empty")
    return sizes


def stream_rows(read, sizes: list[int], idx: Tensor, keys: list[tuple[str, int]]) -> Iterator[list[Tensor]]:
    """Per shard, the rows at the sorted global indices `idx` of each (key, width), in the stored dtype."""
    offset = 0
    for i, shard in _pass(read, sizes):
        n = sizes[i]
        lo, hi = torch.searchsorted(idx, torch.tensor([offset, offset + n])).tolist()
        local = idx[lo:hi] - offset
        offset += n
        if local.numel():
            tensors = [_rows(shard, i, key, width, n) for key, width in keys]
            yield tensors if local.numel() == n else [t.index_select(0, local) for t in tensors]

"""OPRD-Bridge Stage 1, "fit" (PAPER_NOTES §3): from the paired rows of Stage 0, the teacher's PCA per teacher layer
(P_T, mu_T) and a trained bias-free map P_S per student layer, returned as a `Bridge` (file.py) and a JSON report.

Rows (what Stage 0 writes, what `read_shards` reads): files `rows-*.safetensors` in one directory, read in name order
(zero-pad the numbers). Each file holds, for every student hidden_states index l of the bridge's pairs,
`student.<l>` [n, D_s] and `teacher.<l>` [n, D_t]: the student's rows at layer l and its paired teacher layer's rows,
row i of both being the same token. Any floating dtype (float32; bfloat16 halves the disk); one n per file. Other
keys (the collector's int64 [n] `positions.student` / `positions.teacher`) must have n rows too and are not used. A
teacher layer paired with several student layers is stored once per pair; its PCA reads the first pair's copy, once.

Passes and memory: the rows are read 1 + L_t + L_s times (a row count, one pass per teacher layer, one per student
layer), each pass touching one layer, so a directory's shards load only that layer's bytes. Peak memory is one
teacher layer's D_t x D_t float64 scatter, or one student layer's N x D_s rows (in their stored dtype) plus
N x r_max float32 targets, N being all rows collected: only the covariance is subsampled (`max_rows`). CPU only.

P_S training (the paper gives AdamW, lr 1e-3, 20 epochs, best validation cosine): loss = mean over rows of
||P_S h_S - P_T (h_T - mu_T)||^2 in float32; AdamW with torch's defaults otherwise (weight decay 0.01); batches of
`batch_size` rows (256 by default: the paper does not give one), reshuffled every epoch; P_S initialised
U(-1/sqrt(D_s), 1/sqrt(D_s)) as `torch.nn.Linear` would be. Every random draw (covariance subsample, held-out split,
initialisation, batch order) comes from a generator seeded from `seed` and what it is for, so one seed gives
bit-identical tensors, and each rank of the sweep starts from its own seeded initialisation.
"""

from __future__ import annotations

import math
import os
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from oprd.bridge.file import Bridge, ModelIdentity
from oprd_kernels.reference import cosine_similarity

SHARD_GLOB = "rows-*.safetensors"
DEFAULT_BATCH_SIZE = 256
PCA_CHUNK_ROWS = 4096  # rows converted to float64 at a time while accumulating the scatter
_KEY = re.compile(r"(student|teacher)\.(\d+)")
_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")

Shard = Mapping[str, Tensor]


class ShardError(ValueError):
    """A row directory or shard that cannot be read as Stage-0 rows."""


# ---------------------------------------------------------------------------------------------------------- reading


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


def _reader(shards) -> Callable[[], Iterable[Shard]]:
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


def _count_rows(read, keys: list[tuple[str, int]]) -> list[int]:
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


def _stream(read, sizes: list[int], idx: Tensor, keys: list[tuple[str, int]]) -> Iterator[list[Tensor]]:
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


# -------------------------------------------------------------------------------------------------- random choices


def _generator(seed: int, *purpose) -> torch.Generator:
    """A CPU generator seeded from `seed` and what it is for (stable across runs, unlike hash())."""
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(repr(purpose).encode())) % 2**63)


def select_rows(total: int, max_rows: int, seed: int) -> Tensor:
    """Sorted int64 indices of the rows the covariance uses: all when total <= max_rows, else a seeded uniform sample
    of max_rows without replacement."""
    if total <= max_rows:
        return torch.arange(total)
    return torch.randperm(total, generator=_generator(seed, "covariance rows"))[:max_rows].sort().values


def holdout_split(total: int, holdout: float, seed: int) -> tuple[Tensor, Tensor]:
    """(train, held-out) sorted row indices: a seeded round(holdout * total) rows (at least 1) held out."""
    held = max(1, round(holdout * total))
    if held >= total:
        raise ValueError(f"fit_bridge: {total} rows leave none to train on with `holdout` {holdout}")
    perm = torch.randperm(total, generator=_generator(seed, "holdout"))
    return perm[held:].sort().values, perm[:held].sort().values


def initial_projection(rank: int, width: int, seed: int, student_layer: int) -> Tensor:
    """P_S before training, [rank, width] float32: U(-1/sqrt(width), 1/sqrt(width)), as nn.Linear initialises."""
    gen = _generator(seed, "init", student_layer, rank)
    return (torch.rand(rank, width, generator=gen, dtype=torch.float32) * 2 - 1) / math.sqrt(width)


# -------------------------------------------------------------------------------------------------------- teacher


@dataclass(frozen=True)
class TeacherPCA:
    """A teacher layer's PCA: mean [D] and eigenvalues [D] (descending) and components [k, D] (rows, unit norm,
    largest-magnitude entry positive) of the covariance of `rows` rows, all float64."""

    mean: Tensor
    eigenvalues: Tensor
    components: Tensor
    rows: int

    def explained_variance(self, rank: int) -> float:
        """Share of the total variance in the top-`rank` components (negative round-off eigenvalues count as 0)."""
        values = self.eigenvalues.clamp_min(0)
        total = float(values.sum())
        return float(values[:rank].sum()) / total if total > 0 else 0.0

    def top(self, rank: int) -> "TeacherPCA":
        return TeacherPCA(self.mean, self.eigenvalues, self.components[:rank].clone(), self.rows)


def teacher_pca(chunks: Iterable[Tensor]) -> TeacherPCA:
    """PCA of the rows of `chunks` ([n_i, D] each), streamed: per chunk a float64 mean and centred scatter, merged
    exactly (Chan et al.'s pairwise update, which avoids the cancellation of raw sums of squares), then one `eigh`
    of the D x D covariance (divided by rows - 1)."""
    n, mean, scatter = 0, None, None
    for chunk in chunks:
        for piece in chunk.split(PCA_CHUNK_ROWS):
            x = piece.to(torch.float64)
            m, piece_mean = x.shape[0], x.mean(0)
            centred = x - piece_mean
            if n == 0:
                n, mean, scatter = m, piece_mean, centred.T @ centred
                continue
            delta = piece_mean - mean
            scatter += centred.T @ centred + torch.outer(delta, delta) * (n * m / (n + m))
            mean += delta * (m / (n + m))
            n += m
    if n < 2:
        raise ValueError(f"teacher_pca: a covariance needs at least 2 rows; got {n}")
    values, vectors = torch.linalg.eigh(scatter / (n - 1))
    return TeacherPCA(mean, values.flip(0), _fix_signs(vectors.flip(1).T), n)


def _fix_signs(rows: Tensor) -> Tensor:
    """Each row times the sign of its largest-magnitude entry (the first such), so equal inputs give equal files."""
    peak = rows.abs().argmax(dim=1, keepdim=True)
    return rows * rows.gather(1, peak).sign()


# -------------------------------------------------------------------------------------------------------- student


@dataclass(frozen=True)
class TrainedProjection:
    proj: Tensor  # [r, D_s] float32, from the best epoch
    cosine_before: float  # held-out mean cosine at the initialisation
    cosine_per_epoch: list[float]
    best_epoch: int  # 1-based

    @property
    def cosine_after(self) -> float:
        return self.cosine_per_epoch[self.best_epoch - 1]


def best_epoch(cosines: Sequence[float]) -> int:
    """The 1-based epoch with the highest held-out cosine (the earliest on ties; non-finite values never win)."""
    finite = [(c, -i) for i, c in enumerate(cosines) if math.isfinite(c)]
    if not finite:
        raise ValueError(f"fit_bridge: P_S training diverged (held-out cosine {list(cosines)}); lower `lr`")
    return -max(finite)[1] + 1


def heldout_cosine(proj: Tensor, x: Tensor, z: Tensor) -> float:
    """Mean cosine of P_S x and z over the rows (the project's `cosine_similarity`: zero-norm rows count 0)."""
    with torch.no_grad():
        return float(cosine_similarity((x.float() @ proj.T)[None], z[None]))


def train_projection(x: Tensor, z: Tensor, train: Tensor, held: Tensor, init: Tensor, *, epochs: int, lr: float,
                     batch_size: int, generator: torch.Generator) -> TrainedProjection:
    """P_S [r, D_s] minimising mean ||P_S x - z||^2 over the `train` rows with AdamW, keeping the epoch with the best
    mean cosine on the `held` rows. x: [N, D_s] any floating dtype (cast per batch); z: [N, r] float32."""
    w = init.clone().requires_grad_(True)
    opt = torch.optim.AdamW([w], lr=lr)
    x_held, z_held = x.index_select(0, held), z.index_select(0, held)
    before = heldout_cosine(w.detach(), x_held, z_held)
    history, best_w = [], init.clone()
    for _ in range(epochs):
        for batch in train[torch.randperm(len(train), generator=generator)].split(batch_size):
            loss = (x.index_select(0, batch).float() @ w.T - z.index_select(0, batch)).pow(2).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        history.append(heldout_cosine(w.detach(), x_held, z_held))
        if best_epoch(history) == len(history):
            best_w = w.detach().clone()
    return TrainedProjection(best_w, before, history, best_epoch(history))


def _layer_rows(read, sizes, total, student_layer, pca: TeacherPCA, widths) -> tuple[Tensor, Tensor]:
    """All rows of one pair: student rows [N, D_s] as stored, and targets P_T (h_T - mu_T) [N, r_max] float32."""
    xs, zs = [], []
    keys = [(f"student.{student_layer}", widths[0]), (f"teacher.{student_layer}", widths[1])]
    for x, t in _stream(read, sizes, torch.arange(total), keys):
        xs.append(x)
        zs.append(((t.to(torch.float64) - pca.mean) @ pca.components.T).float())
    return torch.cat(xs), torch.cat(zs)


# -------------------------------------------------------------------------------------------------------- checks


def _check_int(name: str, value, low: int, high: int | None = None, what: str = "") -> int:
    bound = f"in [{low}, {high}]{what}" if high is not None else f">= {low}"
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"fit_bridge: `{name}` must be an int {bound}; got {value!r} ({type(value).__name__})")
    if value < low or (high is not None and value > high):
        raise ValueError(f"fit_bridge: `{name}` must be an int {bound}; got {value}")
    return value


def _check_layers(student: ModelIdentity, teacher: ModelIdentity, student_layers, teacher_layers, layer_map):
    """The three layer lists as lists of ints, consistent with each other and with both models' depths."""
    for role, ident in (("student", student), ("teacher", teacher)):
        if not isinstance(ident, ModelIdentity):
            raise TypeError(f"fit_bridge: `{role}` must be a ModelIdentity; got {type(ident).__name__}")
    s = [_check_int("student_layers", v, 0, student.num_layers, " (hidden_states indices)") for v in student_layers]
    t = [_check_int("teacher_layers", v, 0, teacher.num_layers, " (hidden_states indices)") for v in teacher_layers]
    m = [_check_int("layer_map", v, 0, len(t) - 1, " (slots in teacher_layers)") for v in layer_map]
    if not s or len(set(s)) != len(s):
        raise ValueError(f"fit_bridge: `student_layers` must be non-empty and unique; got {s}")
    if not t or t != sorted(set(t)):
        raise ValueError(f"fit_bridge: `teacher_layers` must be non-empty, unique and sorted; got {t}")
    if len(m) != len(s):
        raise ValueError(f"fit_bridge: `layer_map` must give one teacher slot per student layer ({len(s)}); got {m}")
    unused = [t[i] for i in range(len(t)) if i not in m]
    if unused:
        raise ValueError(f"fit_bridge: `teacher_layers` {unused} are paired with no student layer in `layer_map` {m}")
    return s, t, m


def _check_training(epochs, lr, batch_size, holdout, max_rows, seed) -> None:
    _check_int("epochs", epochs, 1)
    _check_int("batch_size", batch_size, 1)
    _check_int("max_rows", max_rows, 2, what=" (a covariance needs 2 rows)")
    _check_int("seed", seed, 0)
    for name, value, ok, expected in (("lr", lr, lambda v: v > 0 and math.isfinite(v), "a finite number > 0"),
                                      ("holdout", holdout, lambda v: 0 < v < 1, "a number in (0, 1)")):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise TypeError(f"fit_bridge: `{name}` must be {expected}; got {value!r} ({type(value).__name__})")
        if not ok(value):
            raise ValueError(f"fit_bridge: `{name}` must be {expected}; got {value}")


def _check_ranks(rank, ranks, width: int, rows: int) -> list[int]:
    """The sweep's ranks, unique and ascending, after checking them and `rank` against min(D_t, covariance rows)."""
    high, what = min(width, rows), f" (min of the teacher width {width} and the {rows} covariance rows)"
    _check_int("rank", rank, 1, high, what)
    if isinstance(ranks, (str, bytes)) or not isinstance(ranks, Iterable):
        raise TypeError(f"fit_bridge: `ranks` must be a sequence of ints; got {type(ranks).__name__}")
    return sorted({_check_int("ranks", r, 1, high, what) for r in ranks})


# ------------------------------------------------------------------------------------------------------------ fit


def fit_bridge(shards, *, student: ModelIdentity, teacher: ModelIdentity, student_layers: Sequence[int],
               teacher_layers: Sequence[int], layer_map: Sequence[int], rank: int, ranks: Sequence[int] = (),
               epochs: int = 20, lr: float = 1e-3, batch_size: int = DEFAULT_BATCH_SIZE, holdout: float = 0.1,
               max_rows: int = 16384, seed: int = 0) -> tuple[Bridge, dict]:
    """Stage 1: the bridge for `rank` and the full report (JSON-serialisable, with the rank sweep over `ranks`).

    shards: a list of shards (see the module docstring), `read_shards(directory)`, a directory path, or a callable
        returning a fresh iterable of shards (read 1 + L_t + L_s times). Rows are paired across all layers: row i
        of every tensor of a shard is one token.
    student_layers, teacher_layers, layer_map: as in `Bridge` (hidden_states indices; teacher ones unique and sorted;
        the teacher slot of each student layer, every slot used).
    rank, ranks: the bridge's rank, and the ranks of the sweep (each fitted separately from the same `eigh`).
    epochs, lr, batch_size: P_S training (AdamW). holdout: the share of rows held out to pick the best epoch.
    max_rows: the most rows, subsampled with `seed`, that each teacher layer's covariance uses.
    """
    s_layers, t_layers, lmap = _check_layers(student, teacher, student_layers, teacher_layers, layer_map)
    _check_training(epochs, lr, batch_size, holdout, max_rows, seed)
    widths = (student.hidden_size, teacher.hidden_size)
    read = _reader(shards)
    sizes = _count_rows(read, [(f"{role}.{s}", w) for s in s_layers for role, w in zip(("student", "teacher"), widths)])
    total = sum(sizes)
    cov_rows = select_rows(total, max_rows, seed)
    sweep = _check_ranks(rank, ranks, widths[1], len(cov_rows))
    r_max = max([rank, *sweep])
    first = [s_layers[lmap.index(slot)] for slot in range(len(t_layers))]  # whose teacher copy the PCA reads
    pcas = [teacher_pca(c for c, in _stream(read, sizes, cov_rows, [(f"teacher.{s}", widths[1])])).top(r_max)
            for s in first]
    train, held = holdout_split(total, holdout, seed)
    fits = []
    for s, slot in zip(s_layers, lmap):
        x, z = _layer_rows(read, sizes, total, s, pcas[slot], widths)
        fits.append({r: train_projection(x, z[:, :r].contiguous(), train, held,
                                         initial_projection(r, widths[0], seed, s), epochs=epochs, lr=lr,
                                         batch_size=batch_size, generator=_generator(seed, "batches", s, r))
                     for r in sorted({rank, *sweep})})
        del x, z
    rows = {"collected": total, "covariance": len(cov_rows), "train": len(train), "held_out": len(held)}
    settings = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "holdout": holdout, "max_rows": max_rows,
                "seed": seed}
    report = _report(rank, sweep, s_layers, t_layers, lmap, pcas, fits, rows, settings)
    bridge = Bridge(rank, s_layers, t_layers, lmap, torch.stack([p.components[:rank] for p in pcas]).float(),
                    torch.stack([p.mean for p in pcas]).float(), torch.stack([f[rank].proj for f in fits]),
                    student, teacher, _summary(report), where="fit_bridge")
    return bridge, report


def fit_collected(rows_dir: str | os.PathLike, **options) -> tuple[Bridge, dict, dict]:
    """`fit_bridge` on a finished `collect_rows` directory: the models and the layer pairing from its manifest
    (one teacher layer per student layer there; unique and sorted here, with each student layer's slot). `options`
    are fit_bridge's keyword arguments (rank, ranks, epochs, ...). Returns (bridge, report, manifest)."""
    from oprd.bridge.collect import read_manifest

    manifest = read_manifest(rows_dir)
    paired = manifest["teacher_layers"]
    unique = sorted(set(paired))
    bridge, report = fit_bridge(read_shards(rows_dir), student=ModelIdentity(**manifest["student"]),
                                teacher=ModelIdentity(**manifest["teacher"]),
                                student_layers=manifest["student_layers"], teacher_layers=unique,
                                layer_map=[unique.index(t) for t in paired], **options)
    return bridge, report, manifest


def _report(rank, sweep, s_layers, t_layers, lmap, pcas, fits, rows, settings) -> dict:
    """The full Stage-1 report: per pair, per teacher layer, and the rank sweep; plain lists, floats and ints."""
    pairs = [{"student_layer": s, "teacher_layer": t_layers[slot], "cosine_before": f[rank].cosine_before,
              "cosine_after": f[rank].cosine_after, "best_epoch": f[rank].best_epoch,
              "cosine_per_epoch": f[rank].cosine_per_epoch, "explained_variance": pcas[slot].explained_variance(rank),
              "rows_train": rows["train"], "rows_held_out": rows["held_out"]}
             for s, slot, f in zip(s_layers, lmap, fits)]
    teachers = [{"teacher_layer": t, "rows_covariance": p.rows, "eigenvalues": p.eigenvalues[:max([rank, *sweep])]
                 .tolist()} for t, p in zip(t_layers, pcas)]
    rank_sweep = [{"rank": r, "cosine": sum(f[r].cosine_after for f in fits) / len(fits),
                   "cosine_per_layer": [f[r].cosine_after for f in fits],
                   "cosine_before_per_layer": [f[r].cosine_before for f in fits],
                   "best_epoch_per_layer": [f[r].best_epoch for f in fits],
                   "explained_variance_per_teacher_layer": [p.explained_variance(r) for p in pcas]} for r in sweep]
    return {"rank": rank, "rows": rows, "settings": settings, "pairs": pairs, "teacher_layers": teachers,
            "rank_sweep": rank_sweep}


def _summary(report: dict) -> dict:
    """The compact summary the bridge file keeps in its metadata."""
    pairs = report["pairs"]
    return {"rank": report["rank"], "rows": report["rows"], "settings": report["settings"],
            **{key: [p[key] for p in pairs] for key in ("cosine_before", "cosine_after", "best_epoch",
                                                        "explained_variance")}}

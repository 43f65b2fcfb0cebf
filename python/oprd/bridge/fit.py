"""OPRD-Bridge Stage 1, "fit" (PAPER_NOTES §3): from the paired rows of Stage 0, the teacher's PCA per teacher layer
(P_T, mu_T) and a trained bias-free map P_S per student layer, returned as a `Bridge` (file.py) and a JSON report. The
rows come from `shards`, the teacher's PCA from `pca`, each P_S from `projection`; here are the checks, the seeded
choices and the report.

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
import zlib
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from oprd.bridge.file import Bridge, ModelIdentity
from oprd.bridge.pca import TeacherPCA, teacher_pca
from oprd.bridge.projection import train_projection
from oprd.bridge.shards import count_rows, read_shards, shard_reader, stream_rows

DEFAULT_BATCH_SIZE = 256


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


def _layer_rows(read, sizes, total, student_layer, pca: TeacherPCA, widths) -> tuple[Tensor, Tensor]:
    """All rows of one pair: student rows [N, D_s] as stored, and targets P_T (h_T - mu_T) [N, r_max] float32."""
    xs, zs = [], []
    keys = [(f"student.{student_layer}", widths[0]), (f"teacher.{student_layer}", widths[1])]
    for x, t in stream_rows(read, sizes, torch.arange(total), keys):
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
    read = shard_reader(shards)
    sizes = count_rows(read, [(f"{role}.{s}", w) for s in s_layers for role, w in zip(("student", "teacher"), widths)])
    total = sum(sizes)
    cov_rows = select_rows(total, max_rows, seed)
    sweep = _check_ranks(rank, ranks, widths[1], len(cov_rows))
    r_max = max([rank, *sweep])
    first = [s_layers[lmap.index(slot)] for slot in range(len(t_layers))]  # whose teacher copy the PCA reads
    pcas = [teacher_pca(c for c, in stream_rows(read, sizes, cov_rows, [(f"teacher.{s}", widths[1])])).top(r_max)
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

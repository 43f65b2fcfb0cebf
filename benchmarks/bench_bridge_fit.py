"""OPRD-Bridge Stage 1 benchmark (CPU, where Stage 1 runs): `oprd.bridge.fit.fit_bridge` with a rank sweep, against
the same sweep done by refitting once per rank (a fresh PCA for each rank, what a loop over the single-rank fit of
the reference code costs), side by side in one process on the same synthetic rows.

Cases: the demo's pair (3x64 student, 4x96 teacher, 4,096 rows) and one layer pair at the paper's widths (Qwen3-1.7B
2048 <- Qwen3-4B 2560) with its 16,384 covariance rows. Rows are random with a decaying spectrum (the fit's cost does
not depend on the values). Prints seconds and the ratio naive / ours (> 1: ours is faster).

    python benchmarks/bench_bridge_fit.py --out benchmarks/results/bridge_fit_cpu.jsonl
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

from oprd.bridge import ModelIdentity, fit_bridge  # noqa: E402


@dataclass(frozen=True)
class Case:
    name: str
    d_s: int
    d_t: int
    s_layers: int
    t_layers: int
    rows: int
    epochs: int
    ranks: tuple[int, ...]


CASES = [Case("demo 3x64 <- 4x96", 64, 96, 3, 4, 4096, 20, (1, 2, 4, 8, 16, 32)),
         Case("paper widths, 1 pair", 2048, 2560, 1, 1, 16384, 2, (1, 4, 8, 32))]
SMOKE = [Case("smoke", 16, 24, 2, 3, 256, 1, (1, 2, 4))]


def layout(case: Case) -> tuple[list[int], list[int], list[int]]:
    """(student layers, teacher layers, layer map): the Eq. 11 pairing of the case's depths."""
    from oprd.layers import hidden_state_pairs

    s_layers = list(range(1, case.s_layers + 1))
    paired = hidden_state_pairs(s_layers, case.s_layers, case.t_layers)
    t_layers = sorted(set(paired))
    return s_layers, t_layers, [t_layers.index(t) for t in paired]


def shards(case: Case, s_layers: list[int], paired: list[int], per_shard: int = 1024) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for start in range(0, case.rows, per_shard):
        n = min(per_shard, case.rows - start)
        shard = {}
        for s, t in zip(s_layers, paired):
            h_t = torch.randn(n, case.d_t, generator=g) * torch.linspace(3, 0.1, case.d_t)
            mix = torch.randn(case.d_t, case.d_s, generator=g) / case.d_t ** 0.5
            shard[f"teacher.{s}"] = h_t
            shard[f"student.{s}"] = h_t @ mix + 0.1 * torch.randn(n, case.d_s, generator=g)
        out.append(shard)
    return out


def measure(case: Case) -> list[dict]:
    s_layers, t_layers, lmap = layout(case)
    data = shards(case, s_layers, [t_layers[m] for m in lmap])
    kw = dict(student=ModelIdentity("student", "llama", case.d_s, case.s_layers, 32),
              teacher=ModelIdentity("teacher", "llama", case.d_t, case.t_layers, 32), student_layers=s_layers,
              teacher_layers=t_layers, layer_map=lmap, epochs=case.epochs, lr=1e-2, max_rows=16384)
    fit_bridge(data, rank=case.ranks[0], **{**kw, "epochs": 1})  # warm-up: first-call costs out of both timings
    start = time.perf_counter()
    fit_bridge(data, rank=case.ranks[0], ranks=case.ranks, **kw)
    ours = time.perf_counter() - start
    start = time.perf_counter()
    for rank in case.ranks:  # the baseline: one full fit (its own PCA) per rank
        fit_bridge(data, rank=rank, **kw)
    naive = time.perf_counter() - start
    base = {"suite": "bridge_fit", **asdict(case), "ranks": list(case.ranks)}
    return [{**base, "method": "one eigh, every rank sliced", "seconds": ours},
            {**base, "method": "a fit per rank", "seconds": naive}]


def summarise(rows: list[dict]) -> str:
    lines = [f"{'case':<24}{'method':<30}{'s':>9}{'naive / ours':>14}"]
    by_case: dict[str, list[dict]] = {}
    for r in rows:
        by_case.setdefault(r["name"], []).append(r)
    for name, pair in by_case.items():
        ours, naive = pair[0]["seconds"], pair[1]["seconds"]
        lines += [f"{name:<24}{pair[0]['method']:<30}{ours:>9.2f}{naive / ours:>14.2f}",
                  f"{name:<24}{pair[1]['method']:<30}{naive:>9.2f}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny widths: checks that it runs")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    env, rows = harness.environment(torch.device("cpu")), []
    for case in SMOKE if args.smoke else CASES:
        new = [{**env, **r} for r in measure(case)]
        rows += new
        if args.out:
            harness.append_rows(args.out, new)
        print(f"{case.name}: " + ", ".join(f"{r['method']} {r['seconds']:.2f} s" for r in new), flush=True)
    print(summarise(rows))
    return rows


if __name__ == "__main__":
    main()

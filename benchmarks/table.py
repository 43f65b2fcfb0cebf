"""Render benchmark result rows (JSON lines from bench_kernels.py) as the Markdown tables in docs/benchmarks.md.

    python benchmarks/table.py benchmarks/results/kernels_cpu.jsonl

Ratios are computed only between rows of the same run (same timestamp prefix and case), as they were measured.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def markdown(rows: list[dict]) -> str:
    cells: dict[tuple, dict] = defaultdict(dict)
    for r in rows:
        key = (r["name"], r["op"], r["loss_type"], r["backend"])
        cells[key][(r["phase"], r["metric"])] = r
    lines = ["| case | op | loss | backend | full ms p50 (p20-p80) | vs eager | %copy | delta-peak MB | extra MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (case, op, loss, backend), c in cells.items():
        full, peak = c[("full", "time")], c[("full", "delta_peak")]
        ref = cells.get((case, op, loss, "reference"))
        speed = ref[("full", "time")]["p50"] / full["p50"] if ref else float("nan")
        grads = full["gradient_bytes"]
        bandwidth = full["floor_bytes"] / (full["p50"] * 1e-3)
        lines.append(f"| {case} | {op} | {loss} | {backend} | {full['p50']:.1f} ({full['p20']:.1f}-{full['p80']:.1f}) "
                     f"| {speed:.2f} | {100 * bandwidth / full['copy_bandwidth']:.0f}% | {peak['p50'] / 2**20:.1f} "
                     f"| {max(peak['p50'] - grads, 0) / 2**20:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    print(markdown(load(parser.parse_args().results)))


if __name__ == "__main__":
    main()

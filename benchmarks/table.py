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


def capture_markdown(rows: list[dict]) -> str:
    """bench_capture.py rows: per case, layer selection and pass, each method against the plain HF way."""
    plain = {(r["name"], r["layers_mode"], r["pass"]): r for r in rows if r["method"] == "plain"}
    lines = ["| case | layers | pass | method | ms p50 (p20-p80) | vs plain | delta-peak MB | vs plain |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = plain[(r["name"], r["layers_mode"], r["pass"])]
        lines.append(f"| {r['name']} | {r['layers_mode']} | {r['pass']} | {r['method']} | {r['p50']:.1f} "
                     f"({r['p20']:.1f}-{r['p80']:.1f}) | {base['p50'] / r['p50']:.2f}x | "
                     f"{r['delta_peak_bytes'] / 2**20:.1f} | {base['delta_peak_bytes'] / r['delta_peak_bytes']:.2f}x |")
    return "\n".join(lines)


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
    rows = load(parser.parse_args().results)
    print(capture_markdown(rows) if rows and rows[0].get("suite") == "capture" else markdown(rows))


if __name__ == "__main__":
    main()

"""Plots of the benchmark suite's JSON-lines results (matplotlib, Agg: no display needed).

    python benchmarks/plot_suite.py benchmarks/results/*.jsonl --out-dir benchmarks/results/plots

  actor_update  per case: p50 time and delta-peak memory against sequence length, one line per method (log-x);
  loss_path     per case: bars of fwd+bwd p50 time and delta-peak per method/backend (p20-p80 as error bars);
  teacher_pass  per case: the same bars per method.
A suite absent from the inputs is skipped; rows without a measured value (skipped, OOM) are left out. When a file
holds several runs of the same point, the last row wins.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METRICS = (("time", "p50 time (ms)", 1.0), ("delta_peak", "delta-peak (MB)", 1 / 2**20))


def load(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if line.strip():
                rows.append(json.loads(line))
    return rows


def _measured(rows: list[dict], suite: str) -> list[dict]:
    return [r for r in rows if r.get("suite") == suite and r.get("metric") in ("time", "delta_peak")
            and isinstance(r.get("p50"), (int, float))]


def _label(r: dict) -> str:
    backend = r.get("backend")
    return f"{r['method']} ({backend})" if backend and backend not in ("eager",) and r["method"] != backend \
        else str(r["method"])


def _file(out_dir: Path, suite: str, case: str) -> Path:
    return out_dir / f"{suite}_{re.sub(r'[^A-Za-z0-9._-]+', '_', str(case))}.png"


def plot_lines(rows: list[dict], out_dir: Path, suite: str = "actor_update") -> list[Path]:
    """Per case: p50 against sequence length per method, time and delta-peak side by side."""
    written = []
    data = _measured(rows, suite)
    for case in dict.fromkeys(r.get("case") for r in data):
        mine = [r for r in data if r.get("case") == case and isinstance(r.get("seq"), (int, float))]
        colors = {label: f"C{i % 10}" for i, label in enumerate(dict.fromkeys(_label(r) for r in mine))}
        seqs = sorted({r["seq"] for r in mine})
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for ax, (metric, ylabel, scale) in zip(axes, METRICS):
            series: dict[str, dict[float, float]] = {}
            for r in mine:
                if r["metric"] == metric:
                    series.setdefault(_label(r), {})[r["seq"]] = r["p50"] * scale
            for label, points in series.items():
                xs = sorted(points)
                ax.plot(xs, [points[x] for x in xs], marker="o", label=label, color=colors[label])
            ax.set_xscale("log", base=2)
            if seqs:
                ax.set_xticks(seqs, [str(int(x)) if float(x).is_integer() else str(x) for x in seqs])
                ax.minorticks_off()
            ax.set_xlabel("sequence length")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
            if series:
                ax.legend(fontsize=8)
        fig.suptitle(f"{suite}: {case}")
        fig.tight_layout()
        path = _file(out_dir, suite, case)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def plot_bars(rows: list[dict], out_dir: Path, suite: str) -> list[Path]:
    """Per case: a bar per method (and backend), time and delta-peak side by side."""
    written = []
    data = _measured(rows, suite)
    for case in dict.fromkeys(r.get("case") for r in data):
        colors = {label: f"C{i % 10}" for i, label in
                  enumerate(dict.fromkeys(_label(r) for r in data if r.get("case") == case))}
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for ax, (metric, ylabel, scale) in zip(axes, METRICS):
            cells: dict[str, dict] = {}
            for r in data:
                if r.get("case") == case and r["metric"] == metric:
                    cells[_label(r)] = r
            labels = list(cells)
            values = [cells[k]["p50"] * scale for k in labels]
            low = [max(v - cells[k].get("p20", cells[k]["p50"]) * scale, 0) for k, v in zip(labels, values)]
            high = [max(cells[k].get("p80", cells[k]["p50"]) * scale - v, 0) for k, v in zip(labels, values)]
            ax.bar(range(len(labels)), values, yerr=[low, high] if metric == "time" else None, capsize=3,
                   color=[colors[k] for k in labels])
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
            ax.set_ylabel(ylabel)
            ax.grid(True, axis="y", alpha=0.3)
            for i, v in enumerate(values):
                ax.annotate(f"{v:.0f}" if v >= 100 else f"{v:.3g}", (i, v), ha="center", va="bottom", fontsize=7)
        fig.suptitle(f"{suite}: {case}")
        fig.tight_layout()
        path = _file(out_dir, suite, case)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", type=Path, help="JSON-lines result files of the suite")
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/results/plots"))
    args = parser.parse_args(argv)
    rows = load([p for p in args.inputs if p.exists()])
    args.out_dir.mkdir(parents=True, exist_ok=True)
    written = plot_lines(rows, args.out_dir, "actor_update")
    written += plot_bars(rows, args.out_dir, "loss_path")
    written += plot_bars(rows, args.out_dir, "teacher_pass")
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()

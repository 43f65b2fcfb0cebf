"""Markdown tables of the suite's JSONL results (loss path, actor update, teacher pass) for docs/benchmarks.md.

    python benchmarks/suite_tables.py benchmarks/results/actor_update_cpu.jsonl benchmarks/results/loss_path_cpu.jsonl

Each table groups the rows of one run by case (and sequence length), with every method's p50 time (p20-p80),
delta-peak, and both as ratios against the suite's baseline measured in the same run: naive top-16 OPD for the loss
path and the actor update, the full forward with logits for the teacher pass. Ratios > 1 mean faster / leaner.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import peers  # benchmarks/, next to this script

BASELINES = {"loss_path": "naive-top16", "actor_update": "opd-top16-naive", "teacher_pass": "hf-full"}


def _key(row: dict) -> tuple:
    return (row["case"], row.get("seq", ""))


def _method(row: dict) -> str:
    backend = row.get("backend")
    return f"{row['method']} ({backend})" if row["suite"] == "loss_path" and backend else row["method"]


def markdown(rows: list[dict]) -> str:
    """One table per suite found in `rows`."""
    out = []
    for suite, baseline in BASELINES.items():
        mine = [r for r in rows if r.get("suite") == suite]
        if not mine:
            continue
        cells: dict[tuple, dict[str, dict]] = {}
        for r in mine:
            cell = cells.setdefault(_key(r), {}).setdefault(_method(r), {"base": r["method"] == baseline})
            cell[r["metric"]] = r
        out += [f"**{suite}**", "", "| case | seq | method | ms p50 (p20-p80) | delta-peak MB | time vs top-16 | "
                "memory vs top-16 |" if suite != "teacher_pass" else "| case | seq | method | ms p50 (p20-p80) | "
                "delta-peak MB | time vs full | memory vs full |", "|---|---|---|---|---|---|---|"]
        for (case, seq), methods in cells.items():
            base = next((c for c in methods.values() if c["base"]), {})
            for method, c in methods.items():
                if "time" not in c:
                    what = next((m for m in ("oom", "skipped", "error") if m in c), "missing")
                    out.append(f"| {case} | {seq} | {method} | {what} | | | |")
                    continue
                t, m = c["time"], c.get("delta_peak", {}).get("p50")
                bt, bm = base.get("time", {}).get("p50"), base.get("delta_peak", {}).get("p50")
                tx = f"{bt / t['p50']:.2f}x" if bt else "-"
                mx = f"{bm / m:.2f}x" if bm and m else "-"
                mem = f"{m / 2**20:,.1f}" if m is not None else "-"
                out.append(f"| {case} | {seq} | {method} | {t['p50']:,.1f} ({t['p20']:,.1f}-{t['p80']:,.1f}) | "
                           f"{mem} | {tx} | {mx} |")
        out.append("")
    return "\n".join(out)




def peer_markdown(rows: list[dict]) -> str:
    """The loss path's peer cases: every method's p50 time and delta-peak, and both against the fastest peer at the
    same loss in the same run (peers.baseline_for: Liger's compiled reverse KL, or its compiled JSD for the
    generalised-JSD methods; > 1: faster / leaner than Liger)."""
    mine = [r for r in rows if r.get("suite") == "loss_path" and r["metric"] in ("time", "delta_peak")]
    runs: dict[tuple, dict[tuple, dict]] = {}
    for r in mine:
        runs.setdefault((r["case"], r["timestamp"]), {}).setdefault((r["method"], r["backend"]), {})[
            r["metric"]] = r["p50"]
    out = ["| case | method | ms p50 | delta-peak MB | against | speed | memory |", "|---|---|---|---|---|---|---|"]
    for (case, _), cells in runs.items():
        for (method, backend), c in cells.items():
            base = peers.baseline_for(method)
            peer = cells.get(base, {})
            if "time" in c and "delta_peak" in c and "time" in peer and "delta_peak" in peer:
                out.append(f"| {case} | {method} ({backend}) | {c['time']:,.0f} | {c['delta_peak'] / 2**20:,.0f} | "
                           f"{'/'.join(base)} | {peer['time'] / c['time']:.2f}x | "
                           f"{peer['delta_peak'] / c['delta_peak']:.2f}x |")
    return "\n".join(out) if len(out) > 2 else ""


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    rows = [json.loads(line) for path in args.inputs for line in path.read_text().splitlines() if line.strip()]
    text = markdown(rows)
    peers = peer_markdown(rows)
    if peers:
        text += "\n**loss path against the peers**\n\n" + peers + "\n"
    print(text)
    return text


if __name__ == "__main__":
    main()

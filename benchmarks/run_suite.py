"""The benchmark suite against top-k OPD in one command: loss path, actor update, teacher pass, then the plots.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 \\
        python benchmarks/run_suite.py --out benchmarks/results          # CPU: the scaled shapes, ~15 minutes
    python benchmarks/run_suite.py --device cuda --out "$OUT"            # GPU: the paper's shapes (gpu_check.sh)
    python benchmarks/run_suite.py --smoke --out /tmp/suite              # tiny shapes, seconds

Each part appends its rows to <out>/<part>_<device>.jsonl (p20/p50/p80, shapes, device, versions, timestamp) and
prints its own side-by-side table; the plots go to <out>/plots/. --budget splits a time budget over the parts (each
part stops starting new cases when its share is spent). A part that fails is reported and the others still run;
the exit status is then 1.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_actor_update  # noqa: E402
import bench_loss_path  # noqa: E402
import bench_teacher_pass  # noqa: E402
import plot_suite  # noqa: E402

PARTS = {  # name: (main, share of the time budget)
    "loss_path": (bench_loss_path.main, 0.3),
    "actor_update": (bench_actor_update.main, 0.5),
    "teacher_pass": (bench_teacher_pass.main, 0.2),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSONL results and plots")
    parser.add_argument("--parts", nargs="*", choices=list(PARTS), default=list(PARTS))
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--budget", type=float, default=None, help="seconds for the whole suite")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    failed, written = [], []
    for name in args.parts:
        run, share = PARTS[name]
        path = args.out / f"{name}_{'smoke' if args.smoke else args.device}.jsonl"
        part_args = ["--device", args.device, "--out", str(path)]
        part_args += ["--smoke"] if args.smoke else []
        part_args += ["--reps", str(args.reps)] if args.reps else []
        part_args += ["--time-budget", str(args.budget * share)] if args.budget else []
        print(f"== {name}: {' '.join(part_args)}", flush=True)
        start = time.perf_counter()
        try:
            run(part_args)
        except Exception:  # noqa: BLE001 - report it, run the other parts
            traceback.print_exc()
            failed.append(name)
        print(f"== {name}: {time.perf_counter() - start:.0f} s", flush=True)
        if path.exists():
            written.append(path)
    if written:
        plot_suite.main([*map(str, written), "--out-dir", str(args.out / "plots")])
    if failed:
        print(f"failed parts: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Whether two `oprd demo` output directories hold the same results, timings aside.

    python scripts/compare_demo_runs.py oprd-demo other-demo

Compares every value of the two `results.json` files except wall-clock timings and the output path (which differ
from run to run by nature), and prints how many numbers were compared and which differ. Exit status 0 when none
differs, 1 otherwise. How a change is shown to leave the demo as it was: run `oprd demo` before and after it on one
machine, then this.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TIMINGS = {"seconds", "seconds_per_step", "seconds_spread", "seconds_per_step_spread"}


def leaves(value, path: str = ""):
    """(dotted path, value) of every scalar in `value`, timings and the output path left out."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key not in TIMINGS and f"{path}.{key}" != ".settings.out":
                yield from leaves(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from leaves(item, f"{path}[{i}]")
    else:
        yield path, value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("first", type=Path)
    p.add_argument("second", type=Path)
    args = p.parse_args(argv)
    a, b = (dict(leaves(json.loads((d / "results.json").read_text()))) for d in (args.first, args.second))
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k, "<absent>") != b.get(k, "<absent>"))
    numbers = sum(isinstance(v, (int, float)) and not isinstance(v, bool) for v in a.values())
    print(f"{numbers} numbers compared ({len(a)} values), {len(differ)} differ")
    for key in differ[:20]:
        print(f"  {key}: {a.get(key, '<absent>')!r} vs {b.get(key, '<absent>')!r}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())

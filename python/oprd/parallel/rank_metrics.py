"""One metrics line for a step that several processes took: each metric combined over the ranks as its meaning
says. `loss/*` values are each rank's share of the whole window's loss, so they add up; times and memory peaks are
the slowest and largest rank's; token counts add up; everything else (means over a rank's batch) is averaged."""

from __future__ import annotations

from oprd.parallel.group import Group

_SUMMED = ("loss/", "tokens/")
_MAXED = ("time/", "memory/")


def reduce_metrics(group: Group, metrics: dict[str, float]) -> dict[str, float]:
    """`metrics` (the same keys on every rank) combined over `group`'s ranks; unchanged for one process."""
    if not group.active:
        return dict(metrics)
    keys = sorted(metrics)
    maxed = [k for k in keys if k.startswith(_MAXED)]
    others = [k for k in keys if k not in maxed]
    out = dict(zip(maxed, group.max([metrics[k] for k in maxed])))
    for key, total in zip(others, group.sum([metrics[k] for k in others])):
        out[key] = total if key.startswith(_SUMMED) else total / group.size
    return {k: out[k] for k in metrics}

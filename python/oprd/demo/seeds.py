"""One demo method over several distillation seeds: the per-seed entries and their mean and spread.

The spread is half the range (max - min) / 2, so a table's "mean ± spread" covers every seed's value; with two
seeds it is the distance of each from the mean.
"""

from __future__ import annotations

AVERAGED = ("accuracy", "gap_closed", "accuracy_teacher_head", "gap_closed_teacher_head", "head_distance", "seconds",
            "seconds_per_step", "response_length", "unpaired_share")


def combine_seeds(entries: list[dict], seeds: list[int]) -> dict:
    """{"seeds", "runs" (the per-seed entries), and for each AVERAGED key the mean and `<key>_spread`}; the
    delta-peak is the first seed's (the update is measured once per method)."""
    if not entries or len(entries) != len(seeds):
        raise ValueError(f"combine_seeds: one entry per seed is needed; got {len(entries)} for seeds {seeds}")
    out: dict = {"seeds": list(seeds), "runs": entries, "update_delta_peak_mb": entries[0]["update_delta_peak_mb"]}
    for key in AVERAGED:
        values = [e[key] for e in entries if key in e]
        if len(values) == len(entries):
            out[key] = sum(values) / len(values)
            out[f"{key}_spread"] = (max(values) - min(values)) / 2
    layers = [e.get("cosine_per_layer") or {} for e in entries]
    if all(layers) and all(layer.keys() == layers[0].keys() for layer in layers):
        out["cosine_per_layer"] = {k: sum(layer[k] for layer in layers) / len(layers) for k in layers[0]}
    return out

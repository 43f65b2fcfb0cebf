"""Every global random generator a training step may draw from (Python's `random`, NumPy's global state, torch's CPU
and CUDA generators), captured as tensors and plain types so that a checkpoint holding them loads with
`torch.load(weights_only=True)`, and restored from them. A multi-process run saves one file per rank."""

from __future__ import annotations

import random
import warnings

import numpy as np
import torch


def rank_rng_file(rank: int) -> str:
    """The file of rank `rank`'s random state, for rank >= 1 (rank 0's is rng_state.pt)."""
    return f"rng_state.rank{rank}.pt"


def capture_rng_state() -> dict:
    """Every global generator a training step may draw from, as tensors and plain types (`weights_only`-loadable)."""
    py_version, py_internal, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    return {
        "python": {"version": py_version, "internal": list(py_internal), "gauss_next": py_gauss},
        "numpy": {"name": str(np_name), "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(rng: dict) -> None:
    """Every generator set back to `rng` (what `capture_rng_state` gave); CUDA states only for the devices seen."""
    py, nps = rng["python"], rng["numpy"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    np.random.set_state((nps["name"], nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"],
                         nps["cached_gaussian"]))
    torch.set_rng_state(rng["torch"])
    cuda_states = rng["cuda"]
    num_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if len(cuda_states) != num_devices:
        warnings.warn(f"checkpoint holds {len(cuda_states)} CUDA RNG states, this process sees {num_devices} "
                      "devices; restoring the common ones only, so CUDA random draws will not continue exactly")
    for device, state in enumerate(cuda_states[:num_devices]):
        torch.cuda.set_rng_state(state, device)

"""OPRD-Bridge end to end (PAPER_NOTES §3): collect paired rows (Stage 0: `collect`, across tokenizers by byte
offsets: `token_alignment`, `byte_ends`, `boundaries`), fit the projections (Stage 1: `fit` over `shards`, with the
teacher's `pca` and each student layer's `projection`), and the `bridge.safetensors` file (`file`) that Stage 2
(`method.name = oprd_bridge`) trains with.

It may import `rollout`, `capture`, `runs` and the selection modules. `objective` imports it (the Bridge term reads
a bridge file's projections), as do `integrations`, `train` and above; it never imports `objective`.
"""

from oprd.bridge.collect import CollectSettings, collect_rows, read_manifest
from oprd.bridge.file import Bridge, BridgeFileError, ModelIdentity, check_bridge_fits, load_bridge, save_bridge
from oprd.bridge.fit import fit_bridge, fit_collected
from oprd.bridge.shards import ShardError, read_shards

__all__ = ["Bridge", "BridgeFileError", "CollectSettings", "ModelIdentity", "ShardError", "check_bridge_fits",
           "collect_rows", "fit_bridge", "fit_collected", "load_bridge", "read_manifest", "read_shards", "save_bridge"]

"""OPRD-Bridge end to end (PAPER_NOTES §3): collect paired rows (Stage 0), fit the projections (Stage 1), and the
`bridge.safetensors` file that Stage 2 (`method.name = oprd_bridge`) trains with."""

from oprd.bridge.collect import CollectSettings, collect_rows, read_manifest
from oprd.bridge.file import Bridge, BridgeFileError, ModelIdentity, check_bridge_fits, load_bridge, save_bridge
from oprd.bridge.fit import ShardError, fit_bridge, fit_collected, read_shards

__all__ = ["Bridge", "BridgeFileError", "CollectSettings", "ModelIdentity", "ShardError", "check_bridge_fits",
           "collect_rows", "fit_bridge", "fit_collected", "load_bridge", "read_manifest", "read_shards", "save_bridge"]

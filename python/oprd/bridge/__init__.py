"""OPRD-Bridge end to end (PAPER_NOTES §3): collect paired rows (Stage 0), fit the projections (Stage 1), and the
`bridge.safetensors` file that Stage 2 (`method.name = oprd_bridge`) trains with."""

from oprd.bridge.file import Bridge, BridgeFileError, ModelIdentity, check_bridge_fits, load_bridge, save_bridge

__all__ = ["Bridge", "BridgeFileError", "ModelIdentity", "check_bridge_fits", "load_bridge", "save_bridge"]

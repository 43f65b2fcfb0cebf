"""What one objective is: the method, its OPD variant, its OPRD settings (ObjectiveSpec)."""

from __future__ import annotations

from dataclasses import dataclass

OPD_VARIANTS = ("opd_top1", "opd_topk", "opd_full")
BRIDGE_METHODS = ("oprd_bridge", "oprd_bridge+opd")  # OPRD-Bridge: states compared through a bridge file's projections
METHODS = ("oprd", *OPD_VARIANTS, "oprd+opd", *BRIDGE_METHODS)  # each has its row of terms in methods.py
ALIGNING_METHODS = ("oprd", "oprd+opd")  # the methods with an OPRD term: they compare hidden states directly
COMBINED_METHODS = ("oprd+opd", "oprd_bridge+opd")  # mu * (their state term) + L_OPD of `opd_variant`
OPD_IMPLS = ("fused", "naive")


@dataclass(frozen=True)
class ObjectiveSpec:
    method: str = "oprd"
    topk: int = 16
    mu: float = 1.0  # multiplies L_OPRD (L_Bridge) in method "oprd+opd" ("oprd_bridge+opd")
    opd_variant: str = "opd_top1"  # the OPD term of "oprd+opd" (the paper's: sampled-token); other methods name theirs
    coefficient: float = 1.0  # multiplies L_OPRD in method "oprd"
    loss_type: str = "mse"
    layers: str | list[int] = "all"
    positions: str = "last_k"
    k: int = 2000
    weighting: str = "token"
    gradient_injection: bool = False
    backend: str | None = None
    log_cosine: bool = True  # OPD methods too log rep/cosine_similarity (their passes run every layer anyway)
    opd_impl: str = "fused"  # "fused": no logits materialised; "naive": the reference code's logits and losses
    logit_metrics: bool = True  # OPD methods log reward, entropies and top-k overlap
    bridge_coefficient: float = 10.0  # multiplies L_Bridge in method "oprd_bridge" (the reference code's 10)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"ObjectiveSpec: `method` must be one of {list(METHODS)}; got {self.method!r}")
        if self.opd_variant not in OPD_VARIANTS:
            raise ValueError(f"ObjectiveSpec: `opd_variant` must be one of {list(OPD_VARIANTS)}; got "
                             f"{self.opd_variant!r}")
        if self.opd_impl not in OPD_IMPLS:
            raise ValueError(f"ObjectiveSpec: `opd_impl` must be 'fused' or 'naive'; got {self.opd_impl!r}")

    @property
    def uses_oprd(self) -> bool:
        return self.method in ALIGNING_METHODS

    @property
    def uses_bridge(self) -> bool:
        return self.method in BRIDGE_METHODS

    @property
    def distils_states(self) -> bool:
        """An OPRD or Bridge term: the objective reads the selected response positions' hidden states."""
        return self.uses_oprd or self.uses_bridge

    @property
    def uses_opd(self) -> bool:
        return self.method not in ("oprd", "oprd_bridge")

    @property
    def opd(self) -> str | None:
        """The OPD variant this objective's OPD term computes (None: no OPD term)."""
        if not self.uses_opd:
            return None
        return self.opd_variant if self.method in COMBINED_METHODS else self.method

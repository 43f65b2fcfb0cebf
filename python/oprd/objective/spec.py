"""What one objective is: the method, its OPD variant, its OPRD settings (ObjectiveSpec)."""

from __future__ import annotations

from dataclasses import dataclass

OPD_VARIANTS = ("opd_top1", "opd_topk", "opd_full")
METHODS = ("oprd", *OPD_VARIANTS, "oprd+opd")  # each has its row of terms in methods.py
ALIGNING_METHODS = ("oprd", "oprd+opd")  # the methods with an OPRD term: they compare hidden states directly
OPD_IMPLS = ("fused", "naive")


@dataclass(frozen=True)
class ObjectiveSpec:
    method: str = "oprd"
    topk: int = 16
    mu: float = 1.0  # multiplies L_OPRD in method "oprd+opd"
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
    def uses_opd(self) -> bool:
        return self.method != "oprd"

    @property
    def opd(self) -> str | None:
        """The OPD variant this objective's OPD term computes (None: no OPD term)."""
        if not self.uses_opd:
            return None
        return self.opd_variant if self.method == "oprd+opd" else self.method

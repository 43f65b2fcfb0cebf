"""The method table: which loss terms each method adds up, and each one's coefficient.

A new method is one row here (and, when it distils something new, one new term: oprd_term.py, opd_term.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from oprd.objective.bridge_term import BridgeTerm
from oprd.objective.opd_term import OPDTerm
from oprd.objective.oprd_term import OPRDTerm
from oprd.objective.spec import ObjectiveSpec
from oprd.objective.terms import Term


@dataclass(frozen=True)
class Use:
    """One term of a method and its coefficient, read from the spec."""

    term: Term
    coefficient: Callable[[ObjectiveSpec], float] = lambda spec: 1.0


_OPRD, _OPD, _BRIDGE = OPRDTerm(), OPDTerm(), BridgeTerm()

METHOD_TERMS: dict[str, tuple[Use, ...]] = {
    "oprd": (Use(_OPRD, lambda spec: spec.coefficient),),
    "opd_top1": (Use(_OPD),),
    "opd_topk": (Use(_OPD),),
    "opd_full": (Use(_OPD),),
    "oprd+opd": (Use(_OPRD, lambda spec: spec.mu), Use(_OPD)),  # mu L_OPRD + L_OPD, OPD of `spec.opd_variant`
    "oprd_bridge": (Use(_BRIDGE, lambda spec: spec.bridge_coefficient),),
    "oprd_bridge+opd": (Use(_BRIDGE, lambda spec: spec.mu), Use(_OPD)),  # mu L_Bridge + L_OPD
}


def terms_of(spec: ObjectiveSpec) -> tuple[Use, ...]:
    return METHOD_TERMS[spec.method]

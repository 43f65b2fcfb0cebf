"""The method table: which loss terms each method adds up, and each one's coefficient.

A new method is one row here (and, when it distils something new, one new term: oprd_term.py, opd_term.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from oprd.objective.opd_term import OPDTerm
from oprd.objective.oprd_term import OPRDTerm
from oprd.objective.spec import ObjectiveSpec
from oprd.objective.terms import Term


@dataclass(frozen=True)
class Use:
    """One term of a method and its coefficient, read from the spec."""

    term: Term
    coefficient: Callable[[ObjectiveSpec], float] = lambda spec: 1.0


_OPRD, _OPD = OPRDTerm(), OPDTerm()

METHOD_TERMS: dict[str, tuple[Use, ...]] = {
    "oprd": (Use(_OPRD, lambda spec: spec.coefficient),),
    "opd_top1": (Use(_OPD),),
    "opd_topk": (Use(_OPD),),
    "opd_full": (Use(_OPD),),
    "oprd+opd": (Use(_OPRD, lambda spec: spec.mu), Use(_OPD)),  # mu L_OPRD + L_OPD, OPD of `spec.opd_variant`
}


def terms_of(spec: ObjectiveSpec) -> tuple[Use, ...]:
    return METHOD_TERMS[spec.method]

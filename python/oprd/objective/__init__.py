"""The training objectives on one batch of rollouts: OPRD, the OPD baselines, and L_OPD + mu * L_OPRD.

Made of parts, each in its own module:
- spec.py: ObjectiveSpec, what one objective is (method, OPD variant, OPRD settings);
- plan.py: LayerPlan, the layers read for one student-teacher pair;
- counts.py: the distilled positions and the token counts the means divide by (gradient accumulation);
- passes.py: the teacher pass (no grad; truncated into the compact cache when no LM head is needed) and the
  student pass (stops after its deepest distilled layer unless a term needs the final state);
- terms.py, oprd_term.py, opd_term.py: the loss terms; methods.py: the table method -> terms and coefficients;
- metrics.py: the diagnostics, on logging steps only; compute.py: compute_objective, which assembles them;
- pairing.py: which student/teacher widths a method can train, read from the configs alone.

It may import `bridge` (a bridge file's projections), `rollout`, `capture` and the selection modules; `integrations`,
`train` and above import it. A new method is a new term and a row of methods.py.
"""

from oprd.objective.compute import StepResult, compute_objective
from oprd.objective.counts import TokenCounts, distilled_positions, token_counts
from oprd.objective.methods import METHOD_TERMS, terms_of
from oprd.objective.metrics import cosine_metrics, logit_metrics
from oprd.objective.passes import Needs, TeacherOutputs, student_pass, teacher_pass
from oprd.objective.plan import LayerPlan, plan_layers
from oprd.objective.spec import METHODS, OPD_IMPLS, OPD_VARIANTS, ObjectiveSpec

__all__ = [
    "METHODS", "METHOD_TERMS", "OPD_IMPLS", "OPD_VARIANTS", "LayerPlan", "Needs", "ObjectiveSpec", "StepResult",
    "TeacherOutputs", "TokenCounts", "compute_objective", "cosine_metrics", "distilled_positions",
    "logit_metrics", "plan_layers", "student_pass", "teacher_pass", "terms_of", "token_counts",
]

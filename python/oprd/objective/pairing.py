"""Which student/teacher pairs a method can train, checked from the two models' configs alone (before any weights
load, and again when a Trainer is built from models in memory).

OPRD-Vanilla (`oprd`, and the OPRD term of `oprd+opd`) compares hidden states directly, so both models need the same
hidden size; OPD compares next-token distributions and trains with any widths.
"""

from __future__ import annotations

from oprd.objective.spec import ALIGNING_METHODS


def check_widths(method: str, student_width: int, teacher_width: int) -> None:
    """ValueError naming `model.teacher`, both widths and the way out when `method` needs equal hidden sizes."""
    if method in ALIGNING_METHODS and student_width != teacher_width:
        raise ValueError(
            f"`model.teacher` has hidden size {teacher_width} and `model.student` {student_width}: method "
            f"{method!r} (OPRD-Vanilla) aligns hidden states directly and needs equal widths. Pair models of "
            f"different widths through the Bridge method (OPRD-Bridge, learned projections), or train with an OPD "
            f"method (method.name=opd_top1, opd_topk or opd_full), which works with any widths")


def hidden_size(config) -> int:
    """The hidden size of a Hugging Face model config (text models; multimodal configs keep it in text_config)."""
    text = getattr(config, "text_config", None) or config
    size = getattr(text, "hidden_size", None)
    if not isinstance(size, int):
        raise ValueError(f"the model config {type(config).__name__} has no integer hidden_size")
    return size

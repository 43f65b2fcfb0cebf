"""`oprd.head_from_teacher`: start the student from the teacher's LM head and final norm (beyond the paper).

OPRD never runs the student's LM head, so an untied head is never trained: a student whose head is far from the
teacher's can match the teacher's hidden states and still decode them badly (issue 13's finding, docs/trainer.md).
Copying the teacher's head and final norm into the student before training removes that gap for pairs of the same
width and vocabulary. It needs an untied student head: with tied embeddings the copy would replace the student's
input embeddings too, which is another experiment.
"""

from __future__ import annotations

import torch
from torch import nn

from oprd.capture import decoder_parts
from oprd.objective.pairing import hidden_size

KEY = "oprd.head_from_teacher"


def check_head_transfer(student_config, teacher_config) -> None:
    """ValueError naming `oprd.head_from_teacher` unless the two configs allow the copy: the same hidden size and
    vocabulary size, and a student whose LM head is not tied to its input embeddings."""
    s_text = getattr(student_config, "text_config", None) or student_config
    t_text = getattr(teacher_config, "text_config", None) or teacher_config
    s_width, t_width = hidden_size(student_config), hidden_size(teacher_config)
    if s_width != t_width:
        raise ValueError(f"`{KEY}` copies the teacher's LM head and final norm into the student, which needs equal "
                         f"hidden sizes; got student {s_width}, teacher {t_width}")
    s_vocab, t_vocab = getattr(s_text, "vocab_size", None), getattr(t_text, "vocab_size", None)
    if s_vocab != t_vocab:
        raise ValueError(f"`{KEY}` needs the same vocabulary size (LM-head rows); got student {s_vocab}, teacher "
                         f"{t_vocab}")
    if getattr(student_config, "tie_word_embeddings", False):
        raise ValueError(f"`{KEY}`: the student ties its LM head to its input embeddings (tie_word_embeddings), so "
                         "copying the teacher's head would replace its embeddings too; use an untied student or "
                         f"leave `{KEY}` off")


@torch.no_grad()
def copy_head_and_norm(student: nn.Module, teacher: nn.Module) -> None:
    """Overwrite the student's LM head and final norm with the teacher's values (the student keeps its own
    parameter objects, so an optimizer built before or after sees the same tensors)."""
    check_head_transfer(student.config, teacher.config)
    s_parts, t_parts = decoder_parts(student), decoder_parts(teacher)
    if s_parts.lm_head.weight is student.get_input_embeddings().weight:  # tied in the module even if not in config
        raise ValueError(f"`{KEY}`: the student's LM head shares its weight with the input embeddings")
    for name, (s_module, t_module) in {"lm_head": (s_parts.lm_head, t_parts.lm_head),
                                       "norm": (s_parts.norm, t_parts.norm)}.items():
        s_state, t_state = s_module.state_dict(), t_module.state_dict()
        if s_state.keys() != t_state.keys() or any(s_state[k].shape != t_state[k].shape for k in s_state):
            raise ValueError(f"`{KEY}`: the student's {name} ({type(s_module).__name__}, "
                             f"{ {k: tuple(v.shape) for k, v in s_state.items()} }) does not match the teacher's "
                             f"({type(t_module).__name__}, { {k: tuple(v.shape) for k, v in t_state.items()} })")
        for key, value in s_state.items():
            value.copy_(t_state[key])

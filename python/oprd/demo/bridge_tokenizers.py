"""The Bridge demo's cross-tokenizer pair: a teacher of the Bridge teacher's shape that reads a byte-level BPE
(oprd.tasks.tokenizers.build_bpe_tokenizer, trained on the task's text) instead of the student's characters.

The teacher is trained by SFT on the same examples in its own tokens; Stage 0 pairs each student token with the
teacher token ending at the same byte (oprd.bridge.token_alignment; student tokens inside a longer teacher token
stay unpaired and are counted); the bridge is fitted at the paper's cross-tokenizer rank (4); Stage 2 trains
OPRD-Bridge over the seeds. OPD has no row here: the two heads predict different vocabularies.
"""

from __future__ import annotations

from oprd.bridge.collect import other_tokens
from oprd.demo.bridge_stages import collect_and_fit, train_teacher
from oprd.demo.distill import distill_runs
from oprd.demo.settings import DemoRun
from oprd.demo.stage import accuracy
from oprd.rollout import eos_token_ids
from oprd.tasks.tokenizers import build_bpe_tokenizer

BPE_TEXTS = 4000  # SFT examples the teacher's BPE is trained on


def run_cross_tokenizer(settings, stage, student, acc_student: float, labels: tuple[str, str, str]) -> dict:
    """The pair's teacher, bridge and Bridge runs; returns results.json's "cross_tokenizer" entry."""
    base = settings.base
    tokenizer = build_bpe_tokenizer([e.prompt + e.solution for e in stage.train[:BPE_TEXTS]], settings.bpe_vocab)
    teacher = train_teacher(settings, stage, tokenizer, "bpe_teacher", labels[0],
                            f"the cross-tokenizer teacher on a byte-level BPE of {len(tokenizer)} tokens")
    acc_teacher = accuracy(teacher, tokenizer, stage.task, stage.eval_set, base)
    stage.log(f"      cross-tokenizer teacher {acc_teacher:.3f}, student {acc_student:.3f}")
    pairing = other_tokens(stage.tokenizer, tokenizer, eos_token_ids(student, stage.tokenizer))
    path, summary = collect_and_fit(settings, stage, student, teacher, "bpe_bridge", settings.cross_rank, pairing,
                                    labels[1])
    runs = [DemoRun("oprd_bridge", "oprd_bridge", False, (f"bridge.path={path}",), "bpe_oprd_bridge")]
    methods = distill_runs(base, stage, runs, teacher, acc_student, acc_teacher, labels[2],
                           teacher_tokenizer=tokenizer)
    return {"teacher_accuracy": acc_teacher, "teacher_vocab": len(tokenizer), "bridge": summary, "methods": methods}

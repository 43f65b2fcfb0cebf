"""`oprd demo --bridge`: OPRD-Bridge end to end on the embedded task, a teacher of another depth and width.

1. The same tokenizer, task sets and 3x64 SFT run as `oprd demo`; the student is chosen from its candidates as
   there (oprd.demo.student_choice), against the final 3x64 model's accuracy.
2. A wider, deeper teacher (4 blocks of 96 by default) trained by SFT on the same examples.
3. Stage 0 and 1 (oprd.bridge): the student answers prompts, both models' rows are collected, the bridge is fitted
   at rank 8 with the rank sweep beside it.
4. The paper's Table 4 rows from the same student, steps and seeds: OPD top-1, OPD top-16, OPRD-Bridge, and
   Bridge for half the steps then OPD top-1; accuracy, gap closed and response length.
5. The cross-tokenizer pair (oprd.demo.bridge_tokenizers): a teacher of the same shape on a byte-level BPE, its
   bridge at rank 4, OPRD-Bridge across the tokenizers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from transformers import LlamaForCausalLM

from oprd.demo.bridge_report import plot_bridge, render_bridge_tables
from oprd.demo.bridge_stages import collect_and_fit, train_teacher
from oprd.demo.bridge_tokenizers import run_cross_tokenizer
from oprd.demo.distill import distill_runs
from oprd.demo.run import teacher_and_student, write_outputs
from oprd.demo.settings import DemoRun, DemoSettings
from oprd.demo.stage import accuracy, prepare


@dataclass
class BridgeDemoSettings:
    base: DemoSettings = field(default_factory=lambda: DemoSettings(out="oprd-demo-bridge"))
    teacher_hidden: int = 96
    teacher_layers: int = 4
    collect_prompts: int = 512
    rows_per_response: int = 8
    max_rows: int = 4096
    rank: int = 8
    ranks: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    fit_epochs: int = 20
    fit_lr: float = 1e-2  # the paper's 1e-3 under-fits 4,096 rows (scripts/bridge_probe.py, docs/bridge.md)
    cross_tokenizer: bool = True  # also the cross-tokenizer pair (a BPE teacher)
    bpe_vocab: int = 80
    cross_rank: int = 4  # the paper's cross-tokenizer default
    teacher_sft_steps: int = 0  # SFT steps of the two Bridge teachers; 0: the base run's

    @property
    def teacher_steps(self) -> int:
        return self.teacher_sft_steps or self.base.sft_steps

    @classmethod
    def quick(cls, out: str, seed: int = 0) -> "BridgeDemoSettings":
        """Every stage on tiny budgets (the tests): the numbers mean little."""
        return cls(base=replace(DemoSettings.quick(out, seed), methods=(), teacher_head_methods=()),
                   teacher_hidden=48, teacher_layers=3, collect_prompts=8, max_rows=64, ranks=(1, 2, 4), rank=4,
                   fit_epochs=2, cross_rank=2, teacher_sft_steps=100)

    def runs(self, bridge_file: Path) -> list[DemoRun]:
        bridge = (f"bridge.path={bridge_file}",)
        half = max(1, self.base.distill_steps // 2)
        return [DemoRun("opd_top1", "opd_top1", False), DemoRun("opd_topk", "opd_topk", False),
                DemoRun("oprd_bridge", "oprd_bridge", False, bridge),
                DemoRun("oprd_bridge, then opd_top1", "oprd_bridge", False,
                        (*bridge, "method.then=opd_top1", f"method.switch_step={half}"), "oprd_bridge_then_opd_top1")]


def run_bridge_demo(settings: BridgeDemoSettings, progress: bool = True) -> dict:
    """The stages (module docstring); returns results.json's content."""
    base = settings.base
    labels = [f"[{i}/{8 if settings.cross_tokenizer else 5}]" for i in range(1, 9)]
    stage = prepare(base, progress)
    trained = teacher_and_student(base, stage, labels[0])  # the 3x64 run: its candidates give the student
    teacher = train_teacher(settings, stage, stage.tokenizer, "bridge_teacher", labels[1], "the Bridge teacher")
    student = LlamaForCausalLM.from_pretrained(stage.out / "models" / "student")
    acc_teacher = accuracy(teacher, stage.tokenizer, stage.task, stage.eval_set, base)
    acc_student = accuracy(student, stage.tokenizer, stage.task, stage.eval_set, base)
    stage.log(f"      Bridge teacher {acc_teacher:.3f}, student {acc_student:.3f}")
    bridge_file, fit = collect_and_fit(settings, stage, student, teacher, "bridge", settings.rank, None, labels[2])
    results: dict = {"settings": asdict(settings), "teacher_accuracy": acc_teacher, "student_accuracy": acc_student,
                     "student_choice": trained["student_choice"], "bridge": fit}
    results["methods"] = distill_runs(base, stage, settings.runs(bridge_file), teacher, acc_student, acc_teacher,
                                      labels[3])
    if settings.cross_tokenizer:
        results["cross_tokenizer"] = run_cross_tokenizer(settings, stage, student, acc_student, tuple(labels[4:7]))
    write_outputs(stage, results, render_bridge_tables, plot_bridge, labels[7 if settings.cross_tokenizer else 4])
    return results

"""What `oprd demo` runs: its settings (sizes, budgets, the methods, the seeds) and one table row (`DemoRun`)."""

from __future__ import annotations

from dataclasses import dataclass, field

METHODS = ("oprd", "opd_top1", "opd_topk", "opd_full", "oprd+opd")


@dataclass
class DemoSettings:
    out: str = "oprd-demo"
    seed: int = 0
    digits: int = 3
    hidden: int = 64
    layers: int = 3
    sft_examples: int = 20000
    sft_steps: int = 1000
    sft_batch: int = 64
    sft_lr: float = 3e-3
    student_ratio: float = 0.65  # the student: the SFT candidate nearest this share of the teacher's accuracy
    candidate_every: int = 5  # SFT steps between candidate students (all kept: the demo's models are small)
    candidate_stride: int = 5  # the coarse search evaluates every this many candidates (oprd.demo.student_choice)
    select_size: int = 64  # held-out problems the candidates and the teacher are compared on (not the eval set)
    distill_steps: int = 200
    prompts_per_step: int = 16
    responses_per_prompt: int = 2
    distill_lr: float = 5e-4
    topk: int = 16
    mu: float = 10.0  # the paper's stronger setting (mu = 10 lifted OPD top-1 the most)
    eval_size: int = 96
    eval_samples: int = 4
    eval_every: int = 40
    methods: tuple[str, ...] = METHODS
    teacher_head_methods: tuple[str, ...] = ("oprd",)  # also run these with oprd.head_from_teacher (beyond the paper)
    seeds: int = 2  # distillation seeds per method: seed, seed + 1, ...; tables show mean ± spread
    extra: dict = field(default_factory=dict)

    def runs(self) -> list["DemoRun"]:
        return ([DemoRun(m, m, False) for m in self.methods] +
                [DemoRun(f"{m} (teacher head)", m, True) for m in self.teacher_head_methods])

    @classmethod
    def quick(cls, out: str, seed: int = 0) -> "DemoSettings":
        """About a minute on two CPU cores: every stage runs, the numbers mean little."""
        return cls(out=out, seed=seed, digits=2, sft_examples=2000, sft_steps=300, distill_steps=4,
                   prompts_per_step=4, eval_size=12, eval_samples=2, eval_every=2, select_size=12)


@dataclass(frozen=True)
class DemoRun:
    """One row of the demo's tables: a method, optionally started from the teacher's LM head and final norm."""

    label: str
    method: str
    head_from_teacher: bool
    overrides: tuple[str, ...] = ()  # more config overrides (the Bridge demo: bridge.path, method.then)
    name: str = ""  # its runs/ directory, when the method's name is not enough

    @property
    def dir_name(self) -> str:
        if self.name:
            return self.name
        return self.method.replace("+", "_plus_") + ("_teacher_head" if self.head_from_teacher else "")

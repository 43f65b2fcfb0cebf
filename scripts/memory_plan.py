"""Print docs/trainer.md's memory plan: one OPRD step's GB per part for 1.5B and 7B students and teachers (Qwen2.5
shapes), for each weight/optimizer setting, with and without gradient checkpointing (oprd.train.memory_plan).

    python scripts/memory_plan.py [--micro-batch-tokens 16384] [--rollout-sequences 16 --rollout-tokens 8192]
"""

from __future__ import annotations

import argparse

from oprd.train.memory_plan import QWEN25_1_5B, QWEN25_7B, STATE_BYTES, Step, plan

PARTS = ("student weights", "gradients", "optimizer states", "activations", "teacher (bf16)", "teacher cache",
         "rollout KV cache", "total")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--micro-batch-tokens", type=int, default=Step.micro_batch_tokens)
    parser.add_argument("--rollout-sequences", type=int, default=Step.rollout_sequences)
    parser.add_argument("--rollout-tokens", type=int, default=Step.rollout_tokens)
    args = parser.parse_args()
    step = Step(micro_batch_tokens=args.micro_batch_tokens, distilled_rows=args.micro_batch_tokens,
                rollout_sequences=args.rollout_sequences, rollout_tokens=args.rollout_tokens)
    for shape in (QWEN25_1_5B, QWEN25_7B):
        print(f"{shape.name}: {shape.parameters / 1e9:.2f}B parameters")
    print(f"\nstep: {step}\n")
    print("| student <- teacher | weights, optimizer | checkpointing | " + " | ".join(PARTS) + " |")
    print("|---|---|---|" + "---|" * len(PARTS))
    for student in (QWEN25_1_5B, QWEN25_7B):
        for teacher in (QWEN25_1_5B, QWEN25_7B):
            for states in STATE_BYTES:
                for checkpointing in (False, True):
                    gb = plan(student, teacher, states, checkpointing, step)
                    cells = " | ".join(f"{gb[p]:.1f}" for p in PARTS)
                    print(f"| {student.name} <- {teacher.name} | {states} | {'on' if checkpointing else 'off'} | "
                          f"{cells} |")


if __name__ == "__main__":
    main()

"""Capture benchmark: the lean passes of oprd.capture against the plain Hugging Face way, side by side, on random-init
Llama models (no downloads). Time (p20/p50/p80) and delta-peak memory per pass.

  (a) teacher: truncated pass into the compact bf16 cache, against a full forward with output_hidden_states=True and
      the LM head, gathering the selected rows into an fp32 cache (what the paper's code does);
  (b) student: capture + fused OPRD loss + backward (`oprd`; `inject` with gradient injection), against
      output_hidden_states=True with the LM head, the rows copied to fp32 and the reference loss, + backward.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 \\
        python benchmarks/bench_capture.py --out benchmarks/results/capture_cpu.jsonl
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

import oprd_kernels  # noqa: E402
from oprd.capture import capture_student, position_ids_from_mask, teacher_cache  # noqa: E402
from oprd.injection import injected_alignment_loss  # noqa: E402
from oprd.positions import select_positions  # noqa: E402


@dataclass(frozen=True)
class Case:
    name: str
    hidden: int
    layers: int
    vocab: int
    batch: int
    seq: int
    last_k: int
    checkpointing: bool = False  # activation checkpointing on the student: layer outputs are then most of what
    # backward holds, and the dense per-layer loss gradients weigh as much


CASES = [
    Case("tiny", 64, 4, 256, 2, 64, 16),
    Case("larger", 512, 6, 32000, 2, 256, 128),
    Case("long-ckpt", 256, 12, 2048, 2, 2048, 512, checkpointing=True),
]
GPU_CASES = [Case("gpu-1.5B-shape", 1536, 8, 151936, 2, 4096, 2000)]


def model(case: Case, seed: int, device: torch.device) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=case.vocab, hidden_size=case.hidden, intermediate_size=int(case.hidden * 2.75),
                         num_hidden_layers=case.layers, num_attention_heads=8, num_key_value_heads=4,
                         max_position_embeddings=2 * case.seq)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # bf16 on the GPU, as trained
    return LlamaForCausalLM(config).to(device=device, dtype=dtype)


def batch(case: Case, device: torch.device):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, case.vocab, (case.batch, case.seq), generator=g).to(device)
    mask = torch.ones_like(ids)
    mask[0, : case.seq // 8] = 0  # one left-padded prompt
    response = mask.clone()
    response[:, : case.seq // 4] = 0
    rows, weights = select_positions(response, "last_k", case.last_k)
    return ids, mask, rows, weights


def plain_teacher(teacher, ids, mask, rows, layers):
    with torch.no_grad():
        out = teacher(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                      output_hidden_states=True)
        return torch.stack([out.hidden_states[i].reshape(-1, out.hidden_states[i].shape[-1])[rows].float()
                            for i in layers])


def plain_student(student, ids, mask, rows, weights, layers, cache):
    out = student(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                  output_hidden_states=True)
    states = [out.hidden_states[i].reshape(-1, out.hidden_states[i].shape[-1])[rows].float() for i in layers]
    loss = oprd_kernels.reference.alignment_loss(torch.stack(states), cache.float(), weights=weights)
    loss.backward()
    return loss


def lean_student(student, ids, mask, rows, weights, layers, cache, inject=False):
    states = capture_student(student, ids, mask, layers)
    loss_fn = injected_alignment_loss if inject else oprd_kernels.alignment_loss
    loss = loss_fn(states.states, cache, rows=rows, weights=weights)
    loss.backward()
    return loss


def measure_case(case: Case, device: torch.device, reps: int, env: dict) -> list[dict]:
    teacher, student = model(case, 1, device), model(case, 2, device)
    if case.checkpointing:
        enable = getattr(student, "activation_checkpointing_enable", None) or student.gradient_checkpointing_enable
        enable()
        student.train()
    ids, mask, rows, weights = batch(case, device)
    out = []
    for mode, layers in (("all", list(range(1, case.layers + 1))), ("first-half", [case.layers // 2])):
        cache = teacher_cache(teacher, ids, mask, layers, rows)
        runs = {
            ("teacher", "plain"): lambda: plain_teacher(teacher, ids, mask, rows, layers),
            ("teacher", "oprd"): lambda: teacher_cache(teacher, ids, mask, layers, rows),
            ("student", "plain"): lambda: plain_student(student, ids, mask, rows, weights, layers, cache),
            ("student", "oprd"): lambda: lean_student(student, ids, mask, rows, weights, layers, cache),
            ("student", "inject"): lambda: lean_student(student, ids, mask, rows, weights, layers, cache, True),
        }
        for (which, how), fn in runs.items():
            student.zero_grad(set_to_none=True)
            timing = harness.time_ms(fn, device, reps=reps)
            student.zero_grad(set_to_none=True)
            peak = harness.delta_peak_bytes(fn, device)
            out.append({"suite": "capture", "pass": which, "method": how, "layers_mode": mode, **asdict(case),
                        "rows_selected": rows.numel(), "delta_peak_bytes": peak,
                        **harness.percentiles_dict(timing), **env})
            print(f"{case.name:<16}{mode:<12}{which:<9}{how:<7}{timing.p50:>10.2f} ms {peak / 2**20:>10.1f} MB",
                  flush=True)
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--cases", default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cases = (GPU_CASES if device.type == "cuda" else []) + CASES
    if args.cases:
        cases = [c for c in cases if c.name in args.cases.split(",")]
    env = harness.environment(device)
    rows = [row for case in cases for row in measure_case(case, device, args.reps, env)]
    if args.out:
        harness.append_rows(args.out, rows)
    return rows


if __name__ == "__main__":
    main()

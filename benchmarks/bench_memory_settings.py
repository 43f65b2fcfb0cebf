"""Memory-settings benchmark: one OPRD update (capture, fused alignment loss, backward, optimizer step) of the same
student on the same tokens under each weight / optimizer / checkpointing setting, side by side in one process, with
the counts of oprd.train.memory_plan for the same shape printed beside the measurements.

Measured per setting: the update's time (p20/p50/p80 of whole updates), its delta-peak (peak allocated during the
update minus allocated at its start: gradients, saved activations, the loss's workspace, the optimizer step's
temporaries) and the resident state (weights + optimizer moments, bytes of the tensors themselves). Predicted: the
plan's gradients + activations for the delta-peak, weights + moments for the resident state. The ratios are against
the first setting measured in the same run (fp32 weights, fp32 AdamW, no checkpointing unless --settings says).

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 \\
        python benchmarks/bench_memory_settings.py --device cpu --out benchmarks/results/memory_settings_cpu.jsonl
    python benchmarks/bench_memory_settings.py --device cuda --out results/memory_settings.jsonl   # Qwen2.5-1.5B
    python benchmarks/bench_memory_settings.py --device cuda --shape 7b --out results/memory_settings.jsonl
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

import oprd_kernels  # noqa: E402
from oprd.capture import capture_student, teacher_cache  # noqa: E402
from oprd.positions import select_positions  # noqa: E402
from oprd.train.memory_plan import QWEN25_1_5B, QWEN25_7B, Shape  # noqa: E402
from oprd.train.optim import PARAM_DTYPES, build_optimizer  # noqa: E402

SETTINGS = [  # (param dtype, optimizer, gradient checkpointing)
    ("fp32", "adamw", False), ("fp32", "adamw", True), ("bf16", "adamw", True), ("bf16", "adamw_8bit", True),
]
CPU_SHAPE = Shape("cpu-512x4", layers=4, hidden=512, ffn=1536, heads=8, kv_heads=2, vocab=8192, tied=True,
                  qkv_bias=True)
SHAPES = {  # name: (shape, (sequences, tokens each): all response)
    "smoke": (Shape("smoke", layers=2, hidden=64, ffn=128, heads=4, kv_heads=2, vocab=256, tied=True, qkv_bias=True),
              (2, 16)),
    "cpu": (CPU_SHAPE, (2, 512)),
    "1.5b": (QWEN25_1_5B, (2, 8192)),
    "7b": (QWEN25_7B, (2, 4096)),  # the memory plan's 7B student on one H200: bf16 settings only (fp32 needs 122 GB)
}


def build(shape: Shape, seed: int, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The model initialised where it runs and in its dtype (a 7B model's fp32 copy alone would take 30 GB)."""
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.ffn,
                         num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                         num_key_value_heads=shape.kv_heads, tie_word_embeddings=shape.tied, use_cache=False,
                         max_position_embeddings=16384, attn_implementation="sdpa")
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(default)


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the weights and of every optimizer state tensor (a quantised state counts its own storage)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    moments = 0
    for state in optimizer.state.values():
        for key, value in state.items():
            if key == "step" or not isinstance(value, torch.Tensor):
                continue
            flatten = getattr(value, "__tensor_flatten__", None)  # a quantised state: its codes and scales
            inner = [getattr(value, name) for name in flatten()[0]] if flatten else [value]
            moments += sum(t.numel() * t.element_size() for t in inner)
    return weights + moments


def make_update(student, optimizer, ids, attention, layers, cache, rows, weights):
    def update() -> None:
        states = capture_student(student, ids, attention, layers).states
        loss = oprd_kernels.alignment_loss(states, cache, rows=rows, weights=weights)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return update


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", choices=list(SHAPES), default=None, help="default: cpu on CPU, 1.5b on CUDA")
    parser.add_argument("--settings", nargs="*", type=int, default=None,
                        help="indices into SETTINGS (default: all; 7b: the bf16 ones)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    shape_name = args.shape or ("1.5b" if device.type == "cuda" else "cpu")
    shape, (batch, seq) = SHAPES[shape_name]
    chosen = args.settings if args.settings is not None else ([2, 3] if shape_name == "7b" else range(len(SETTINGS)))
    teacher = build(shape, 1, device, torch.bfloat16).requires_grad_(False)
    ids = torch.randint(0, shape.vocab, (batch, seq), generator=torch.Generator().manual_seed(0)).to(device)
    attention = torch.ones_like(ids)
    response = torch.ones_like(ids)
    response[:, :1] = 0
    rows, weights = select_positions(response, "all")
    layers = list(range(1, shape.layers + 1))
    cache = teacher_cache(teacher, ids, attention, layers, rows)
    env, out, tokens = harness.environment(device), [], batch * seq
    for dtype, name, checkpointing in (SETTINGS[i] for i in chosen):
        student = build(shape, 0, device, PARAM_DTYPES[dtype]).train()
        if checkpointing:
            student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        try:
            optimizer = build_optimizer(student.parameters(), name, lr=1e-5, betas=(0.9, 0.999), weight_decay=0.0,
                                        seed=0)
        except ValueError as exc:  # adamw_8bit without torchao
            print(f"{dtype} {name}: not measured ({exc})", flush=True)
            continue
        update = make_update(student, optimizer, ids, attention, layers, cache, rows, weights)
        update()  # warm-up: optimizer states created, kernels compiled
        samples = []
        for _ in range(args.reps):
            harness._sync(device)
            start = time.perf_counter()
            update()
            harness._sync(device)
            samples.append((time.perf_counter() - start) * 1e3)
        peak = harness.delta_peak_bytes(update, device)
        gradients = shape.parameters * PARAM_DTYPES[dtype].itemsize
        predicted_peak = gradients + shape.activation_bytes(tokens, checkpointing)
        row = {**env, "suite": "memory_settings", "shape": shape.name, "tokens": tokens, "param_dtype": dtype,
               "optimizer": name, "checkpointing": checkpointing, "ms_p50": sorted(samples)[len(samples) // 2],
               "delta_peak_bytes": peak, "state_bytes": state_bytes(student, optimizer),
               "plan_delta_peak_bytes": predicted_peak}
        out.append(row)
        print(f"{dtype:>5} {name:<11} ckpt={'on ' if checkpointing else 'off'}  {row['ms_p50']:8.1f} ms  "
              f"delta-peak {peak / 2**20:8.1f} MB (plan {predicted_peak / 2**20:8.1f})  "
              f"state {row['state_bytes'] / 2**20:8.1f} MB", flush=True)
        del student, optimizer, update
    base = out[0] if out else None
    for row in out if base else []:
        print(f"{row['param_dtype']:>5} {row['optimizer']:<11} ckpt={'on ' if row['checkpointing'] else 'off'}  "
              f"time x {base['ms_p50'] / row['ms_p50']:5.2f}  delta-peak x "
              f"{base['delta_peak_bytes'] / row['delta_peak_bytes']:5.2f}  state x "
              f"{base['state_bytes'] / row['state_bytes']:5.2f}  (x: the fp32 baseline's over the setting's)")
    if args.out:
        harness.append_rows(args.out, out)
    return out


if __name__ == "__main__":
    main()

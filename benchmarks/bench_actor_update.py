"""Actor-update benchmark: one full update (student forward, loss, backward, AdamW step) per method on the same
rollout tokens and the same model, side by side in one process, as the paper's Table 3 measures it.

Delta-peak = peak allocated during the update minus allocated at its start (gradients set to None before, optimizer
states already created by a warm-up update). The teacher side is precomputed outside the update, as in verl's actor
update: the compact bf16 cache for OPRD (fp32 for the unoptimised path), the teacher's log-probs at the sampled tokens
(top-1) or at the student's top-k ids from a no-grad student pass (top-16).

Methods:
  oprd              capture (no final norm consumer, no LM head) + fused alignment loss (cpu / triton backend)
  oprd-unoptimised  the paper's path: full forward with output_hidden_states and the LM head (logits discarded),
                    selected rows copied to fp32, reference loss against an fp32 cache
  opd-top1-naive    LM head on the response columns -> [B, T, |V|] logits -> fp32 log_softmax -> loss
  opd-top16-naive   the same with the 16 precomputed ids (the reference code's top-k update)
  opd-top1-fused    fused_opd_loss_at_ids from the final hidden states and the LM-head weight: no logits
  opd-top16-fused   the same, 16 ids
  oprd+opd          OPRD + mu * fused top-1 (the combined objective, mu = 1)
  oprd-bridge       OPRD-Bridge Stage 2: capture + fused bridge_loss against an r = 8 projected cache [L, N_sel, 8]
                    (frozen P_S; the teacher side is P_T (h_T - mu_T) of the same teacher)

    python benchmarks/bench_actor_update.py --device cuda --out results/actor_update.jsonl      # Qwen2.5-1.5B dims
    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 \\
        python benchmarks/bench_actor_update.py --device cpu --out benchmarks/results/actor_update_cpu.jsonl
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

import oprd_kernels  # noqa: E402
from oprd.capture import capture_student, position_ids_from_mask, teacher_cache  # noqa: E402
from oprd.positions import select_positions  # noqa: E402

METHODS = ("oprd", "oprd-unoptimised", "opd-top1-naive", "opd-top16-naive", "opd-top1-fused", "opd-top16-fused",
           "oprd+opd", "oprd-bridge")
BRIDGE_RANK = 8
BASELINE = "opd-top16-naive"


@dataclass(frozen=True)
class Case:
    name: str
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    batch: int
    prompt: int
    seqs: tuple[int, ...]  # response lengths swept
    last_k: int
    dtype: str
    checkpointing: bool = True  # as verl trains: without it a 16k-token update does not fit

    def config(self) -> Qwen2Config:
        return Qwen2Config(vocab_size=self.vocab, hidden_size=self.hidden, intermediate_size=self.intermediate,
                           num_hidden_layers=self.layers, num_attention_heads=self.heads,
                           num_key_value_heads=self.kv_heads, max_position_embeddings=self.prompt + max(self.seqs),
                           tie_word_embeddings=True, attn_implementation="sdpa")


GPU_CASES = [Case("qwen2.5-1.5B", 1536, 28, 8960, 12, 2, 151936, 2, 256, (1024, 4096, 8192, 16384), 2000, "bfloat16")]
CPU_CASES = [  # the real vocabulary; width 512, two layers, short responses (2 cores: seconds per update)
    Case("cpu-vocab151936-2L", 512, 2, 1536, 8, 2, 151936, 2, 32, (64, 128, 256), 64, "float32"),
]
SMOKE_CASES = [Case("smoke", 32, 2, 64, 4, 2, 512, 2, 8, (16, 32), 8, "float32")]


@dataclass
class Batch:
    """The rollout tokens and the precomputed teacher side every method reads."""

    ids: torch.Tensor
    attention: torch.Tensor
    columns: slice
    response_mask: torch.Tensor  # [B, T]
    rows: torch.Tensor
    weights: torch.Tensor
    cache: torch.Tensor  # [L, N_sel, d] bf16
    top1: tuple[torch.Tensor, torch.Tensor]  # (ids [B, T, 1], teacher log-probs)
    top16: tuple[torch.Tensor, torch.Tensor]
    bridge: tuple[torch.Tensor, torch.Tensor]  # (teacher_z [L, N_sel, r] bf16, P_S [L, r, d] in the student's dtype)


def build_models(case: Case, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    dtype = getattr(torch, case.dtype)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        with torch.device(device):  # initialised where it runs: a 1.5B model's CPU init alone takes minutes
            models.append(Qwen2ForCausalLM(case.config()).to(dtype=dtype))
    student, teacher = models
    if case.checkpointing:
        enable = getattr(student, "activation_checkpointing_enable", None) or student.gradient_checkpointing_enable
        enable()
    student.config.use_cache = teacher.config.use_cache = False
    teacher.requires_grad_(False)
    return student, teacher


@torch.no_grad()
def make_batch(case: Case, seq: int, student, teacher, device: torch.device) -> Batch:
    gen = torch.Generator(device="cpu").manual_seed(seq)
    width = case.prompt + seq
    ids = torch.randint(0, case.vocab, (case.batch, width), generator=gen).to(device)
    attention = torch.ones_like(ids)
    full_mask = torch.zeros_like(ids)
    full_mask[:, case.prompt:] = 1
    rows, weights = select_positions(full_mask, "last_k", case.last_k)
    layers = list(range(1, case.layers + 1))
    cache = teacher_cache(teacher, ids, attention, layers, rows)
    columns = slice(case.prompt - 1, width - 1)
    t_final = capture_student(teacher, ids, attention, "last", final_state=True).final[:, columns]
    s_final = capture_student(student, ids, attention, "last", final_state=True).final[:, columns]
    t_weight, s_weight = teacher.lm_head.weight, student.lm_head.weight
    sampled = ids[:, case.prompt:].unsqueeze(-1)
    stats = functools.partial(oprd_kernels.lm_head_stats, backend="chunked")  # set-up, not measured: the plain path
    top1 = (sampled, stats(t_final, t_weight, ids=sampled).log_probs)
    student_top = stats(s_final, s_weight, topk=16).topk_ids  # the no-grad student pass
    top16 = (student_top, stats(t_final, t_weight, ids=student_top).log_probs)
    mask = full_mask[:, case.prompt:].bool()
    proj_t = torch.linalg.qr(torch.randn(len(layers), case.hidden, BRIDGE_RANK, generator=gen)).Q.transpose(1, 2)
    teacher_z = oprd_kernels.project_teacher(cache.float(), proj_t.to(device), torch.zeros(len(layers), case.hidden,
                                                                                       device=device))
    proj_s = (torch.randn(len(layers), BRIDGE_RANK, case.hidden, generator=gen) / case.hidden ** 0.5).to(device)
    bridge = (teacher_z.to(cache.dtype), proj_s.to(student.dtype))
    return Batch(ids, attention, columns, mask, rows, weights, cache, top1, top16, bridge)


def method_loss(method: str, student, batch: Batch, layers: list[int]) -> torch.Tensor:
    """The loss of one update, from the student forward on (the student is in train mode, with gradients)."""
    if method == "oprd-unoptimised":
        out = student(input_ids=batch.ids, attention_mask=batch.attention,
                      position_ids=position_ids_from_mask(batch.attention), output_hidden_states=True)
        states = [out.hidden_states[i].reshape(-1, out.hidden_states[i].shape[-1]).index_select(0, batch.rows).float()
                  for i in layers]
        del out  # the logits are discarded, as the paper's OPRD-only path does after computing them
        return oprd_kernels.reference.alignment_loss(torch.stack(states), batch.cache.float(), weights=batch.weights)
    wants_states = method in ("oprd", "oprd+opd", "oprd-bridge")
    wants_final = method.startswith("opd") or method == "oprd+opd"
    captured = capture_student(student, batch.ids, batch.attention, layers if wants_states else "last",
                               final_state=wants_final)
    total = 0
    if method == "oprd-bridge":
        teacher_z, proj_s = batch.bridge
        return oprd_kernels.bridge_loss(captured.states, teacher_z, proj_s, rows=batch.rows, weights=batch.weights)
    if wants_states:
        total = oprd_kernels.alignment_loss(captured.states, batch.cache, rows=batch.rows, weights=batch.weights)
    if wants_final:
        final = captured.final[:, batch.columns]
        ids, log_q = batch.top16 if "top16" in method else batch.top1
        if method.endswith("naive"):
            logits = student.lm_head(final)
            total = total + oprd_kernels.reference.opd_loss_at_ids(logits, ids, log_q, batch.response_mask)
        else:
            total = total + oprd_kernels.fused_opd_loss_at_ids(final, student.lm_head.weight, ids, log_q,
                                                               batch.response_mask)
    return total


def update_flops(case: Case, seq: int, method: str) -> float:
    """Matmul FLOPs of one update, the compute floor: the decoder's linear layers and causal attention run forward,
    again in the checkpointed recompute, and twice in backward (4 x 2 x params x tokens); the LM head on the response
    tokens 3 times for naive OPD (forward, two in backward) and 4 for fused OPD (statistics, recompute, two gradient
    products); the paper's unoptimised OPRD runs it forward only, on every token. OPRD alone never runs it."""
    head_dim = case.hidden // case.heads
    per_layer = 2 * case.hidden ** 2 + 2 * case.hidden * case.kv_heads * head_dim + 3 * case.hidden * case.intermediate
    tokens, width = case.batch * (case.prompt + seq), case.prompt + seq
    passes = 4 if case.checkpointing else 3
    decoder = passes * case.layers * (2 * per_layer * tokens + 2 * case.batch * width ** 2 * case.hidden)
    head = 2 * case.hidden * case.vocab
    if method == "oprd-unoptimised":
        return decoder + head * tokens
    if method in ("oprd", "oprd-bridge"):
        return decoder
    return decoder + head * case.batch * seq * (3 if method.endswith("naive") else 4)


def update_fn(method: str, student, optimizer, batch: Batch, layers: list[int]) -> Callable[[], float]:
    def update() -> float:
        loss = method_loss(method, student, batch, layers)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return update


def timed(fn: Callable[[], object], device: torch.device, reps: int) -> harness.Percentiles:
    """Wall time of whole updates (each is long enough that launch overheads do not matter), p20/p50/p80."""
    samples = []
    for _ in range(reps):
        harness._sync(device)
        start = time.perf_counter()
        fn()
        harness._sync(device)
        samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    pick = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))]  # noqa: E731
    return harness.Percentiles(pick(0.2), pick(0.5), pick(0.8))


def measure(case: Case, seq: int, method: str, student, optimizer, batch: Batch, device: torch.device,
            reps: int, rate: float) -> list[dict]:
    layers = list(range(1, case.layers + 1))
    update = update_fn(method, student, optimizer, batch, layers)
    flops = update_flops(case, seq, method)
    base = {"suite": "actor_update", "case": case.name, "method": method, "seq": seq, **asdict(case),
            "tokens": case.batch * (case.prompt + seq), "rows_selected": int(batch.rows.numel()), "flops": flops,
            "matmul_flops_per_s": rate, "floor_ms": flops / rate * 1e3}
    base.pop("seqs")
    try:
        loss = update()  # warm-up: kernels compiled, allocator primed
        times = timed(update, device, reps)
        peak = harness.delta_peak_bytes(update, device)
    except torch.cuda.OutOfMemoryError:
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        return [{**base, "metric": "oom", "unit": "", "p20": None, "p50": None, "p80": None}]
    except Exception as exc:  # noqa: BLE001 - one failing method must not cost the rest of a GPU run
        if device.type != "cuda":
            raise
        traceback.print_exc()
        optimizer.zero_grad(set_to_none=True)
        return [{**base, "metric": "error", "unit": "", "error": repr(exc)[:300], "p20": None, "p50": None,
                 "p80": None}]
    return [{**base, "metric": "time", "unit": "ms", "loss": loss, **harness.percentiles_dict(times)},
            {**base, "metric": "delta_peak", "unit": "bytes", "p20": peak, "p50": peak, "p80": peak}]


def summarise(rows: list[dict]) -> str:
    """Per (case, seq): each method's update time and delta-peak, and both as ratios against naive top-16 OPD."""
    lines = [f"{'case':<20}{'seq':>7}  {'method':<18}{'ms':>10}{'peak MB':>10}{'time x':>8}{'mem x':>8}"
             f"{'floor ms':>10}{'%floor':>8}"]
    cells: dict[tuple, dict[str, dict[str, float]]] = {}
    for r in rows:
        cell = cells.setdefault((r["case"], r["seq"]), {}).setdefault(r["method"], {})
        cell[r["metric"]], cell["floor"] = r["p50"], r["floor_ms"]
    for (case, seq), by_method in cells.items():
        base = by_method.get(BASELINE, {})
        for method, c in by_method.items():
            if "oom" in c or "error" in c:
                lines.append(f"{case:<20}{seq:>7}  {method:<18}{'OOM' if 'oom' in c else 'ERROR':>10}")
                continue
            t, m = c.get("time"), c.get("delta_peak")
            tx = base["time"] / t if base.get("time") and t else float("nan")
            mx = base["delta_peak"] / m if base.get("delta_peak") and m else float("nan")
            lines.append(f"{case:<20}{seq:>7}  {method:<18}{t:>10.1f}{m / 2**20:>10.1f}{tx:>8.2f}{mx:>8.2f}"
                         f"{c['floor']:>10.1f}{100 * c['floor'] / t:>8.1f}")
    lines.append(f"time x / mem x: {BASELINE}'s time / memory over the method's (> 1: the method is faster / leaner); "
                 "floor: the update's matmul FLOPs at a matmul rate measured in this run (update_flops)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true", help="a tiny model: checks that every method runs")
    parser.add_argument("--seqs", type=int, nargs="*", help="response lengths (default: the case's sweep)")
    parser.add_argument("--methods", nargs="*", choices=METHODS, default=list(METHODS))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--time-budget", type=float, default=None, help="seconds; no new sequence length after it")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cases = SMOKE_CASES if args.smoke else GPU_CASES if device.type == "cuda" else CPU_CASES
    env, rows, start = harness.environment(device), [], time.perf_counter()
    for case in cases:
        student, teacher = build_models(case, device)
        student.train()
        # fused AdamW: no foreach temporaries the size of the model, which would hide every method's own memory
        optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5, fused=True)
        # the rate of the case's LM-head product over its longest responses, where the OPD methods spend their FLOPs
        rate = harness.matmul_rate(getattr(torch, case.dtype), case.batch * max(case.seqs), case.hidden, case.vocab,
                                   device)
        for seq in args.seqs or case.seqs:
            if args.time_budget is not None and time.perf_counter() - start > args.time_budget:
                print(f"time budget reached: {case.name} seq {seq} and longer not measured", flush=True)
                break
            batch = make_batch(case, seq, student, teacher, device)
            for method in args.methods:
                new = [{**env, **r} for r in measure(case, seq, method, student, optimizer, batch, device,
                                                     args.reps, rate)]
                rows += new
                if args.out:
                    harness.append_rows(args.out, new)
                print(f"{case.name} seq {seq} {method}: " + ", ".join(
                    f"{r['metric']} {r['p50']}" for r in new), flush=True)
            del batch
    print(summarise(rows))
    return rows


if __name__ == "__main__":
    main()

"""Teacher-pass benchmark: the truncated compact-cache teacher pass against the reference code's way, side by side in
one process, on random-init Qwen2 models built from a config (no downloads). Time (p20/p50/p80), delta-peak memory
and the bytes of the cache each way keeps.

  oprd-cache  oprd.capture.teacher_cache: no LM head, no list of every layer's states; the selected rows (last-k of
              each sequence) of layers 1..L written straight into a [L, N_sel, D] bf16 cache on the device.
  hf-full     model(..., output_hidden_states=True) with the LM head's logits, then the selected rows of layers 1..L
              stacked, upcast to fp32 and copied to the host (on a CPU device: the fp32 stacked copy).
Both run without gradients and without a KV cache (use_cache=False), position ids counted from the attention mask.
On CUDA the delta-peak is device memory only: hf-full's host copy is reported in `cache_bytes`, not in the peak.
The two caches are checked to hold the same states (up to bf16 rounding) before anything is timed.

    python benchmarks/bench_teacher_pass.py --device cuda --out results/teacher_pass.jsonl           # Qwen2.5-1.5B dims
    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 \\
        python benchmarks/bench_teacher_pass.py --device cpu --out benchmarks/results/teacher_pass_cpu.jsonl
    python benchmarks/bench_teacher_pass.py --device cpu --smoke
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

from oprd.capture import position_ids_from_mask, teacher_cache  # noqa: E402
from oprd.positions import select_positions  # noqa: E402
from oprd.train.memory import delta_peak_bytes  # noqa: E402

SUITE = "teacher_pass"
BASELINE = "hf-full"
CACHE_RTOL = 1e-2  # oprd's bf16 cache against hf-full's fp32 one: relative error of the whole cache (Frobenius)


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
    seq: int
    last_k: int
    dtype: str = "bfloat16"  # the model's weights and activations


QWEN_1_5B = dict(hidden=1536, layers=28, intermediate=8960, heads=12, kv_heads=2, vocab=151936)
GPU_CASES = [
    Case("gpu-qwen1.5B-2x4k", **QWEN_1_5B, batch=2, seq=4096, last_k=2000),
    Case("gpu-qwen1.5B-2x16k", **QWEN_1_5B, batch=2, seq=16384, last_k=2000),
]
CPU_CASES = [  # scaled model, the real vocabulary
    Case("cpu-4L-256-2x512-fp32", 256, 4, 704, 4, 2, 151936, 2, 512, 128, "float32"),
    Case("cpu-4L-256-2x512-bf16", 256, 4, 704, 4, 2, 151936, 2, 512, 128, "bfloat16"),
]
SMOKE_CASES = [Case("smoke", 64, 2, 128, 4, 2, 4096, 2, 32, 8, "float32")]


def build_model(case: Case, device: torch.device) -> Qwen2ForCausalLM:
    torch.manual_seed(1)
    config = Qwen2Config(vocab_size=case.vocab, hidden_size=case.hidden, intermediate_size=case.intermediate,
                         num_hidden_layers=case.layers, num_attention_heads=case.heads,
                         num_key_value_heads=case.kv_heads, max_position_embeddings=max(2 * case.seq, 4096),
                         tie_word_embeddings=case.hidden == 1536, attn_implementation="sdpa", use_cache=False)
    with torch.device(device):  # initialised where it runs: a 1.5B model is built in seconds on the GPU
        model = Qwen2ForCausalLM(config)
    return model.to(dtype=getattr(torch, case.dtype)).eval()


def batch(case: Case, device: torch.device):
    """One left-padded prompt, responses from a quarter of the sequence on; the last k response rows selected."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, case.vocab, (case.batch, case.seq), generator=g).to(device)
    mask = torch.ones_like(ids)
    mask[0, : case.seq // 8] = 0
    response = mask.clone()
    response[:, : case.seq // 4] = 0
    rows, _ = select_positions(response, "last_k", case.last_k)
    return ids, mask, rows


def hf_full(model, ids, mask, rows, layers: list[int]) -> torch.Tensor:
    """The reference code's teacher pass: every hidden state and the logits, then a gathered fp32 host copy."""
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                    output_hidden_states=True, use_cache=False)
        states = torch.stack([out.hidden_states[i].reshape(-1, out.hidden_states[i].shape[-1])[rows]
                              for i in layers]).float()
        return states.cpu() if states.device.type != "cpu" else states


def estimated_bytes(case: Case, method: str) -> float:
    """Rough device delta-peak of a method, to skip what cannot fit."""
    e = torch.empty((), dtype=getattr(torch, case.dtype)).element_size()
    tokens = case.batch * case.seq
    layer_work = tokens * (4 * case.hidden + 3 * case.intermediate) * e + case.batch * case.seq ** 2 * e
    if method == "oprd-cache":
        return layer_work + case.layers * case.batch * case.last_k * case.hidden * e
    return layer_work + (case.layers + 1) * tokens * case.hidden * e + tokens * case.vocab * e * 2


def measure(fn: Callable[[], torch.Tensor], device: torch.device, reps: int):
    """(time percentiles, delta-peak bytes) of a pass that has run once already (the warm-up)."""
    _, peak = delta_peak_bytes(fn, device)
    timing = harness.time_ms(fn, device, warmup=0 if device.type == "cpu" else 1, reps=reps)
    return timing, peak


def run_case(case: Case, device: torch.device, reps: int, env: dict) -> list[dict]:
    model = build_model(case, device)
    ids, mask, rows = batch(case, device)
    layers = list(range(1, case.layers + 1))
    runs = {
        "oprd-cache": lambda: teacher_cache(model, ids, mask, layers, rows, dtype=torch.bfloat16),
        "hf-full": lambda: hf_full(model, ids, mask, rows, layers),
    }
    base = {"suite": SUITE, **asdict(case), "case": case.name, "rows_selected": rows.numel(),
            "layers_cached": len(layers), **env}
    del base["name"]
    out: list[dict] = []
    caches: dict[str, torch.Tensor] = {}
    for method, fn in runs.items():
        head = {**base, "method": method, "backend": "oprd.capture" if method == "oprd-cache" else "transformers"}
        free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else float("inf")
        need = estimated_bytes(case, method)
        if need > 0.9 * free:
            reason = f"needs ~{need / 1e9:.1f} GB, {free / 1e9:.1f} GB free"
            print(f"{case.name} {method}: skipped ({reason})", flush=True)
            out.append({**head, "metric": "skipped", "unit": None, "p20": None, "p50": None, "p80": None,
                        "reason": reason})
            continue
        reason = None
        try:
            cache = fn()  # also the warm-up
            caches[method] = cache
            timing, peak = measure(fn, device, reps)
        except torch.cuda.OutOfMemoryError as exc:
            reason = f"OOM: {str(exc).splitlines()[0]}"
        if reason is not None:  # out of the except block: its traceback no longer holds the pass's tensors
            print(f"{case.name} {method}: {reason}", flush=True)
            out.append({**head, "metric": "oom", "unit": None, "p20": None, "p50": None, "p80": None,
                        "reason": reason})
            caches.pop(method, None)
            gc.collect()
            torch.cuda.empty_cache()
            continue
        kept = {"cache_bytes": cache.numel() * cache.element_size(), "cache_dtype": str(cache.dtype)[6:],
                "cache_device": cache.device.type}
        out.append({**head, **kept, "metric": "time", "unit": "ms", **harness.percentiles_dict(timing)})
        out.append({**head, **kept, "metric": "delta_peak", "unit": "bytes", "p20": peak, "p50": peak, "p80": peak})
        print(f"{case.name} {method}: {timing.p50:.2f} ms, {peak / 2**20:.1f} MB, cache "
              f"{kept['cache_bytes'] / 2**20:.1f} MB {kept['cache_dtype']} on {kept['cache_device']}", flush=True)
    if len(caches) == 2:  # both ways keep the same states
        ours, ref = caches["oprd-cache"].float().cpu(), caches["hf-full"]
        rel = float((ours - ref).norm() / ref.norm().clamp_min(1e-30))
        for row in out:
            row["cache_rel_diff"] = rel
        if not rel < CACHE_RTOL:
            raise RuntimeError(f"{case.name}: the compact cache differs from hf-full's states (relative "
                               f"{rel:.2e} >= {CACHE_RTOL})")
    model = caches = runs = None  # free the model before the next case is built
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def summarise(rows: list[dict]) -> str:
    lines: list[str] = []
    for case in dict.fromkeys(r["case"] for r in rows):
        mine = [r for r in rows if r["case"] == case]
        c = mine[0]
        lines += ["", f"case {case}: {c['layers']} layers, hidden {c['hidden']}, V {c['vocab']}, B {c['batch']} x "
                  f"seq {c['seq']}, {c['rows_selected']} rows selected (last {c['last_k']}), {c['dtype']}",
                  f"{'method':<12}{'ms':>11}{'p20-p80':>19}{'peak MB':>11}{'t/hf':>7}{'mem/hf':>8}{'cache MB':>10}"
                  f"  cache"]
        cells: dict[str, dict] = {}
        for r in mine:
            cells.setdefault(r["method"], {})[r["metric"]] = r
        base = cells.get(BASELINE, {})
        base_t, base_m = base.get("time", {}).get("p50"), base.get("delta_peak", {}).get("p50")
        for method, cell in cells.items():
            if "time" not in cell:
                r = next(iter(cell.values()))
                lines.append(f"{method:<12}  {r['metric']}: {r.get('reason', '')}")
                continue
            t, m = cell["time"], cell["delta_peak"]
            rt = f"{t['p50'] / base_t:.2f}" if base_t else "-"
            rm = f"{m['p50'] / base_m:.2f}" if base_m else "-"
            spread = f"{t['p20']:.1f}-{t['p80']:.1f}"
            lines.append(f"{method:<12}{t['p50']:>11.2f}{spread:>19}{m['p50'] / 2**20:>11.1f}{rt:>7}{rm:>8}"
                         f"{t['cache_bytes'] / 2**20:>10.1f}  {t['cache_dtype']} on {t['cache_device']}")
    lines.append("t/hf, mem/hf: p50 time and delta-peak over hf-full's, same run; cache MB: what each way keeps.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny model: checks that everything runs")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="append result rows (JSON lines) here")
    parser.add_argument("--cases", default=None, help="comma-separated case names to run (default: all)")
    parser.add_argument("--time-budget", type=float, default=None, help="seconds: start no new case after this")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cases = SMOKE_CASES if args.smoke else GPU_CASES if device.type == "cuda" else CPU_CASES
    if args.cases:
        cases = [c for c in cases if c.name in args.cases.split(",")]
    reps = args.reps or (2 if args.smoke else 10 if device.type == "cuda" else 5)
    env = harness.environment(device)
    rows: list[dict] = []
    started = time.monotonic()
    for case in cases:
        if args.time_budget is not None and time.monotonic() - started > args.time_budget:
            print(f"time budget spent: skipping case {case.name}", flush=True)
            continue
        new = run_case(case, device, reps, env)
        if args.out:
            harness.append_rows(args.out, new)
        print(summarise(new), flush=True)
        rows += new
    print(f"teacher_pass: {len(cases)} case(s) in {time.monotonic() - started:.1f} s", flush=True)
    return rows


if __name__ == "__main__":
    main()

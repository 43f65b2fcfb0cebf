"""Loss-path benchmark: forward+backward time and delta-peak memory of the distillation losses, from hidden states
(and the LM-head weights for OPD), side by side in one process, each next to its physical floor.

    python benchmarks/bench_loss_path.py --device cuda --out results/loss_path.jsonl          # paper shapes (GPU)
    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 \\
        python benchmarks/bench_loss_path.py --device cpu --reps 3 --out benchmarks/results/loss_path_cpu.jsonl
    python benchmarks/bench_loss_path.py --device cpu --smoke                                 # tiny, seconds

Methods (every one returns the gradients the training step needs, which the delta-peak therefore includes):
  oprd         OPRD alignment loss (mse) on the last-k selected rows of L layers; backward to the dense [B, S, D]
               states of every layer. Backends: the fast one of the device (cpu / triton) and reference.
  naive-top1   the reference code's way: student logits = F.linear(hidden, W) with gradient, teacher logits under
  naive-top16  no_grad, then reference.sampled_token_opd_loss / topk_opd_loss(k=16); backward to hidden and W.
  naive-full   (some cases) the same with reference.full_vocab_opd_loss (exact reverse KL).
  liger-*,     (the peer cases) other libraries' losses on the same inputs: Liger's fused-linear reverse KL and
  trl-gkd      generalised JSD, TRL GKD's JSD on materialised logits (peers.py; skipped with the reason when the
               library is missing). Each loss must equal its counterpart's (naive-full; trl-gkd for liger-jsd).
  fused-*      oprd_kernels.opd's fused losses on the same inputs (backend auto; on CUDA also `chunked` explicitly
               when the triton OPD passes exist). Their loss must equal the naive one (relative difference below
               LOSS_RTOL; LOSS_RTOL_TOPK_16BIT for top-k on bf16 logits, whose ties the two paths break
               differently), else the run raises after writing its rows.
  fused-jsd    (the peer cases) our fused generalised JSD at TRL's beta = 0.5 (rowwise and chunked on CPU, chunked
               alone on CUDA: triton has no JSD pass); its loss must equal trl-gkd's (LOSS_RTOL_PEER_16BIT on bf16,
               TRL's loss being bf16 there), and the summary sets its time and memory against liger-jsd's.

Floors (printed next to each result; floor_ms = the larger of the two):
  FLOPs / a matmul rate measured in this run (a large product in the case dtype, see matmul_rate). With
  M = 2 N d V per LM-head product: naive = student forward + teacher forward + 2 backward products = 4M;
  fused top-k / sampled = statistics + teacher + recomputation + 2 backward = 5M; fused full = 6M (the teacher's
  logits twice); fused JSD with vocabulary tiles = 8M (both heads' logits three times: statistics, loss, gradient;
  2 backward), with row chunks 4M like the full KL; OPRD ~ 8 flops per selected element (negligible).
  Bytes / the copy bandwidth measured in this run (harness.copy_bandwidth): every method reads the LM-head weights
  and writes their gradient (fused: student weights read twice, statistics and gradient passes); the naive methods
  also write and read once each [N, V] tensor they materialise: student and teacher logits (case dtype), student
  and teacher log-probabilities and the logits' gradient (fp32). OPRD: the selected student rows and the teacher
  cache read once, the dense student gradient written once.
On CPU the methods of a case are timed round-robin, one call of each per round (harness.interleaved_ms), so that a
drifting machine slows them alike. On CUDA a method whose estimated memory exceeds the free memory is skipped
(reported as such), and an out-of-memory error is reported as OOM; both leave a row with metric "skipped" / "oom".
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import peers  # noqa: E402

import oprd_kernels  # noqa: E402
from oprd.train.memory import delta_peak_bytes  # noqa: E402
from oprd_kernels import reference  # noqa: E402
from oprd_kernels.opd import (  # noqa: E402
    fused_full_vocab_opd_loss,
    fused_generalized_jsd_loss,
    fused_sampled_token_opd_loss,
    fused_topk_opd_loss,
)
from oprd_kernels.opd._passes import resolve_passes  # noqa: E402

SUITE = "loss_path"
TOPK = 16
LOSS_RTOL = 1e-3  # fused vs naive (and fast OPRD backend vs reference) loss value, relative
# Top-k on 16-bit logits: at V = 151936 the bf16 logits tie at the k-th place in about half the rows. Every path
# breaks exact ties by the same rule (larger logit, then smaller id: oprd_kernels._topk, since issue 11; before it
# the loss differed by 0.5% on the CPU bf16 case with bit-identical logits), but the triton tiles keep fp32 logits
# that the naive path rounds to bf16, so there a bf16 tie is no tie and the two may still pick different ids.
LOSS_RTOL_TOPK_16BIT = 5e-2
# Peers on 16-bit inputs take the log-softmax in that dtype and return the loss in it (Liger at bf16: 0.957 for the
# reference's 0.9561): a bf16 loss is good to about 2^-8.
LOSS_RTOL_PEER_16BIT = 1e-2
BASELINE = "naive-top16"
PEER_NAMES = {peer.name for peer in peers.PEERS}


@dataclass(frozen=True)
class Case:
    name: str
    dim: int
    vocab: int
    layers: int  # OPRD: layers aligned
    batch: int
    seq: int  # tokens per sequence: OPD runs on all batch * seq rows
    last_k: int  # OPRD: selected rows per sequence
    dtype: str = "bfloat16"
    full_vocab: bool = False  # also naive-full / fused-full
    peers: bool = False  # also the peer libraries' losses (peers.py)
    kinds: tuple[str, ...] = ("top1", "top16")  # the OPD losses run besides "full"
    oprd: bool = True  # also the OPRD alignment loss

    @property
    def rows(self) -> int:
        return self.batch * self.seq

    @property
    def selected(self) -> int:
        return self.batch * self.last_k


GPU_CASES = [
    Case("gpu-paper-2x16k", 1536, 151936, 28, 2, 16384, 2000, full_vocab=True),
    Case("gpu-2x4k", 1536, 151936, 28, 2, 4096, 1024, full_vocab=True),
]
CPU_CASES = [  # the real vocabulary, few rows (fp32 LM-head products are ~3.5x slower than bf16 ones here)
    Case("cpu-bf16-2x128", 1536, 151936, 28, 2, 128, 64, "bfloat16", full_vocab=True),
    Case("cpu-fp32-2x32", 1536, 151936, 28, 2, 32, 16, "float32"),
    # against the peers: the full-vocabulary reverse KL on more rows, where the LM-head products are compute-bound
    Case("cpu-peers-fp32-512", 1024, 151936, 28, 1, 512, 16, "float32", full_vocab=True, peers=True, kinds=(),
         oprd=False),
    Case("cpu-peers-bf16-64", 1024, 151936, 28, 1, 64, 16, "bfloat16", full_vocab=True, peers=True, kinds=(),
         oprd=False),
]
PEER_GPU_CASES = [Case("gpu-peers-8k", 1536, 151936, 28, 1, 8192, 16, "bfloat16", full_vocab=True, peers=True,
                       kinds=(), oprd=False)]
GPU_CASES += PEER_GPU_CASES
SMOKE_CASES = [Case("smoke", 32, 4096, 2, 2, 32, 8, "float32", full_vocab=True, peers=True)]


@dataclass
class Inputs:
    hidden: torch.Tensor  # [N, d] student final states, with gradient
    weight: torch.Tensor  # [V, d] student LM head, with gradient
    t_hidden: torch.Tensor
    t_weight: torch.Tensor
    tokens: torch.Tensor  # [N] sampled tokens (top-1 OPD)
    student: list[torch.Tensor]  # OPRD: L x [B, S, D] with gradient
    cache: torch.Tensor  # OPRD: [L, N_sel, D] teacher cache
    rows: torch.Tensor  # OPRD: selected rows (last-k of each sequence)


def make_inputs(case: Case, device: torch.device) -> Inputs:
    """Random states with a teacher close to the student (as late in training); logits with a spread of ~3 nats."""
    dtype = getattr(torch, case.dtype)
    gen = torch.Generator(device=device).manual_seed(0)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, device=device, generator=gen) * scale).to(dtype)

    hidden = randn(case.rows, case.dim)
    weight = randn(case.vocab, case.dim, scale=3 / case.dim ** 0.5)
    with torch.no_grad():
        t_hidden = (hidden + randn(case.rows, case.dim, scale=0.3)).to(dtype)
        t_weight = (weight + randn(case.vocab, case.dim, scale=1 / case.dim ** 0.5)).to(dtype)
    tokens = torch.randint(0, case.vocab, (case.rows,), device=device, generator=gen)
    student = [randn(case.batch, case.seq, case.dim).requires_grad_() for _ in range(case.layers)]
    rows = torch.cat([torch.arange(b * case.seq + case.seq - case.last_k, (b + 1) * case.seq, device=device)
                      for b in range(case.batch)])
    with torch.no_grad():
        cache = torch.stack([s.reshape(-1, case.dim)[rows] for s in student])
        cache = (cache + randn(*cache.shape, scale=0.3)).to(dtype)
    return Inputs(hidden.requires_grad_(), weight.requires_grad_(), t_hidden, t_weight, tokens, student, cache, rows)


# ---------------------------------------------------------------------------------------------------------- methods
@dataclass(frozen=True)
class Method:
    name: str
    backend: str
    fn: Callable[[], torch.Tensor]  # forward + backward; returns the detached loss
    flops: float
    bytes: float
    est_bytes: float  # rough delta-peak estimate, to skip what cannot fit on the GPU
    reference: str | None = None  # (name, backend) of the method whose loss it must equal, as "name/backend"


def _naive(kind: str, inp: Inputs) -> Callable[[], torch.Tensor]:
    def run():
        student_logits = F.linear(inp.hidden, inp.weight)
        with torch.no_grad():
            teacher_logits = F.linear(inp.t_hidden, inp.t_weight)
        if kind == "top1":
            loss = reference.sampled_token_opd_loss(student_logits, teacher_logits, inp.tokens)
        elif kind == "full":
            loss = reference.full_vocab_opd_loss(student_logits, teacher_logits)
        else:
            loss = reference.topk_opd_loss(student_logits, teacher_logits, k=TOPK)
        torch.autograd.grad(loss, (inp.hidden, inp.weight))
        return loss.detach()
    return run


def _fused(kind: str, inp: Inputs, backend: str) -> Callable[[], torch.Tensor]:
    def run():
        args = (inp.hidden, inp.weight, inp.t_hidden, inp.t_weight)
        if kind == "top1":
            loss = fused_sampled_token_opd_loss(*args, inp.tokens, backend=backend)
        elif kind == "full":
            loss = fused_full_vocab_opd_loss(*args, backend=backend)
        elif kind == "jsd":
            loss = fused_generalized_jsd_loss(*args, beta=peers.JSD_BETA, backend=backend)
        else:
            loss = fused_topk_opd_loss(*args, k=TOPK, backend=backend)
        torch.autograd.grad(loss, (inp.hidden, inp.weight))
        return loss.detach()
    return run


def _oprd(inp: Inputs, backend: str) -> Callable[[], torch.Tensor]:
    def run():
        loss = oprd_kernels.alignment_loss(inp.student, inp.cache, rows=inp.rows, loss_type="mse", backend=backend)
        torch.autograd.grad(loss, inp.student)
        return loss.detach()
    return run


def oprd_backends(device: torch.device) -> tuple[list[str], dict[str, str]]:
    """(backends to run, {backend: why not} for the device's fast backend when it cannot run)."""
    fast = "triton" if device.type == "cuda" else "cpu"
    missing = {op: why for op, why in oprd_kernels.backend_status(device)[fast].items()
               if op == "alignment_loss" and why != "available"}
    return ([fast, "reference"], {}) if not missing else (["reference"], {fast: missing["alignment_loss"]})


def fused_backends(device: torch.device) -> list[str]:
    """The backend `auto` resolves to (triton on CUDA, rowwise on CPU), plus the vocabulary-tiled `chunked` one."""
    auto = resolve_passes("bench_loss_path", "auto", device).name
    return [auto] if auto == "chunked" else [auto, "chunked"]


def jsd_backends(device: torch.device) -> list[str]:
    """fused_backends without triton, which has no JSD pass (it would run chunked under triton's name)."""
    return [b for b in fused_backends(device) if b != "triton"] or ["chunked"]


def methods(case: Case, inp: Inputs, device: torch.device) -> tuple[list[Method], dict[str, str]]:
    """The case's methods, and {"method/backend": why not} for those that cannot run here."""
    e = torch.empty((), dtype=getattr(torch, case.dtype)).element_size()
    n, d, v = case.rows, case.dim, case.vocab
    mm = 2.0 * n * d * v  # one LM-head product (the teacher has the student's width here)
    w_bytes = v * d * e
    grad_bytes = w_bytes + n * d * e  # dW and dH written
    nv = float(n) * v
    naive_bytes = 3 * w_bytes + grad_bytes + 2 * nv * (2 * e + 3 * 4)  # W read 2x, W_t once; [N, V] tensors
    naive_est = nv * (2 * e + 16) + 2 * grad_bytes
    full_est = nv * (2 * e + 24) + 2 * grad_bytes
    fused_est = 4 * (n * d + v * d) + 64 * 2 ** 20 * 8 + grad_bytes  # fp32 dH and dW block, a few tiles, grads
    out: list[Method] = []
    kinds = list(case.kinds) + (["full"] if case.full_vocab else [])
    for kind in kinds:
        out.append(Method(f"naive-{kind}", "eager", _naive(kind, inp), 4 * mm, naive_bytes,
                          full_est if kind == "full" else naive_est))
    for backend in fused_backends(device):
        for kind in kinds:
            # rowwise: one student product per chunk plus the two gradient products, one teacher product; the tiled
            # backends recompute the student tile for the gradient (and the teacher's for the full KL)
            products = 4 if backend == "rowwise" else 5 + (kind == "full")
            head_reads = 3 if backend == "rowwise" else 4 + (kind == "full")  # W per pass (per chunk for rowwise)
            out.append(Method(f"fused-{kind}", backend, _fused(kind, inp, backend), products * mm,
                              head_reads * w_bytes + grad_bytes, fused_est, f"naive-{kind}/eager"))
    missing: dict[str, str] = {}
    if case.peers:
        for backend in jsd_backends(device):  # ours at the peers' JSD; checked against TRL's, as Liger's is
            products, head_reads = (4, 3) if backend == "rowwise" else (8, 7)
            out.append(Method("fused-jsd", backend, _fused("jsd", inp, backend), products * mm,
                              head_reads * w_bytes + grad_bytes, fused_est, "trl-gkd/eager"))
        peer_est = min(n, 1024) * v * (2 * e + 24) + 2 * grad_bytes  # Liger: one chunk of rows; TRL: all of them
        for peer in peers.peers(smoke=case.vocab < 32768):
            why = peers.unavailable_reason(peer)
            if why is not None:
                missing[f"{peer.name}/{peer.backend}"] = why
                continue
            out.append(Method(peer.name, peer.backend, peer.build(inp), 4 * mm, naive_bytes,
                              full_est if peer.name == "trl-gkd" else peer_est, peer.reference))
    if not case.oprd:
        return out, missing
    sel = case.layers * case.selected * case.dim
    dense = sum(s.numel() for s in inp.student) * e
    oprd_bytes = 2 * sel * e + dense
    run, oprd_missing = oprd_backends(device)
    missing.update({f"oprd/{b}": why for b, why in oprd_missing.items()})
    for backend in run:
        ref = None if backend == "reference" else "oprd/reference"
        out.append(Method("oprd", backend, _oprd(inp, backend), 8.0 * sel, oprd_bytes, dense + 6 * sel * 4, ref))
    return out, missing


# ------------------------------------------------------------------------------------------------------ measuring
def matmul_rate(case: Case, device: torch.device) -> float:
    """FLOP/s of a large, compute-bound product [M, K] @ [K, N] in the case dtype, K the case's width (at least
    1024): the compute side of the floor. (An LM-head product over few rows is bound by reading the weights instead,
    which the bytes side of the floor counts.)"""
    dtype = getattr(torch, case.dtype)
    m, n = (8192, 32768) if device.type == "cuda" else (2048, 8192)
    if case.vocab < 32768:  # toy (smoke) shapes: a smaller product keeps the run short
        m, n = 512, 2048
    a = torch.randn(m, max(case.dim, 1024), device=device).to(dtype)
    b = torch.randn(n, a.shape[1], device=device).to(dtype)
    ms = harness.time_ms(lambda: a @ b.T, device, warmup=1, reps=5).p20  # the fast end: a limit, not a typical run
    return 2.0 * m * n * a.shape[1] / (ms * 1e-3)


def _free_bytes(device: torch.device) -> float:
    if device.type != "cuda":
        return math.inf
    free, _ = torch.cuda.mem_get_info(device)
    return float(free)


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure(m: Method, device: torch.device, reps: int) -> tuple[harness.Percentiles | None, int, float]:
    """(time percentiles, delta-peak bytes, loss value) of one method's forward+backward. On CPU only the profiled
    run (the warm-up too: each rep of the large cases takes seconds), and None for the time: run_case times the
    case's methods round-robin (harness.interleaved_ms)."""
    if device.type == "cuda":
        value = m.fn()  # compilation, autotuning, allocator
        timing = harness.time_ms(m.fn, device, reps=reps)
        _, peak = delta_peak_bytes(m.fn, device)
        return timing, peak, float(value)
    value, peak = delta_peak_bytes(m.fn, device)
    return None, peak, float(value)


def run_case(case: Case, device: torch.device, reps: int, env: dict, copy_bw: float,
             only: set[str] | None = None) -> tuple[list[dict], list[str]]:
    """Result rows of one case (methods named in `only`, default all), and the loss mismatches found in it."""
    inp = make_inputs(case, device)
    rate = matmul_rate(case, device)
    base = {"suite": SUITE, "case": case.name, "rows": case.rows, "dim": case.dim, "vocab": case.vocab,
            "layers": case.layers, "selected": case.selected, "k": TOPK, "batch": case.batch, "seq": case.seq,
            "dtype": case.dtype, "matmul_flops_per_s": rate, "copy_bandwidth": copy_bw, **env}
    todo, missing = methods(case, inp, device)
    if only is not None:
        todo = [m for m in todo if m.name in only or f"{m.name}/{m.backend}" in only]
        missing = {key: why for key, why in missing.items() if key.split("/")[0] in only or key in only}
    rows: list[dict] = []
    for key, why in missing.items():
        method, backend = key.split("/")
        rows.append({**base, "method": method, "backend": backend, "metric": "skipped", "unit": None, "p20": None,
                     "p50": None, "p80": None, "reason": why})
        print(f"{case.name} {method} {backend}: skipped ({why})", flush=True)
    losses: dict[str, float] = {}
    measured: list[tuple] = []  # (method, row head, timing, delta-peak, loss)
    for m in todo:
        floors = {"flops": m.flops, "bytes": m.bytes, "flops_floor_ms": m.flops / rate * 1e3,
                  "bytes_floor_ms": m.bytes / copy_bw * 1e3}
        floors["floor_ms"] = max(floors["flops_floor_ms"], floors["bytes_floor_ms"])
        head = {**base, "method": m.name, "backend": m.backend, **floors}
        free = _free_bytes(device)
        if m.est_bytes > 0.9 * free:
            reason = f"needs ~{m.est_bytes / 1e9:.1f} GB, {free / 1e9:.1f} GB free"
            print(f"{case.name} {m.name} {m.backend}: skipped ({reason})", flush=True)
            rows.append({**head, "metric": "skipped", "unit": None, "p20": None, "p50": None, "p80": None,
                         "reason": reason})
            continue
        reason = None
        try:
            timing, peak, value = measure(m, device, reps)
        except torch.cuda.OutOfMemoryError as exc:
            reason = f"OOM: {str(exc).splitlines()[0]}"
        if reason is not None:  # out of the except block: its traceback no longer holds the method's tensors
            print(f"{case.name} {m.name} {m.backend}: {reason}", flush=True)
            rows.append({**head, "metric": "oom", "unit": None, "p20": None, "p50": None, "p80": None,
                         "reason": reason})
            _release(device)
            continue
        measured.append((m, head, timing, peak, value))
        _release(device)
    if device.type != "cuda" and measured:
        timings = harness.interleaved_ms({i: entry[0].fn for i, entry in enumerate(measured)}, reps)
        measured = [(m, head, timings[i], peak, value) for i, (m, head, _, peak, value) in enumerate(measured)]
    for m, head, timing, peak, value in measured:
        losses[f"{m.name}/{m.backend}"] = value
        rows.append({**head, "loss": value, "metric": "time", "unit": "ms", **harness.percentiles_dict(timing)})
        rows.append({**head, "loss": value, "metric": "delta_peak", "unit": "bytes", "p20": peak, "p50": peak,
                     "p80": peak})
        print(f"{case.name} {m.name} {m.backend}: {timing.p50:.2f} ms, {peak / 2**20:.1f} MB, loss {value:.6g}",
              flush=True)
    del inp
    _release(device)
    references = {f"{m.name}/{m.backend}": m.reference for m in todo if m.reference is not None}
    e = torch.empty((), dtype=getattr(torch, case.dtype)).element_size()
    mismatches: list[str] = []
    for row in rows:
        ref_key = references.get(f"{row['method']}/{row['backend']}")
        if "loss" not in row or ref_key not in losses:  # not measured, or its counterpart was skipped
            continue
        ref = losses[ref_key]
        rel = abs(row["loss"] - ref) / max(abs(ref), 1e-12)
        rtol = LOSS_RTOL
        if e == 2 and row["method"] == "fused-top16":
            rtol = LOSS_RTOL_TOPK_16BIT
        elif e == 2 and (row["method"] in PEER_NAMES or ref_key.split("/")[0] in PEER_NAMES):
            rtol = LOSS_RTOL_PEER_16BIT  # a peer's 16-bit loss on either side
        row.update(loss_reference=ref, loss_reference_method=ref_key, loss_rel_diff=rel, loss_rtol=rtol)
        if not rel < rtol and row["metric"] == "time":
            mismatches.append(f"{case.name} {row['method']}/{row['backend']}: loss {row['loss']!r} vs {ref_key} "
                              f"{ref!r} (relative difference {rel:.2e} >= {rtol})")
    return rows, mismatches


def summarise(rows: list[dict]) -> str:
    """One table per case: each method's fwd+bwd time and delta-peak, their ratios to naive top-16 measured in the
    same run, and the floors (FLOPs at the measured matmul rate, bytes at the measured copy bandwidth)."""
    lines: list[str] = []
    for case in dict.fromkeys(r["case"] for r in rows):
        mine = [r for r in rows if r["case"] == case]
        first = mine[0]
        lines += ["", f"case {case}: OPD rows {first['rows']}, d {first['dim']}, V {first['vocab']}, OPRD "
                  f"{first['layers']} layers x {first['selected']} rows, {first['dtype']}; matmul "
                  f"{first['matmul_flops_per_s'] / 1e12:.2f} TFLOP/s, copy {first['copy_bandwidth'] / 1e9:.1f} GB/s",
                  f"{'method':<14}{'backend':<10}{'fwd+bwd ms':>12}{'p20-p80':>17}{'peak MB':>11}{'t/naive16':>10}"
                  f"{'mem/naive16':>12}{'GFLOP':>10}{'mm floor':>10}{'B floor':>9}{'%floor':>8}{'loss rel':>10}"]
        cells: dict[tuple[str, str], dict] = {}
        for r in mine:
            cells.setdefault((r["method"], r["backend"]), {})[r["metric"]] = r
        base = cells.get((BASELINE, "eager"), {})
        base_t = base.get("time", {}).get("p50")
        base_m = base.get("delta_peak", {}).get("p50")
        for (method, backend), c in cells.items():
            if "time" not in c:
                r = next(iter(c.values()))
                lines.append(f"{method:<14}{backend:<10}  {r['metric']}: {r.get('reason', '')}")
                continue
            t, m = c["time"], c["delta_peak"]
            rt = f"{t['p50'] / base_t:.2f}" if base_t else "-"
            rm = f"{m['p50'] / base_m:.2f}" if base_m else "-"
            spread = f"{t['p20']:.1f}-{t['p80']:.1f}"
            rel = f"{t['loss_rel_diff']:.1e}" if "loss_rel_diff" in t else "-"
            lines.append(f"{method:<14}{backend:<10}{t['p50']:>12.2f}{spread:>17}{m['p50'] / 2**20:>11.1f}{rt:>10}"
                         f"{rm:>12}{t['flops'] / 1e9:>10.1f}{t['flops_floor_ms']:>10.2f}{t['bytes_floor_ms']:>9.2f}"
                         f"{100 * t['floor_ms'] / t['p50']:>8.1f}{rel:>10}")
        lines += peer_ratio_lines(cells)
    lines.append("t/naive16, mem/naive16: p50 time and delta-peak over naive top-16's, same run. mm floor: FLOPs at "
                 "the measured matmul rate (ms); B floor: bytes at the measured copy bandwidth (ms); %floor: the "
                 "larger floor as a share of the measured time; loss rel: relative difference of the loss from the "
                 "naive (OPRD: reference) one.")
    return "\n".join(lines)


PEER_COUNTERPARTS = {method: peers.baseline_for(method) for method in ("fused-full", "fused-jsd")}


def peer_ratio_lines(cells: dict[tuple[str, str], dict]) -> list[str]:
    """Our fused full-vocabulary loss and generalised JSD against the fastest peer at the same loss (Liger's compiled
    reverse KL, its compiled JSD at beta = 0.5): p50 time and delta-peak, as peer / ours (> 1: ours is faster /
    leaner)."""
    lines = []
    for (method, backend), c in cells.items():
        counterpart = PEER_COUNTERPARTS.get(method)
        peer = cells.get(counterpart, {})
        if "time" in peer and "time" in c:
            lines.append(f"{method}/{backend} vs {'/'.join(counterpart)}: "
                         f"{peer['time']['p50'] / c['time']['p50']:.2f}x the speed, "
                         f"{peer['delta_peak']['p50'] / c['delta_peak']['p50']:.2f}x less delta-peak")
    return lines


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes: checks that everything runs")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="append result rows (JSON lines) here")
    parser.add_argument("--cases", default=None, help="comma-separated case names to run (default: all)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated methods (or method/backend) to run, e.g. naive-top16,fused-top16,"
                             "liger-rkl/compiled (default: all)")
    parser.add_argument("--time-budget", type=float, default=None, help="seconds: start no new case after this")
    args = parser.parse_args(argv)
    only = set(args.methods.split(",")) if args.methods else None
    device = torch.device(args.device)
    cases = SMOKE_CASES if args.smoke else GPU_CASES if device.type == "cuda" else CPU_CASES
    if args.cases:
        cases = [c for c in cases if c.name in args.cases.split(",")]
    reps = args.reps or (2 if args.smoke else 10 if device.type == "cuda" else 3)
    env = harness.environment(device)
    copy_bw = harness.copy_bandwidth(device, 1 << 20 if args.smoke else 1 << 30)
    rows: list[dict] = []
    mismatches: list[str] = []
    started = time.monotonic()
    for case in cases:
        if args.time_budget is not None and time.monotonic() - started > args.time_budget:
            print(f"time budget spent: skipping case {case.name}", flush=True)
            continue
        new, bad = run_case(case, device, reps, env, copy_bw, only)
        if args.out:  # written case by case: a run cut short keeps what it measured
            harness.append_rows(args.out, new)
        print(summarise(new), flush=True)
        rows += new
        mismatches += bad
    print(f"loss_path: {len(cases)} case(s) in {time.monotonic() - started:.1f} s", flush=True)
    if mismatches:
        raise RuntimeError("fused and naive losses disagree:\n" + "\n".join(mismatches))
    return rows


if __name__ == "__main__":
    main()

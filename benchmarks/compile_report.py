"""Compile the Triton kernels for a GPU architecture without a GPU and report what the compiler made of them:
registers, spills (local memory), shared memory (static plus the launch's dynamic share, where the pipelined tl.dot
operands live), the widths of the global loads and of the async global-to-shared copies (LDGSTS, TMA) in the SASS, the
tensor-core instructions, and any atomics.

    python benchmarks/compile_report.py              # every variant, sm_90 (H100/H200)
    python benchmarks/compile_report.py --arch 80 --quick
    python benchmarks/compile_report.py --opd        # the fused OPD kernels (tests/test_triton_opd.py checks them)
    python benchmarks/compile_report.py --candidates # the OPD kernels at the GPU tuning bench's block candidates

This costs no device time (METHOD.md: read what costs no device time). It uses the ptxas and cuobjdump shipped in
the triton wheel. The pointer arguments are marked 16-byte aligned, as Triton specialises them at run time for
torch allocations. Must run without TRITON_INTERPRET (the kernels must be real JIT functions).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from oprd_kernels.triton_ops.alignment import launch_options
from oprd_kernels.triton_ops.alignment_kernels import alignment_bwd_kernel, alignment_fwd_kernel
from oprd_kernels.triton_ops.bridge import PROJ_GRAD_BLOCKS
from oprd_kernels.triton_ops.bridge_kernels import bridge_bwd_kernel, bridge_fwd_kernel, bridge_proj_grad_kernel
from oprd_kernels.triton_ops.opd_kernels import (
    opd_grad_tile_kernel,
    opd_kl_stats_kernel,
    opd_logits_at_kernel,
    opd_matmul_acc_kernel,
    opd_stats_kernel,
)

# The most shared memory one block may use (the opt-in maximum, bytes): a launch asking for more fails with "out of
# resources" at run time, so the report checks it at compile time. sm_86 / sm_89: the RTX 30x0 / 40x0 and L4/L40.
SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
INT_ARGS = {"s_seq", "t_seq", "z_seq", "n_sel", "dim", "num_layers", "rank", "p_stride_l",
            "p_stride_r", "p_stride_d", "k_chunk"}
# Integers Triton would see as multiples of 16 at the paper's shapes (D = 1536, S = 16384, N_sel = 4000), which it
# specialises on at run time, as it does 16-byte-aligned pointers.
DIVISIBLE_INTS = {"s_seq", "dim", "n_sel", "p_stride_l", "p_stride_r", "k_chunk"}
FLOAT_ARGS = {"eps_sq"}
# The fused OPD kernels' integers, at N = 32768, d = 1536, V = 151936 (a multiple of 16), gradient slab 2048 x 8192.
OPD_INT_ARGS = {"h_sn", "h_sd", "w_sv", "w_sd", "t_sn", "t_sd", "tw_sv", "tw_sd", "ids_sr", "ids_sk", "sp_sr",
                "sp_sk", "g_sr", "n", "vocab", "t_dim", "v_chunk", "r0", "rs", "v0", "vs", "k", "a_sm", "a_sk", "b_sk",
                "b_sn", "c_sm", "M", "N", "K"}
OPD_DIVISIBLE_INTS = {"h_sn", "w_sv", "t_sn", "tw_sv", "g_sr", "n", "vocab", "t_dim", "v_chunk", "r0", "rs", "v0",
                      "vs", "a_sm", "a_sk", "b_sk", "c_sm", "M", "N", "K"}
INT_ARGS |= OPD_INT_ARGS
DIVISIBLE_INTS |= OPD_DIVISIBLE_INTS


@dataclass(frozen=True)
class Variant:
    name: str
    kernel: object
    pointers: dict  # argument -> element type ("bf16", "fp32", "i64", ...) or None when absent
    constexprs: dict
    num_warps: int
    num_stages: int = 3  # Triton's default on CUDA


def _check_flags(v: Variant, signature: inspect.Signature) -> None:
    """Every flag names a kernel parameter and every constexpr parameter has a flag: a renamed flag (such as the
    interpreter switches folded into INTERPRET) must not compile as a silent None."""
    unknown = set(v.constexprs) - set(signature.parameters)
    missing = {name for name, p in signature.parameters.items()
               if "constexpr" in str(p.annotation) and name not in v.constexprs}
    if unknown or missing:
        raise ValueError(f"compile_report: variant {v.name}: flags {sorted(unknown)} are not parameters of "
                         f"{v.kernel.fn.__name__}; constexpr parameters {sorted(missing)} have no flag")


def _signature(v: Variant) -> tuple[dict, dict, dict]:
    signature = inspect.signature(v.kernel.fn)
    _check_flags(v, signature)
    params = list(signature.parameters)
    sig, consts, attrs = {}, {}, {}
    for i, name in enumerate(params):
        if name in v.constexprs:
            sig[name] = "constexpr"
            consts[(i,)] = v.constexprs[name]
        elif name in INT_ARGS:
            sig[name] = "i32"
            if name in DIVISIBLE_INTS:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in FLOAT_ARGS:
            sig[name] = "fp32"
        elif v.pointers.get(name) is None:
            sig[name] = "constexpr"
            consts[(i,)] = None
        else:
            sig[name] = "*" + v.pointers[name]
            attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, consts, attrs


def compile_variant(v: Variant, arch: int) -> dict:
    sig, consts, attrs = _signature(v)
    src = ASTSource(fn=v.kernel, signature=sig, constexprs=consts, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": v.num_warps,
                                                                                 "num_stages": v.num_stages})
    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([os.path.join(tools, "cuobjdump"), "-res-usage", f.name], capture_output=True,
                               text=True, check=True).stdout
        sass = subprocess.run([os.path.join(tools, "cuobjdump"), "-sass", f.name], capture_output=True, text=True,
                              check=True).stdout
    facts = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    shared = int(facts["SHARED"]) + compiled.metadata.shared
    return {"variant": v.name, "arch": arch, "registers": int(facts["REG"]), "local_bytes": int(facts["LOCAL"]),
            "stack_bytes": int(facts["STACK"]),
            # static (cuobjdump) + dynamic (the launch's, where Triton keeps its tl.dot operand buffers)
            "shared_bytes": shared, "shared_fits": shared <= SHARED_LIMIT.get(arch, 0),
            "global_loads": sorted(set(re.findall(r"LDG\.E[.\w]*", sass))),
            "async_copies": sorted(set(re.findall(r"\b(?:LDGSTS|UTMALDG)[.\w]*", sass))),  # global -> shared
            "mma": sorted(set(re.findall(r"\b(?:HGMMA|HMMA)\.\w+", sass))),  # tensor-core instruction (shape)
            "global_stores": sorted(set(re.findall(r"STG\.E[.\w]*", sass))),
            "atomics": sorted(set(re.findall(r"\b(?:RED|ATOMG|ATOM)\.[.\w]*", sass))),
            "instructions": len(re.findall(r"/\*[0-9a-f]{4,}\*/\s+[^;]*;", sass))}  # SASS size, for comparisons


# Hidden sizes the alignment variants are compiled at, with the launcher's own options (alignment.launch_options):
# small students (several rows per program), Qwen2.5-0.5B (896: a masked tile), the paper's 1536, 4096 (EVEN_D).
ALIGNMENT_DIMS = (64, 128, 896, 1536, 4096)
ALIGNMENT_DIMS_QUICK = (128, 1536)


def variants(quick: bool = False) -> list[Variant]:
    out = []
    for dtype in (["bf16"] if quick else ["bf16", "fp32"]):
        for loss in ((0, 1) if quick else (0, 1, 2)):
            for dim in (ALIGNMENT_DIMS_QUICK if quick else ALIGNMENT_DIMS):
                align = 8 if dtype == "bf16" else 4
                opts = launch_options(dim)
                warps = opts.pop("num_warps")
                flags = dict(LOSS=loss, HAS_ROWS=True, HAS_WEIGHTS=False, HAS_MAP=False, S_UNIT=True, S_ALIGN=align,
                             T_UNIT=True, T_ALIGN=align, ACC=tl.float32, **opts)
                fwd_ptr = dict(s_base=dtype, s_table="i64", t_base=dtype, t_table="i64", rows="i64",
                               row_loss="fp32", stats="fp32")
                out.append(Variant(f"alignment_fwd/{dtype}/loss{loss}/d{dim}", alignment_fwd_kernel, fwd_ptr, flags,
                                   warps))
                bwd_ptr = dict(s_base=dtype, s_table="i64", t_base=dtype, t_table="i64", order="i64",
                               slot_rows="i64", slot_start="i64", grad_layers="i64", stats="fp32", grad_out="fp32",
                               grad=dtype, grad_offsets="i64")
                out.append(Variant(f"alignment_bwd/{dtype}/loss{loss}/d{dim}", alignment_bwd_kernel, bwd_ptr,
                                   {**flags, "INTERPRET": False, "G_ALIGN": align}, warps))
    for r_pad in ((16,) if quick else (16, 64)):
        flags = dict(LOSS=1, HAS_ROWS=True, HAS_WEIGHTS=False, S_UNIT=True, S_ALIGN=8, P_UNIT=True, NATIVE_DOT=True,
                     ACC=tl.float32, BLOCK_R=16, R_PAD=r_pad, TILE_D=64, INTERPRET=False)
        ptr = dict(s_base="bf16", s_table="i64", z_base="fp32", z_table="i64", proj="bf16")
        out.append(Variant(f"bridge_fwd/bf16/r{r_pad}", bridge_fwd_kernel, {**ptr, "rows": "i64", "row_loss": "fp32"},
                           flags, 4))
        for proj_grad in ((True,) if quick else (False, True)):
            bwd = {**ptr, "order": "i64", "slot_rows": "i64", "slot_start": "i64", "grad_out": "fp32",
                   "grad_index": "i64", "grad": "bf16", "grad_offsets": "i64"}
            if proj_grad:
                bwd["dz_out"] = "fp32"
            out.append(Variant(f"bridge_bwd/bf16/r{r_pad}/proj_grad={proj_grad}", bridge_bwd_kernel, bwd,
                               {**flags, "PROJ_GRAD": proj_grad, "G_ALIGN": 8}, 4))
        opts = dict(PROJ_GRAD_BLOCKS["cuda"])
        warps, stages = opts.pop("num_warps"), opts.pop("num_stages")
        pg_ptr = dict(s_base="bf16", s_table="i64", slot_rows="i64", dz="fp32", out="fp32")
        out.append(Variant(f"bridge_proj_grad/bf16/r{r_pad}", bridge_proj_grad_kernel, pg_ptr,
                           dict(HAS_ROWS=True, S_UNIT=True, S_ALIGN=8, ACC=tl.float32, R_PAD=r_pad, **opts), warps,
                           stages))
    return out


def opd_variants(quick: bool = False) -> list[Variant]:
    """The fused OPD kernels at the block sizes oprd_kernels.triton_ops.opd launches on CUDA (bf16 head; fp32 too
    unless quick), student and teacher alike, live rows gathered through `rows`."""
    from oprd_kernels.triton_ops import opd

    cuda = torch.device("cuda")
    out = []
    for dtype in (["bf16"] if quick else ["bf16", "fp32"]):
        torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
        dot = dict(DOT=tl.bfloat16 if dtype == "bf16" else tl.float32, PREC="ieee", INTERPRET=False)
        t_dot = {f"T_{key}": value for key, value in dot.items() if key != "INTERPRET"}

        def launch(name: str) -> tuple[dict, int, int]:
            opts = opd._blocks(name, cuda, torch_dtype)
            return opts, opts.pop("num_warps"), opts.pop("num_stages")

        units = dict(H_UNIT=True, W_UNIT=True, EVEN_D=True)  # d = 1536: a multiple of every BLOCK_D
        head = dict(h_base=dtype, rows="i64", w_base=dtype)
        stats = [("plain", dict(ENTROPY=False, K_PAD=0)), ("top16", dict(ENTROPY=False, K_PAD=16))]
        if not quick:
            stats += [("entropy", dict(ENTROPY=True, K_PAD=0)), ("top64", dict(ENTROPY=True, K_PAD=64))]
        for label, flags in stats:
            opts, warps, stages = launch("topk" if flags["K_PAD"] else "stats")
            ptr = {**head, "part": "fp32", **({"top_v": "fp32", "top_i": "i64"} if flags["K_PAD"] else {})}
            out.append(Variant(f"opd_stats/{dtype}/{label}", opd_stats_kernel, ptr,
                               dict(HAS_ROWS=True, **flags, **units, **dot, GROUP_R=opd.GROUP_R["cuda"], **opts),
                               warps, stages))
        kl_ptr = {**head, "t_base": dtype, "tw_base": dtype, "part": "fp32"}
        opts, warps, stages = launch("kl")
        kl_flags = dict(HAS_ROWS=True, **units, T_UNIT=True, TW_UNIT=True, T_EVEN_D=True, **dot, **t_dot,
                        GROUP_R=opd.GROUP_R["cuda"], **opts)
        out.append(Variant(f"opd_kl_stats/{dtype}", opd_kl_stats_kernel, kl_ptr, kl_flags, warps, stages))
        opts, warps, stages = launch("at")
        out.append(Variant(f"opd_logits_at/{dtype}", opd_logits_at_kernel, {**head, "ids": "i64", "out": "fp32"},
                           dict(HAS_ROWS=True, **units, DOT=dot["DOT"], INTERPRET=False, **opts), warps, stages))
        for form in ("sparse", "kl"):
            opts, warps, stages = launch("grad_kl" if form == "kl" else "grad")
            ptr = {**head, "lse": "fp32", "g": dtype}
            if form == "kl":
                ptr.update(t_base=dtype, tw_base=dtype, lse_q="fp32", kl="fp32", row_w="fp32")
            else:
                ptr.update(dense="fp32", ids="i64", sparse="fp32")
            flags = dict(KL=form == "kl", HAS_ROWS=True, **units, T_UNIT=True, TW_UNIT=True, T_EVEN_D=True, **dot,
                         **t_dot, **opts)
            out.append(Variant(f"opd_grad_tile/{dtype}/{form}", opd_grad_tile_kernel, ptr, flags, warps, stages))
        opts, warps, stages = launch("mm")
        for label, layout, b_rows in (("d_hidden", 1, False), ("d_weight", 2, True)):
            ptr = dict(a=dtype, b=dtype, c="fp32", **({"b_rows": "i64"} if b_rows else {}))
            flags = dict(A_LAYOUT=layout, B_ROWS=b_rows, B_UNIT=True, EVEN_K=True, **dot, **opts)
            out.append(Variant(f"opd_matmul_acc/{dtype}/{label}", opd_matmul_acc_kernel, ptr, flags, warps, stages))
    return out


# bench_opd_tuning.CANDIDATES' kernel names -> the opd_variants they change (bf16)
CANDIDATE_VARIANTS = {"stats": ("opd_stats/bf16/plain",), "kl": ("opd_kl_stats/bf16",),
                      "grad": ("opd_grad_tile/bf16/sparse",), "grad_kl": ("opd_grad_tile/bf16/kl",),
                      "mm": ("opd_matmul_acc/bf16/d_hidden", "opd_matmul_acc/bf16/d_weight")}


def candidate_variants() -> list[Variant]:
    """The fused OPD kernels at every block candidate the GPU tuning bench times (bench_opd_tuning.CANDIDATES),
    named after the kernel's default variant plus /cand<i>."""
    from bench_opd_tuning import CANDIDATES, blocks

    out = []
    for name, cands in CANDIDATES["cuda"].items():
        for i, cand in enumerate(cands):
            with blocks("cuda", name, cand):
                chosen = [v for v in opd_variants(quick=True) if v.name in CANDIDATE_VARIANTS[name]]
            out += [dataclasses.replace(v, name=f"{v.name}/cand{i}") for v in chosen]
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--quick", action="store_true", help="a few representative variants")
    parser.add_argument("--opd", action="store_true", help="only the fused OPD kernels (else: all but those)")
    parser.add_argument("--candidates", action="store_true",
                        help="only the fused OPD kernels at bench_opd_tuning.py's block candidates")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("compile_report.py must run without TRITON_INTERPRET=1")
    chosen = candidate_variants() if args.candidates else opd_variants(args.quick) if args.opd else \
        variants(args.quick)
    reports = [compile_variant(v, args.arch) for v in chosen]
    print(f"triton {triton.__version__}, sm_{args.arch}")
    print(f"{'variant':<40}{'regs':>5}{'local B':>8}{'shared B':>9}  global loads (+ async copies) / stores "
          "[atomics] {tensor cores}")
    for r in reports:
        copies = f" + {' '.join(r['async_copies'])}" if r["async_copies"] else ""
        print(f"{r['variant']:<40}{r['registers']:>5}{r['local_bytes']:>8}{r['shared_bytes']:>9}  "
              f"{' '.join(r['global_loads'])}{copies} / {' '.join(r['global_stores'])}"
              + (f" [{' '.join(r['atomics'])}]" if r["atomics"] else "")
              + (f" {{{' '.join(r['mma'])}}}" if r["mma"] else ""))
    return reports


if __name__ == "__main__":
    main()

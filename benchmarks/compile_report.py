"""Compile the Triton kernels for a GPU architecture without a GPU and report what the compiler made of them:
registers, spills (local memory), shared memory, and the widths of the global loads in the SASS.

    python benchmarks/compile_report.py              # every variant, sm_90 (H100/H200)
    python benchmarks/compile_report.py --arch 80 --quick

This costs no device time (METHOD.md: read what costs no device time). It uses the ptxas and cuobjdump shipped in
the triton wheel. The pointer arguments are marked 16-byte aligned, as Triton specialises them at run time for
torch allocations. Must run without TRITON_INTERPRET (the kernels must be real JIT functions).
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from oprd_kernels.triton_ops.alignment_kernels import alignment_bwd_kernel, alignment_fwd_kernel
from oprd_kernels.triton_ops.bridge_kernels import bridge_bwd_kernel, bridge_fwd_kernel

INT_ARGS = {"s_seq", "t_seq", "z_seq", "n_sel", "dim", "num_layers", "rank", "p_stride_l",
            "p_stride_r", "p_stride_d"}
# Integers Triton would see as multiples of 16 at the paper's shapes (D = 1536, S = 16384, N_sel = 4000), which it
# specialises on at run time, as it does 16-byte-aligned pointers.
DIVISIBLE_INTS = {"s_seq", "dim", "n_sel", "p_stride_l", "p_stride_r"}
FLOAT_ARGS = {"eps_sq"}


@dataclass(frozen=True)
class Variant:
    name: str
    kernel: object
    pointers: dict  # argument -> element type ("bf16", "fp32", "i64", ...) or None when absent
    constexprs: dict
    num_warps: int


def _signature(v: Variant) -> tuple[dict, dict, dict]:
    params = list(inspect.signature(v.kernel.fn).parameters)
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
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": v.num_warps})
    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([os.path.join(tools, "cuobjdump"), "-res-usage", f.name], capture_output=True,
                               text=True, check=True).stdout
        sass = subprocess.run([os.path.join(tools, "cuobjdump"), "-sass", f.name], capture_output=True, text=True,
                              check=True).stdout
    facts = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    return {"variant": v.name, "arch": arch, "registers": int(facts["REG"]), "local_bytes": int(facts["LOCAL"]),
            "stack_bytes": int(facts["STACK"]), "shared_bytes": int(facts["SHARED"]),
            "global_loads": sorted(set(re.findall(r"LDG\.E[.\w]*", sass))),
            "global_stores": sorted(set(re.findall(r"STG\.E[.\w]*", sass)))}


def variants(quick: bool = False) -> list[Variant]:
    out = []
    for dtype in (["bf16"] if quick else ["bf16", "fp32"]):
        for loss in ((0, 1) if quick else (0, 1, 2)):
            align = 8 if dtype == "bf16" else 4
            flags = dict(LOSS=loss, HAS_ROWS=True, HAS_WEIGHTS=False, HAS_MAP=False, S_UNIT=True, S_ALIGN=align,
                         T_UNIT=True, T_ALIGN=align, ACC=tl.float32, TILE_D=2048)
            fwd_ptr = dict(s_base=dtype, s_table="i64", t_base=dtype, t_table="i64", rows="i64", row_loss="fp32",
                           stats="fp32")
            out.append(Variant(f"alignment_fwd/{dtype}/loss{loss}", alignment_fwd_kernel, fwd_ptr, flags, 8))
            bwd_ptr = dict(s_base=dtype, s_table="i64", t_base=dtype, t_table="i64", order="i64", slot_rows="i64",
                           slot_start="i64", grad_layers="i64", stats="fp32", grad_out="fp32", grad=dtype,
                           grad_offsets="i64")
            out.append(Variant(f"alignment_bwd/{dtype}/loss{loss}", alignment_bwd_kernel, bwd_ptr,
                               {**flags, "BF16_RNE": False, "G_ALIGN": align}, 8))
    for r_pad in ((16,) if quick else (16, 64)):
        flags = dict(LOSS=1, HAS_ROWS=True, HAS_WEIGHTS=False, S_UNIT=True, S_ALIGN=8, P_UNIT=True, NATIVE_DOT=True,
                     ACC=tl.float32, BLOCK_R=16, R_PAD=r_pad, TILE_D=64)
        ptr = dict(s_base="bf16", s_table="i64", z_base="fp32", z_table="i64", proj="bf16")
        out.append(Variant(f"bridge_fwd/bf16/r{r_pad}", bridge_fwd_kernel, {**ptr, "rows": "i64", "row_loss": "fp32"},
                           flags, 4))
        for proj_grad in ((True,) if quick else (False, True)):
            bwd = {**ptr, "order": "i64", "slot_rows": "i64", "slot_start": "i64", "grad_out": "fp32",
                   "grad_index": "i64", "grad": "bf16", "grad_offsets": "i64",
                   "proj_grad": "fp32" if proj_grad else None}
            out.append(Variant(f"bridge_bwd/bf16/r{r_pad}/proj_grad={proj_grad}", bridge_bwd_kernel, bwd,
                               {**flags, "PROJ_GRAD": proj_grad, "BF16_RNE": False, "G_ALIGN": 8}, 4))
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--quick", action="store_true", help="a few representative variants")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("compile_report.py must run without TRITON_INTERPRET=1")
    reports = [compile_variant(v, args.arch) for v in variants(args.quick)]
    print(f"triton {triton.__version__}, sm_{args.arch}")
    print(f"{'variant':<40}{'regs':>5}{'local B':>8}{'shared B':>9}  global loads / stores")
    for r in reports:
        print(f"{r['variant']:<40}{r['registers']:>5}{r['local_bytes']:>8}{r['shared_bytes']:>9}  "
              f"{' '.join(r['global_loads'])} / {' '.join(r['global_stores'])}")
    return reports


if __name__ == "__main__":
    main()

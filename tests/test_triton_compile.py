"""The Triton kernels compile for the GPUs we target (sm_90 H100/H200, sm_80 A100) on a machine without one, using
the ptxas in the triton wheel; and the compiled code is what we meant: no register spills, 16-byte row loads and
gradient stores in the alignment kernels, no atomics anywhere (results must not depend on the order programs
run). Runs in a subprocess, since the test session has TRITON_INTERPRET=1."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def report(arch: int) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import json, sys; sys.path.insert(0, 'benchmarks'); import compile_report; "
            f"print('JSON' + json.dumps(compile_report.main(['--quick', '--arch', '{arch}'])))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(line for line in out.stdout.splitlines() if line.startswith("JSON"))
    return json.loads(line[4:])


@pytest.mark.parametrize("arch", [90, 80, 89])
def test_kernels_compile_without_spills_and_with_wide_memory_access(arch):
    reports = report(arch)
    names = {r["variant"].split("/")[0] for r in reports}
    assert names == {"alignment_fwd", "alignment_bwd", "bridge_fwd", "bridge_bwd", "bridge_proj_grad"}
    assert any(r["variant"].endswith("proj_grad=True") for r in reports)
    dims = {r["variant"].rsplit("/", 1)[1] for r in reports if r["variant"].startswith("alignment")}
    assert dims == {"d128", "d1536"}  # a small D (several rows per program) and the paper's
    for r in reports:
        assert r["local_bytes"] == 0, f"{r['variant']} spills to local memory"
        assert r["atomics"] == [], r  # the Bridge projector gradient once used ATOMG.E.ADD.F32x4
        assert r["registers"] <= 255
        assert r["shared_fits"], r  # else the launch fails with "out of resources" on that GPU
        if r["variant"].startswith("alignment"):
            # the bf16 rows are read 8 elements at a time, at every D (at D = 128 one row per program read 2 bytes)
            assert "LDG.E.128" in r["global_loads"], r
            assert "LDG.E.U16" not in r["global_loads"], r
        if r["variant"].startswith("alignment_bwd"):
            assert "STG.E.128" in r["global_stores"] and "STG.E.U16" not in r["global_stores"], r
        if r["variant"].startswith("bridge_proj_grad"):
            assert "LDG.E.128" in r["global_loads"], r  # the student rows, read in place


def test_every_variant_names_exactly_the_kernels_constexpr_parameters():
    """A flag the kernel no longer has (e.g. BF16_RNE before the interpreter switches became INTERPRET) or a
    constexpr left without one would otherwise compile as a silent None."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import dataclasses, inspect, sys; sys.path.insert(0, 'benchmarks'); import compile_report as c\n"
            "vs = c.variants() + c.opd_variants()\n"
            "for v in vs: c._check_flags(v, inspect.signature(v.kernel.fn))\n"
            "bad = dataclasses.replace(vs[0], constexprs={**vs[0].constexprs, 'BF16_RNE': False})\n"
            "try:\n    c._check_flags(bad, inspect.signature(bad.kernel.fn))\nexcept ValueError as e:\n"
            "    print('REFUSED', e)\n"
            "gone = dataclasses.replace(vs[0], constexprs={k: x for k, x in vs[0].constexprs.items() if k != 'LOSS'})\n"
            "try:\n    c._check_flags(gone, inspect.signature(gone.kernel.fn))\nexcept ValueError as e:\n"
            "    print('REFUSED', e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    refused = [line for line in out.stdout.splitlines() if line.startswith("REFUSED")]
    assert len(refused) == 2 and "BF16_RNE" in refused[0] and "LOSS" in refused[1], out.stdout

"""The compiled extension is built by `pip install` and reports its build facts."""

import json
import subprocess
import sys

import oprd_kernels
from oprd_kernels import _build


def test_extension_is_built_and_imports():
    assert _build.extension_error() is None, _build.extension_error()
    from oprd_kernels import _C

    assert callable(_C.build_info)


def test_build_info_reports_compiler_openmp_and_cuda_facts():
    info = oprd_kernels.build_info()
    assert set(info) >= {"compiler", "openmp", "cuda", "simd", "pybind11", "pointer_bits"}
    assert info["compiler"]["id"] and info["compiler"]["version"]
    assert info["compiler"]["cplusplus"] >= 201703
    openmp = info["openmp"]
    assert isinstance(openmp["enabled"], bool)
    assert openmp["max_threads"] >= 1 and (openmp["version"] > 0) == openmp["enabled"]
    cuda = info["cuda"]
    assert isinstance(cuda["compiled"], bool) and isinstance(cuda["requested"], bool)
    assert cuda["compiled"] <= cuda["requested"]  # never compiled unless asked for
    assert (cuda["runtime_version"] > 0) == cuda["compiled"]
    assert info["pointer_bits"] == 64
    assert info["kernel_isa"] in info["kernel_variants"] and "base" in info["kernel_variants"]


def test_python_dash_m_prints_the_build_facts_as_json():
    out = subprocess.run([sys.executable, "-m", "oprd_kernels"], capture_output=True, text=True, check=True)
    facts = json.loads(out.stdout)
    assert facts["extension"] == oprd_kernels.build_info()
    assert facts["backends"]["reference"]["alignment_loss"] == "available"
    assert facts["opd_backends"]["chunked"] == facts["opd_backends"]["rowwise"] == "available"
    assert facts["opd_auto"] in facts["opd_backends"] and facts["opd_backends"][facts["opd_auto"]] == "available"
    assert facts["torch"] and "python" in facts


def test_kernel_library_does_not_import_the_trainer_or_transformers():
    code = ("import sys, oprd_kernels, oprd_kernels.reference; "
            "bad = [m for m in ('oprd', 'transformers', 'vllm') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

"""The CMake build degrades cleanly: without OpenMP it builds serial code, with OPRD_WITH_CUDA=ON it compiles the
CUDA sources when nvcc is present, and build_info() reports each case truthfully. Each case is a real build."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def build(tmp_path: Path, **options: str) -> dict:
    import pybind11

    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    cmake, ninja = shutil.which("cmake", path=search), shutil.which("ninja", path=search)
    assert cmake and ninja, "the test extra installs cmake and ninja next to this interpreter"
    out = tmp_path / "out"
    args = [cmake, "-S", str(ROOT), "-B", str(tmp_path / "build"), "-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}",
            f"-DPython_EXECUTABLE={sys.executable}", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out}", *[f"-D{k}={v}" for k, v in options.items()]]
    subprocess.run(args, check=True, capture_output=True)
    subprocess.run([cmake, "--build", str(tmp_path / "build")], check=True, capture_output=True)
    (library,) = out.glob("_C*")
    # A fresh interpreter per build: CPython keeps the first extension module named _C it loads.
    code = ("import importlib.util, json, sys; spec = importlib.util.spec_from_file_location('_C', sys.argv[1]); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); print(json.dumps(m.build_info()))")
    result = subprocess.run([sys.executable, "-c", code, str(library)], check=True, capture_output=True, text=True)
    return json.loads(result.stdout)


def test_build_without_openmp_reports_serial(tmp_path):
    info = build(tmp_path, OPRD_WITH_OPENMP="OFF")
    assert info["openmp"] == {"enabled": False, "version": 0, "max_threads": 1}
    assert "base" in info["kernel_variants"]
    assert info["cuda"]["compiled"] is False and info["cuda"]["requested"] is False


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no CUDA compiler on this machine")
def test_build_with_cuda_compiles_the_cuda_sources(tmp_path):
    info = build(tmp_path, OPRD_WITH_CUDA="ON")
    cuda = info["cuda"]
    assert cuda["requested"] is True and cuda["compiled"] is True
    assert cuda["runtime_version"] >= 11000 and cuda["compiler_version"]
    assert cuda["architectures"] == "80,90"

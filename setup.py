"""Build oprd_kernels._C from csrc/ by driving CMake with the ninja generator.

Metadata lives in pyproject.toml; this file only adds the CMake-built extension. Environment switches:
  OPRD_WITH_CUDA=1     also compile the CUDA sources (needs a CUDA compiler; off by default)
  OPRD_WITH_OPENMP=0   build without OpenMP even when the compiler has it
  OPRD_BUILD_TYPE      CMake build type (default Release)
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    """An extension whose sources are built by CMakeLists.txt in `source_dir`, not by setuptools."""

    def __init__(self, name: str, source_dir: Path) -> None:
        super().__init__(name, sources=[])
        self.source_dir = str(source_dir)


def _tool(module_name: str, binary: str) -> str:
    """Path of `binary`, preferring the copy shipped by the PyPI package `module_name` (a build requirement)."""
    try:
        module = __import__(module_name)
        candidate = Path(getattr(module, "BIN_DIR", getattr(module, "CMAKE_BIN_DIR", ""))) / binary
        if candidate.is_file():
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which(binary)
    if found is None:
        raise RuntimeError(f"building oprd_kernels._C needs `{binary}`; install it with `pip install {module_name}`")
    return found


def _flag(name: str, default: str) -> str:
    value = os.environ.get(name, default).strip().lower()
    if value not in {"0", "1", "on", "off", "true", "false"}:
        raise ValueError(f"{name} must be 0/1/on/off/true/false, got {value!r}")
    return "ON" if value in {"1", "on", "true"} else "OFF"


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, CMakeExtension):
            return super().build_extension(ext)
        import pybind11

        ext_path = Path(self.get_ext_fullpath(ext.name)).resolve()
        build_dir = Path(self.build_temp).resolve() / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        configure = [
            _tool("cmake", "cmake"),
            "-S", ext.source_dir,
            "-B", str(build_dir),
            "-G", "Ninja",
            f"-DCMAKE_MAKE_PROGRAM={_tool('ninja', 'ninja')}",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('OPRD_BUILD_TYPE', 'Release')}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={ext_path.parent}",
            f"-DOPRD_EXTENSION_FILENAME={ext_path.name}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DOPRD_WITH_CUDA={_flag('OPRD_WITH_CUDA', '0')}",
            f"-DOPRD_WITH_OPENMP={_flag('OPRD_WITH_OPENMP', '1')}",
        ]
        subprocess.run(configure, check=True)
        jobs = ["--parallel", str(self.parallel)] if self.parallel else []
        subprocess.run([_tool("cmake", "cmake"), "--build", str(build_dir), *jobs], check=True)


setup(ext_modules=[CMakeExtension("oprd_kernels._C", ROOT)], cmdclass={"build_ext": CMakeBuild})

"""Every Python package in the source tree ships: a `pip install .` wheel lists them explicitly in pyproject.toml."""

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_directory_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    roots = {name: ROOT / path for name, path in config["package-dir"].items()}
    found = set()
    for top, directory in roots.items():
        for init in directory.rglob("__init__.py"):
            relative = init.parent.relative_to(directory)
            found.add(".".join([top, *relative.parts]))
    assert found == listed, f"missing from pyproject: {sorted(found - listed)}; stale: {sorted(listed - found)}"


def test_no_source_file_is_ignored_by_git():
    """A source file that .gitignore matches exists here but not in a clone (CI, a user's checkout): `runs/`, meant for
    run directories, once hid the new python/oprd/runs/ package."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing can be ignored")
    ignored = subprocess.run(["git", "ls-files", "--others", "--ignored", "--exclude-standard", "python",
                              "oprd_kernels", "csrc", "tests", "benchmarks", "examples", "scripts"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    sources = [f for f in ignored if f.endswith((".py", ".cpp", ".h", ".cu", ".sh")) and "__pycache__" not in f]
    assert not sources, f".gitignore hides source files (they would be missing from a clone): {sources}"

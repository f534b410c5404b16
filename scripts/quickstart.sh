#!/usr/bin/env bash
# Fresh CPU machine → a solved problem: install, prepare the bundled tiny model, start the local
# vLLM servers (System 1 and System 2), and solve a sample problem with SCALE.
# The tiny model cannot do arithmetic: expect a wrong answer; the point is the whole pipeline.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
scale servers up
scale solve "${1:-Find the sum of all positive divisors of 36.}"

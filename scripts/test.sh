#!/usr/bin/env bash
# Set up everything the tests need on a fresh machine and run the whole suite, including the
# integration tests against a real local vLLM server (started and stopped by the tests).
# Extra arguments go to pytest, e.g. `./scripts/test.sh -m "not vllm"`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
export SCALE_REQUIRE_VLLM=${SCALE_REQUIRE_VLLM:-1}
python -m pytest "$@"

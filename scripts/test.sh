#!/usr/bin/env bash
# Set up everything the tests need on a fresh machine and run the whole suite, including the
# integration tests against a real local vLLM server (started and stopped by the tests).
# Extra arguments go to pytest, e.g. `./scripts/test.sh -m "not vllm"`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
# A real PostgreSQL server for tests/test_postgres.py (the tests make a throwaway cluster with its
# initdb/pg_ctl). Debian's package; policy-rc.d exiting 101 stops the package from starting its own cluster.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing Debian's postgresql (server binaries for the tests; its own cluster is not started)"
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql
        rm -f /usr/sbin/policy-rc.d
    else
        echo "PostgreSQL server binaries not found and not root: the PostgreSQL tests will skip (or fail with SCALE_REQUIRE_POSTGRES)"
    fi
fi
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null; then
    export SCALE_REQUIRE_POSTGRES=${SCALE_REQUIRE_POSTGRES:-1}  # present: a PostgreSQL test that cannot start fails
fi
# Headless Chromium for tests/integration/test_ui_browser.py (`scale ui` in a real browser), driven by
# Selenium through Debian's chromedriver: no browser is downloaded when the tests run.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing Debian's chromium and chromium-driver (the browser test of scale ui)"
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver
    else
        echo "chromium/chromedriver not found and not root: the browser test will skip (or fail with SCALE_REQUIRE_BROWSER)"
    fi
fi
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    export SCALE_REQUIRE_BROWSER=${SCALE_REQUIRE_BROWSER:-1}  # present: the browser test must run, not skip
fi
export SCALE_REQUIRE_VLLM=${SCALE_REQUIRE_VLLM:-1} SCALE_REQUIRE_RAY=${SCALE_REQUIRE_RAY:-1}  # installed above: their tests must run, not skip
python -m pytest "$@"

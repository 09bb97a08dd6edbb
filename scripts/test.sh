#!/usr/bin/env bash
# Create the environment (once) and run the whole test suite.
#   ./scripts/test.sh            all tests
#   ./scripts/test.sh -k topk    extra arguments go to pytest
# Tests run in one worker per core (pytest-xdist; PYTEST_WORKERS=0 runs them in this
# process, PYTEST_WORKERS=N in N workers).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
# JAX must not take 75% of a GPU per worker.
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"
# One compilation cache for the run's workers and the subprocesses they start: many
# tests compile the same steps, and a compiled program is found by its HLO, options
# and devices, so what it returns is what a compile would give. Fresh each run (the
# suite's time is a cold cache's), removed after.
cache="$(mktemp -d "${TMPDIR:-/tmp}/jaxsae-test-cache.XXXXXX")"
trap 'rm -rf "$cache"' EXIT
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$cache}"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0.2}"
"$VENV/bin/python" -m pytest -n "${PYTEST_WORKERS:-auto}" "$@"

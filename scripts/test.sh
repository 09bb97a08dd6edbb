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
exec "$VENV/bin/python" -m pytest -n "${PYTEST_WORKERS:-auto}" "$@"

#!/usr/bin/env bash
# Create the environment (once) and run the whole test suite.
#   ./scripts/test.sh            all tests
#   ./scripts/test.sh -k topk    extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
exec "$VENV/bin/python" -m pytest "$@"

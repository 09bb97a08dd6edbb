#!/usr/bin/env bash
# Create the environment (once) and train: ./scripts/train.sh --preset mnist-topk
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
exec "$VENV/bin/python" scripts/train.py "$@"

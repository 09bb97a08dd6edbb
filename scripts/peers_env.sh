#!/usr/bin/env bash
# Make .peers-venv (or $PEERS_VENV): the peer SAE trainers that scripts/bench_sae.py
# compares against (SAELens, EleutherAI's sparsify), with numpy and the CPU torch build.
# Separate from .venv so the peers' dependency pins never touch the project's; the
# project itself is not installed there. Run it (bash scripts/peers_env.sh); it does
# the work once (a stamp file, as scripts/env.sh).
#
# torch goes in first and stays on every later command line, so the peers' dependency
# on torch is met by the CPU build on disk instead of a multi-GB CUDA wheel. The latest
# releases install with torch 2.13.0 (checked: sae-lens 6.54.12, eai-sparsify 1.3.3).
# Do not add dictionary-learning here: its nnsight dependency pulls torchvision from
# PyPI, whose compiled ops do not load against torch 2.13.0+cpu, and transformers (so
# sparsify) then fails to import.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PEERS_VENV="${PEERS_VENV:-.peers-venv}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
SAE_LENS_SPEC="${SAE_LENS_SPEC:-sae-lens>=6,<7}"
SPARSIFY_SPEC="${SPARSIFY_SPEC:-eai-sparsify}"
stamp="$PEERS_VENV/.installed-$(sha256sum scripts/peers_env.sh | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    echo "setting up $PEERS_VENV (once) ..." >&2
    python3 -m venv "$PEERS_VENV"
    "$PEERS_VENV/bin/python" -m pip install -q --upgrade pip
    "$PEERS_VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION" numpy
    "$PEERS_VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION" numpy \
        "$SAE_LENS_SPEC" "$SPARSIFY_SPEC"
    "$PEERS_VENV/bin/python" - "$TORCH_VERSION" <<'PY'
import sys

import torch

want = sys.argv[1]
if not torch.__version__.startswith(want) or torch.version.cuda is not None:
    sys.exit(f"torch {torch.__version__} (cuda {torch.version.cuda}) replaced {want} CPU")
import sae_lens  # noqa: F401  (each peer imports: no broken dependency)
import sparsify  # noqa: F401
PY
    rm -f "$PEERS_VENV"/.installed-* && touch "$stamp"
fi

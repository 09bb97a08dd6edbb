# Sourced by scripts/*.sh: make .venv (or $VENV) hold the project and its dependencies.
# torch is pinned to the CPU build on disk first, so installing the project never pulls
# a multi-GB CUDA wheel; on a GPU machine install torch and jax[cuda12] yourself instead.
VENV="${VENV:-.venv}"
stamp="$VENV/.installed-$(cat pyproject.toml scripts/env.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    echo "setting up $VENV (once) ..." >&2
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
    "$VENV/bin/python" -m pip install -q -e ".[test]"
    rm -f "$VENV"/.installed-* && touch "$stamp"
fi

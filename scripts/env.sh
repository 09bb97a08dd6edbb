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
    # torch stays on the command line so no dependency replaces the CPU build.
    "$VENV/bin/python" -m pip install -q "torch==${TORCH_VERSION:-2.13.0}" -e ".[test]"
    # dictionary-learning's nnsight pulls in torchvision, whose wheel does not always
    # load beside a CPU torch ("operator torchvision::nms does not exist"), and
    # transformers imports torchvision when it is there. Nothing here uses it: remove
    # it when it does not import.
    if ! "$VENV/bin/python" -c "import torchvision" >/dev/null 2>&1; then
        "$VENV/bin/python" -m pip uninstall -q -y torchvision
    fi
    rm -f "$VENV"/.installed-* && touch "$stamp"
fi

"""The shared package's rooms: imports run one way, the library writes nothing into
the repository, and the framework is picked in one place (saecommon.frameworks)."""

import inspect
import pathlib
import subprocess
import sys

import pytest

from saecommon import frameworks
from saecommon.config import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODULES = sorted(
    p.stem for p in (ROOT / "saecommon").glob("*.py") if p.stem != "__init__"
)
TRAINING_SIDE = ("recorder", "schedules", "layerwise", "cli", "frameworks")
EVALUATION_SIDE = ("metrics", "probe", "noise", "evaluation", "report")


def _loaded_after(code: str) -> set[str]:
    """The modules loaded by a fresh interpreter that runs ``code``."""
    run = subprocess.run(
        [sys.executable, "-c", code + "; import sys; print(' '.join(sys.modules))"],
        check=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    return set(run.stdout.split())


def test_the_shared_package_loads_without_either_framework():
    imports = "; ".join(f"import saecommon.{name}" for name in MODULES)
    loaded = _loaded_after(imports)
    for package in ("jax", "torch", "jaxsae", "torchsae", "flax", "optax"):
        assert package not in loaded, f"importing saecommon loads {package}"


@pytest.mark.parametrize("name", EVALUATION_SIDE)
def test_the_evaluation_never_imports_the_training_side(name):
    loaded = _loaded_after(f"import saecommon.{name}")
    pulled = sorted(m for m in TRAINING_SIDE if f"saecommon.{m}" in loaded)
    assert not pulled, f"saecommon.{name} imports {pulled}"


def test_nothing_in_the_library_finds_the_repository():
    """Paths into docs/ or the README belong to scripts/, never to the library."""
    for name in MODULES:
        source = (ROOT / "saecommon" / f"{name}.py").read_text()
        assert "__file__" not in source, f"saecommon/{name}.py resolves __file__"


def test_frameworks_pick_each_package_with_the_same_entry_points():
    import jax
    import torch

    import jaxsae
    import jaxsae.evaluation
    import jaxsae.layerwise
    import jaxsae.training
    import torchsae
    import torchsae.training

    jax_fw = frameworks.load("jax")  # JAX's default device, the GPU where there is one
    assert jax_fw.package is jaxsae and jax_fw.device == jax.default_backend()
    assert jax_fw.train is jaxsae.training.train
    assert jax_fw.pretrain is jaxsae.layerwise.pretrain
    assert jax_fw.evaluate_checkpoint is jaxsae.evaluation.evaluate_checkpoint
    assert jax_fw.init_state_dict is jaxsae.training.init_state_dict

    torch_fw = frameworks.load("torch")  # the GPU where torch sees one, else the CPU
    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert torch_fw.package is torchsae and torch_fw.device == device
    assert torch_fw.train.func is torchsae.training.train
    assert torch_fw.train.keywords == {"device": device}
    assert frameworks.load("torch", "meta").evaluate_checkpoint.keywords == {
        "device": "meta"
    }
    # the bound entry points take the same arguments in both packages
    # (jax's train also takes a mesh: data parallel over its local devices)
    for entry in ("train", "pretrain", "evaluate_checkpoint", "init_state_dict"):
        a = [
            p
            for p in inspect.signature(getattr(jax_fw, entry)).parameters
            if p != "mesh"
        ]
        b = [
            p.name
            for p in inspect.signature(getattr(torch_fw, entry)).parameters.values()
            if p.name not in ("device", "compile")
        ]
        assert a == b, f"{entry}: jax {a} vs torch {b}"

    with pytest.raises(ConfigError, match="unknown framework 'mxnet'"):
        frameworks.load("mxnet")


def test_no_script_or_test_picks_a_framework_by_hand():
    """`if framework == "jax": from jaxsae ...` lives in saecommon.frameworks only."""
    for path in [*(ROOT / "scripts").glob("*.py"), ROOT / "conftest.py"]:
        source = path.read_text()
        assert '"cuda" if' not in source, path.name  # torch's default device
        assert "from torchsae.training import train" not in source, path.name
        assert "from jaxsae.training import train" not in source, path.name

"""The framework a command runs with, chosen in one place: scripts/train.py,
evaluate.py and reproduce.py and the tests' fixtures ask :func:`load` for jaxsae's or
torchsae's entry points, bound to a device.

This is the one module of saecommon that names the model packages. It imports the
chosen one when asked, never at import time: saecommon loads without either, and the
packages still never import each other.

Devices: JAX places work on its default device (a GPU when it sees one); torch's
functions take a device, which defaults here to "cuda" when torch sees a GPU and "cpu"
otherwise. (torchsae's own functions default to "cpu", as torch's modules do.)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from types import ModuleType

from saecommon.config import check_choice

FRAMEWORKS = ("jax", "torch")


@dataclasses.dataclass(frozen=True)
class Framework:
    """One package's entry points, with the same signatures in both (torch's bound to
    ``device``)."""

    name: str
    """"jax" or "torch"."""
    package: ModuleType
    """jaxsae or torchsae."""
    device: str
    """Where it runs: torch's device, or JAX's default backend ("cpu", "gpu", ...)."""
    train: Callable
    """``train(run, out_dir, *, resume, data, progress, init, frozen) -> history``."""
    pretrain: Callable
    """``pretrain(run, out_dir, *, resume, data, progress, init) -> histories``."""
    evaluate_checkpoint: Callable
    """``evaluate_checkpoint(path, out_dir, *, overrides, probe, noise_seed,
    batch_size, progress) -> (evaluation, source, out_dir)``."""
    init_state_dict: Callable
    """``init_state_dict(config, seed)``: the portable initial weights ``train`` draws."""


def load(name: str, device: str | None = None) -> Framework:
    """The entry points of ``name`` ("jax" or "torch"). ``device`` is torch's (default:
    "cuda" if torch sees a GPU, else "cpu"); JAX uses its default device and takes no
    device here."""
    check_choice("framework", name, FRAMEWORKS)
    if name == "jax":
        import jax

        import jaxsae
        from jaxsae import evaluation, layerwise, training

        return Framework(
            "jax",
            jaxsae,
            jax.default_backend(),
            training.train,
            layerwise.pretrain,
            evaluation.evaluate_checkpoint,
            training.init_state_dict,
        )
    import torch

    import torchsae
    from torchsae import evaluation, layerwise, training

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return Framework(
        "torch",
        torchsae,
        device,
        functools.partial(training.train, device=device),
        functools.partial(layerwise.pretrain, device=device),
        functools.partial(evaluation.evaluate_checkpoint, device=device),
        training.init_state_dict,
    )

"""The framework a command runs with, chosen in one place: scripts/train.py,
evaluate.py and reproduce.py and the tests' fixtures ask :func:`load` for jaxsae's or
torchsae's entry points, bound to a device.

This is the one module of saecommon that names the model packages. It imports the
chosen one when asked, never at import time: saecommon loads without either, and the
packages still never import each other.

Devices: ``device`` means the same for both frameworks: "cpu", "cuda" (or "gpu"),
"cuda:1", ... Left out, it is the framework's best: JAX's default device (a GPU when it
sees one); for torch "cuda" when torch sees a GPU, else "cpu". JAX's entry points run
under ``jax.default_device`` of the chosen device; torch's take it as ``device``.
(torchsae's own functions default to "cpu", as torch's modules do.) A device the
framework cannot reach is a :class:`DeviceError`, said in one line.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from collections.abc import Callable
from types import ModuleType, SimpleNamespace

from saecommon.config import check_choice

FRAMEWORKS = ("jax", "torch")


class DeviceError(ValueError):
    """The framework cannot run on the device asked for."""


LAUNCHERS = {
    "torch": ("WORLD_SIZE", "torchrun"),
    "jax": ("JAX_COORDINATOR_ADDRESS", "jax.distributed"),
}
"""The environment variable by which each framework's launcher makes a process one
of several (torchrun sets WORLD_SIZE; jaxsae.distributed reads
JAX_COORDINATOR_ADDRESS), and the launcher's name."""


def _launched_by(name: str, environ) -> bool:
    value = environ.get(LAUNCHERS[name][0], "")
    return value not in ("", "1") if name == "torch" else bool(value)


def check_launcher(name: str, environ=os.environ) -> None:
    """DeviceError when the other framework's launcher started this process as one
    of several and ``name``'s did not: each process would train alone, all of them
    writing one run folder."""
    other = "torch" if name == "jax" else "jax"
    if _launched_by(other, environ) and not _launched_by(name, environ):
        variable, launcher = LAUNCHERS[other]
        raise DeviceError(
            f"this process is one of several started by {launcher} "
            f"({variable}={environ[variable]}), which {name} does not join: each "
            f"would train alone into the same folder. Train with --framework "
            f"{other}, or start {name}'s processes with {LAUNCHERS[name][1]} "
            f"({LAUNCHERS[name][0]})"
        )


def parse_device(device: str) -> tuple[str, int | None]:
    """ "cuda:1" -> ("cuda", 1); "gpu" -> ("cuda", None); "cpu" -> ("cpu", None)."""
    kind, _, index = device.strip().lower().partition(":")
    kind = {"gpu": "cuda"}.get(kind, kind)
    known = ("cpu", "cuda", "tpu", "mps", "meta")  # meta: torch's shape-only device
    if kind not in known or (index and not index.isdigit()):
        raise DeviceError(
            f"unknown device {device!r}: use cpu, cuda (or gpu), cuda:N, tpu or mps"
        )
    return kind, int(index) if index else None


def _jax_device(device: str):
    import jax

    kind, index = parse_device(device)
    platform = {"cuda": "gpu"}.get(kind, kind)
    try:
        devices = jax.devices(platform)
    except RuntimeError:
        seen = sorted({d.platform for d in jax.devices()})
        raise DeviceError(
            f"JAX cannot run on {device!r}: it has no {platform} backend here (it "
            f"sees {', '.join(seen)}; a GPU needs the jax[cuda12] install)"
        ) from None
    if index is not None and index >= len(devices):
        raise DeviceError(
            f"JAX sees {len(devices)} {platform} device(s), so there is no {device!r}"
        )
    return devices[index or 0]


def _torch_device(device: str) -> str:
    import torch

    kind, index = parse_device(device)
    if kind == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else "no GPU"
            raise DeviceError(
                f"torch cannot run on {device!r}: it sees no CUDA GPU (torch "
                f"{torch.__version__}, {build})"
            )
        if index is not None and index >= torch.cuda.device_count():
            raise DeviceError(
                f"torch sees {torch.cuda.device_count()} CUDA GPU(s), so there is no "
                f"{device!r}"
            )
    elif kind == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"torch cannot run on {device!r}: MPS is not available")
    elif kind == "tpu":
        raise DeviceError("torch does not run on a TPU here; use --framework jax")
    return kind if index is None else f"{kind}:{index}"


def _on_device(function: Callable, device) -> Callable:
    """``function`` run with JAX's default device set to ``device``."""

    @functools.wraps(function)
    def run(*args, **kwargs):
        import jax

        with jax.default_device(device):
            return function(*args, **kwargs)

    return run


def _bound_backend(backend: ModuleType, device) -> SimpleNamespace:
    """``backend``'s attributes, its functions run on JAX device ``device``."""
    return SimpleNamespace(
        **{
            name: _on_device(value, device) if inspect.isfunction(value) else value
            for name, value in vars(backend).items()
            if not name.startswith("_")
        }
    )


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
    train_dictionary: Callable = None
    """``train_dictionary(run, out_dir, *, resume, overwrite, progress) -> summary``
    for a dictionary SAE (saecommon.dict_run.DictRun)."""
    dictionary_backend: Callable = None
    """``dictionary_backend()``: the functions saecommon/dict_run.py's loop and the
    dictionary evaluation call, bound to the device."""
    main_process: bool = True
    """False in all but process 0 of several (torchrun, jax.distributed): the one
    that writes files and speaks."""
    devices: int = 1
    """The devices a command trains on by default: for jax without ``device``, every
    local device of its default backend (data parallel, ``default_mesh``); else one
    (torch: one per process)."""

    def default_mesh(self, given: tuple[int, int] | None) -> tuple[int, int] | None:
        """The (data, model) mesh a jax command trains on: ``given``, else data
        parallel over ``devices``; None (no mesh) for one device. Under
        jax.distributed the trainers' own default (every device of every process)
        applies."""
        mesh = given or (self.devices, 1)
        return None if mesh == (1, 1) else mesh


def load(name: str, device: str | None = None) -> Framework:
    """The entry points of ``name`` ("jax" or "torch") on ``device`` ("cpu", "cuda",
    "cuda:1", ...; default: the framework's best, see the module docstring). A device
    it cannot reach is a DeviceError."""
    check_choice("framework", name, FRAMEWORKS)
    check_launcher(name)
    if name == "jax":
        import jax

        import jaxsae
        from jaxsae import (
            dictionary_training,
            distributed,
            evaluation,
            layerwise,
            training,
        )

        # one of several processes (JAX_COORDINATOR_ADDRESS): join them first
        distributed.init_from_env()
        if device is None:
            return Framework(
                "jax",
                jaxsae,
                jax.default_backend(),
                training.train,
                layerwise.pretrain,
                evaluation.evaluate_checkpoint,
                training.init_state_dict,
                dictionary_training.train,
                dictionary_training.backend,
                distributed.is_writer(),
                # several processes: the trainers span every process's devices
                jax.local_device_count() if jax.process_count() == 1 else 1,
            )
        chosen = _jax_device(device)
        return Framework(
            "jax",
            jaxsae,
            chosen.platform if ":" not in device else f"{chosen.platform}:{chosen.id}",
            _on_device(training.train, chosen),
            _on_device(layerwise.pretrain, chosen),
            _on_device(evaluation.evaluate_checkpoint, chosen),
            _on_device(training.init_state_dict, chosen),
            _on_device(dictionary_training.train, chosen),
            functools.partial(_bound_backend, dictionary_training.backend(), chosen),
            distributed.is_writer(),
        )
    import torch

    import torchsae
    from torchsae import (
        dictionary_training,
        distributed,
        evaluation,
        layerwise,
        training,
    )

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        device = _torch_device(device)
    # one of several processes (torchrun): join their group, one GPU each
    device = distributed.init_from_env(device)
    return Framework(
        "torch",
        torchsae,
        device,
        functools.partial(training.train, device=device),
        functools.partial(layerwise.pretrain, device=device),
        functools.partial(evaluation.evaluate_checkpoint, device=device),
        training.init_state_dict,
        functools.partial(dictionary_training.train, device=device),
        functools.partial(dictionary_training.backend, device=device),
        distributed.world().rank == 0,
    )

"""Shared test fixtures: a framework adapter so one hand-computed test checks both
packages, float64 scoping for JAX, and the GPU switch."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from types import ModuleType

import jax
import numpy as np
import pytest
import torch

from saecommon import frameworks
from saecommon.data import PreparedData


@dataclasses.dataclass(frozen=True)
class Framework:
    name: str
    pkg: ModuleType
    asarray: Callable  # numpy -> framework array (keeps dtype)
    numpy: Callable  # framework array -> numpy
    grad: Callable  # (f: array -> scalar, x: numpy) -> numpy gradient
    x64: Callable  # context manager that makes float64 available
    init: Callable  # (config, seed) -> numpy state dict, initialised in this framework
    forward: Callable  # (state_dict, config, x numpy, train) -> AutoencoderOutput


def _jax_grad(f, x):
    return np.asarray(jax.grad(f)(jax.numpy.asarray(x)))


def _torch_grad(f, x):
    t = torch.from_numpy(np.array(x)).requires_grad_(True)
    f(t).backward()
    return t.grad.numpy()


def _jax_init(config, seed):
    import jaxsae

    x = jax.numpy.zeros((1, config.input_dim))
    return jaxsae.to_state_dict(
        jaxsae.Autoencoder(config).init(jax.random.key(seed), x)["params"]
    )


def _jax_forward(state_dict, config, x, train=False):
    import jaxsae

    params = jaxsae.from_state_dict(state_dict, config)
    return jaxsae.Autoencoder(config).apply(
        {"params": params}, jax.numpy.asarray(x), train=train
    )


def _torch_init(config, seed):
    import torchsae

    return torchsae.to_state_dict(
        torchsae.Autoencoder(config, generator=torch.Generator().manual_seed(seed))
    )


def _torch_forward(state_dict, config, x, train=False):
    import torchsae

    return torchsae.from_state_dict(state_dict, config)(
        torch.from_numpy(np.array(x)), train=train
    )


def _framework(name: str) -> Framework:
    """The test adapter of ``name``'s package (picked by saecommon.frameworks)."""
    pkg = frameworks.load(name, "cpu").package
    if name == "jax":
        return Framework(
            "jax",
            pkg,
            jax.numpy.asarray,
            np.asarray,
            _jax_grad,
            lambda: jax.enable_x64(True),
            _jax_init,
            _jax_forward,
        )
    return Framework(
        "torch",
        pkg,
        lambda a: torch.from_numpy(np.array(a)),
        lambda t: t.detach().cpu().numpy(),
        _torch_grad,
        contextlib.nullcontext,
        _torch_init,
        _torch_forward,
    )


@pytest.fixture(params=frameworks.FRAMEWORKS)
def fw(request) -> Framework:
    """Each test that takes ``fw`` runs once against jaxsae and once against torchsae."""
    with _framework(request.param).x64():
        yield _framework(request.param)


def gpu_pair_available() -> tuple[bool, str]:
    """Whether both frameworks see a GPU, and if not, which one does not."""
    try:
        jax_gpu = bool(jax.devices("gpu"))
    except RuntimeError:
        jax_gpu = False
    torch_gpu = torch.cuda.is_available()
    if jax_gpu and torch_gpu:
        return True, ""
    missing = [n for n, ok in (("JAX", jax_gpu), ("torch", torch_gpu)) if not ok]
    return False, f"no GPU visible to {' and '.join(missing)}"


def reference_mask(x: np.ndarray, k: int) -> np.ndarray:
    """The tie rule, stated plainly: rank = #strictly larger + #equal at a lower index."""
    larger = (x[:, None, :] > x[:, :, None]).sum(-1)
    n = x.shape[1]
    lower = np.tril(np.ones((n, n), bool), -1)  # lower[i, j]: j < i
    equal_before = ((x[:, None, :] == x[:, :, None]) & lower).sum(-1)
    return larger + equal_before < k


def synthetic_data(n_train=320, n_test=70, seed=0) -> PreparedData:
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n_train + n_test, 16)).astype(np.float32)
    y = rng.integers(0, 10, n_train + n_test)
    return PreparedData(
        x[:n_train],
        y[:n_train],
        x[n_train:],
        y[n_train:],
        x[n_train:],
        y[n_train:],
        (0.0, 1.0),
        (4, 4),
        None,
        True,
    )

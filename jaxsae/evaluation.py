"""Evaluation of a jaxsae model: the forward pass over a dataset in evaluation mode.

Everything else (what is measured, the formulas, the probe, the noise, the report)
is saecommon's (evaluation.py and the modules it names), shared with
torchsae.evaluation, which has the same public names.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsae.checkpoint import from_state_dict
from jaxsae.models import Autoencoder
from saecommon import evaluation
from saecommon.config import SAEConfig, check_int
from saecommon.data import PreparedData
from saecommon.evaluation import Encoded, Evaluation, Source
from saecommon.noise import NOISE_SEED, Noise

FRAMEWORK = "jax"


@functools.lru_cache(maxsize=16)
def _jitted_forward(config: SAEConfig):
    """One jitted evaluation-mode forward per config, reused by every call of
    ``encode`` (a fresh closure would compile again)."""
    model = Autoencoder(config)

    def forward(params, x):
        out = model.apply({"params": params}, x, train=False)
        return out.reconstruction, out.logits, out.code

    return jax.jit(forward)


def encode(
    params,
    config: SAEConfig,
    x: np.ndarray,
    *,
    batch_size: int = 1000,
    code_only: bool = False,
) -> Encoded:
    """Run the model over ``x`` [n, input] in batches, in evaluation mode (no lifetime
    top-k, no noise): numpy reconstruction and logits [n, input] (None with
    ``code_only``: they are never copied off the device) and code [n, code].

    Every batch is ``batch_size`` rows, the last one zero-padded (samples are
    independent in evaluation mode), so each config compiles once. ``x`` must be a
    finite float array with n >= 1 (saecommon.evaluation.check_inputs)."""
    check_int("batch_size", batch_size, minimum=1)
    x = evaluation.check_inputs(x, config)
    return _encode(params, config, x, batch_size, code_only)


def _encode(params, config: SAEConfig, x: np.ndarray, batch_size: int, code_only):
    """``encode`` on an already checked ``x`` (evaluate_with checks its data once)."""
    n = len(x)
    forward = _jitted_forward(config)
    parts = []
    for start in range(0, n, batch_size):
        batch = x[start : start + batch_size]
        kept = len(batch)
        if kept < batch_size:
            pad = np.zeros((batch_size - kept,) + x.shape[1:], x.dtype)
            batch = np.concatenate([batch, pad])
        out = forward(params, jnp.asarray(batch))
        out = (out[2],) if code_only else out
        parts.append([np.asarray(a)[:kept] for a in jax.device_get(out)])
    arrays = [np.concatenate(part) for part in zip(*parts)]
    return Encoded(None, None, arrays[0]) if code_only else Encoded(*arrays)


def evaluate_model(
    params,
    config: SAEConfig,
    data: PreparedData,
    *,
    probe: bool = True,
    noise: Noise | None = None,
    batch_size: int = 1000,
    progress: bool = False,
) -> Evaluation:
    """The full evaluation (saecommon.evaluation.evaluate_with) of the model
    ``(params, config)`` on ``data``: reconstruction and sparsity metrics on the test
    split, denoising metrics with ``noise``, the code and pixel probes with ``probe``."""
    check_int("batch_size", batch_size, minimum=1)
    return evaluation.evaluate_with(
        lambda x, code_only: _encode(params, config, x, batch_size, code_only),
        config,
        data,
        framework=FRAMEWORK,
        probe=probe,
        noise=noise,
        progress=progress,
    )


def evaluate_checkpoint(
    path: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    probe: bool = True,
    noise_seed: int = NOISE_SEED,
    batch_size: int | None = None,
    progress: bool = True,
    source_options: Mapping[str, Any] | None = None,
) -> tuple[Evaluation, Source, str]:
    """Evaluate a run directory or checkpoint file on its run's data (with its run's
    noise if it is a denoising run) and write metrics.json and the pictures to
    ``out_dir`` (default: eval-jax beside the checkpoint); ``overrides`` replace
    evaluation fields of the run's TrainConfig (dataset, normalize, noise, ...);
    ``path`` may be a model in another library's format (``source_options``: format,
    fields, hookpoint of saecommon.foreign.read). See
    saecommon.evaluation.evaluate_source. Returns (evaluation, source, out_dir)."""

    def evaluate(state_dict, config, data, **options):
        return evaluate_model(
            from_state_dict(state_dict, config), config, data, **options
        )

    return evaluation.evaluate_source(
        path,
        out_dir,
        FRAMEWORK,
        evaluate,
        overrides=overrides,
        probe=probe,
        noise_seed=noise_seed,
        batch_size=batch_size,
        progress=progress,
        source_options=source_options,
    )

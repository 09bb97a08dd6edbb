"""Evaluation of a torchsae model: the forward pass over a dataset in evaluation mode.

Everything else (what is measured, the formulas, the probe, the noise, the report)
is saecommon's (evaluation.py and the modules it names), shared with
jaxsae.evaluation, which has the same public names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from saecommon import evaluation
from saecommon.config import check_int
from saecommon.data import PreparedData
from saecommon.evaluation import Encoded, Evaluation, Source
from saecommon.noise import NOISE_SEED, Noise
from torchsae.checkpoint import from_state_dict
from torchsae.models import Autoencoder

FRAMEWORK = "torch"


def encode(
    model: Autoencoder,
    x: np.ndarray,
    *,
    batch_size: int = 1000,
    code_only: bool = False,
) -> Encoded:
    """Run the model over ``x`` [n, input] in batches, in evaluation mode (no lifetime
    top-k, no noise) on the model's device and in its dtype: numpy reconstruction and
    logits [n, input] (None with ``code_only``) and code [n, code]. ``x`` must be a
    finite float array with n >= 1 (saecommon.evaluation.check_inputs)."""
    check_int("batch_size", batch_size, minimum=1)
    x = evaluation.check_inputs(x, model.config)
    return _encode(model, x, batch_size, code_only)


@torch.no_grad()
def _encode(model: Autoencoder, x: np.ndarray, batch_size: int, code_only: bool):
    """``encode`` on an already checked ``x`` (evaluate_with checks its data once)."""
    weight = next(model.parameters())
    parts = []
    for start in range(0, len(x), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size]))
        out = model(batch.to(weight.device, weight.dtype), train=False)
        kept = (out.code,) if code_only else (out.reconstruction, out.logits, out.code)
        parts.append([t.cpu().numpy() for t in kept])
    arrays = [np.concatenate(part) for part in zip(*parts)]
    return Encoded(None, None, arrays[0]) if code_only else Encoded(*arrays)


def evaluate_model(
    model: Autoencoder,
    data: PreparedData,
    *,
    probe: bool = True,
    noise: Noise | None = None,
    batch_size: int = 1000,
    progress: bool = False,
) -> Evaluation:
    """The full evaluation (saecommon.evaluation.evaluate_with) of ``model`` on
    ``data``: reconstruction and sparsity metrics on the test split, denoising metrics
    with ``noise``, the code and pixel probes with ``probe``."""
    check_int("batch_size", batch_size, minimum=1)
    return evaluation.evaluate_with(
        lambda x, code_only: _encode(model, x, batch_size, code_only),
        model.config,
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
    device: str = "cpu",
) -> tuple[Evaluation, Source, str]:
    """Evaluate a run directory or checkpoint file on its run's data (with its run's
    noise if it is a denoising run) and write metrics.json and the pictures to
    ``out_dir`` (default: eval-torch beside the checkpoint); ``overrides`` replace
    evaluation fields of the run's TrainConfig (dataset, normalize, noise, ...);
    ``path`` may be a model in another library's format (``source_options``: format,
    fields, hookpoint of saecommon.foreign.read). See
    saecommon.evaluation.evaluate_source. Returns (evaluation, source, out_dir)."""

    def evaluate(state_dict, config, data, **options):
        return evaluate_model(
            from_state_dict(state_dict, config).to(device), data, **options
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

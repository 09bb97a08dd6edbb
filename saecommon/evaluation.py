"""Evaluating a trained sparse autoencoder, framework-neutral (numpy): what the
evaluation measures and on which data. jaxsae.evaluation and torchsae.evaluation only
run the model: each passes its ``encode`` to :func:`evaluate_with`, so the two
packages' numbers can differ only through the codes and reconstructions their models
compute. The formulas are metrics.py's, the probe probe.py's, the noise noise.py's;
report.py writes and prints the result.

What is measured (all over the whole test split):

- Reconstruction metrics are in [0, 1] pixel space (uint8 / 255) whatever the model was
  trained on: a model trained on normalized or [-1, 1] (pixel_scale symmetric) data
  has its reconstruction mapped back with ``PreparedData.to_pixels`` (not clipped).
  ``mse`` is the mean squared error over every pixel of every test image; for a model
  trained on [0, 1] pixels it is the trainer's ``test/recon`` of an mse model.
  ``psnr`` is one dataset-level figure from the pooled mse, not a mean of per-image
  PSNRs.
- ``bce``: for a sigmoid-output model trained on [0, 1] pixels, from the logits
  (the training BCE, never inf); otherwise on the clipped reconstruction
  (``metrics.bce_clipped``). Its minimum is the mean entropy of the targets, not 0,
  since MNIST pixels are not binary.
- ``l0``, ``dead_fraction``, ``constant_fraction`` and the activation frequency of the
  test codes (``metrics.CodeStats``, as the trainers record them per epoch).
- The probe (``probe.fit_probe``): trained on the frozen codes (evaluation mode) of
  the training split (without the run's validation hold-out), accuracy on the test
  split; the same probe on the raw pixels is the baseline (standardization makes it
  the same for normalized and unnormalized runs).
- Denoising (``noise.Noise``): the test inputs corrupted once, in numpy with a fixed
  seed, by the trainers' rule in the model's input space (a symmetric run's std acts
  on [-1, 1] pixels); ``noisy_psnr``, ``denoised_psnr`` and ``denoised_mse`` against
  the clean image, in [0, 1] pixel space.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from saecommon import foreign, rundir
from saecommon.architectures import check_input_shape
from saecommon.checkpoint import CheckpointError, read_checkpoint
from saecommon.config import ConfigError, SAEConfig
from saecommon.data import DataError, PreparedData, check_finite, prepare_data
from saecommon.metrics import (
    BCE_EPS,
    CodeStats,
    bce_clipped,
    bce_from_logits,
    mse,
    psnr,
    psnr_from_mse,
)
from saecommon.noise import NOISE_SEED, Noise
from saecommon.probe import PROBE_L2, PROBE_MAX_ITER, fit_probe
from saecommon.report import default_report_dir, write_report
from saecommon.train_config import DATA_FIELDS, RunConfig, TrainConfig

EVAL_FIELDS = DATA_FIELDS
"""The TrainConfig fields that change an evaluation (and may be overridden for one)."""


class Encoded(NamedTuple):
    """A model's outputs over a dataset in evaluation mode, as numpy, in model space."""

    reconstruction: np.ndarray | None
    """[n, input] after the output activation (None when only the code was asked)."""
    logits: np.ndarray | None
    """[n, input] before the output activation."""
    code: np.ndarray
    """[n, code] after the sparsity layers."""


Encode = Callable[[np.ndarray, bool], Encoded]
"""``encode(x [n, input], code_only) -> Encoded``: one framework's forward pass."""


# --------------------------------------------------------------------------- what to evaluate


@dataclasses.dataclass(frozen=True, eq=False)
class Source:
    """A checkpoint to evaluate and what is known of the run that made it."""

    state_dict: dict[str, np.ndarray]
    """The portable weights (PyTorch names and layouts)."""
    run: RunConfig
    """run.model is the checkpoint's config; run.train says how to prepare the data
    (config.json's, or TrainConfig's defaults for a bare checkpoint), with any
    overrides applied."""
    checkpoint: str | None = None
    """The checkpoint file, if the weights came from one."""
    history: Sequence[dict] = ()
    """The run's metrics.jsonl rows (for the loss curves), if there is one."""


def load_source(
    path: str | os.PathLike,
    overrides: Mapping[str, Any] | None = None,
    source_options: Mapping[str, Any] | None = None,
):
    """A :class:`Source` from a run directory or a checkpoint file, or a model in
    another library's format (saecommon.foreign: detected, or named by
    ``source_options`` = {"format", "fields", "hookpoint"}, the arguments of
    ``foreign.read``), which evaluates as a bare checkpoint.

    A run directory (or a ``model.safetensors`` inside one) brings its config.json, so
    the data is prepared as the run prepared it (dataset, normalize, val_fraction,
    noise); a bare checkpoint gets TrainConfig's defaults (MNIST, unnormalized).
    ``overrides`` replace the ``EVAL_FIELDS`` of that TrainConfig (e.g.
    ``{"dataset": "tfds:fashion_mnist", "normalize": True}``)."""
    path = os.fspath(path)
    model = _foreign_model(path, source_options)
    if model is not None:
        run = RunConfig(model.config, TrainConfig())
        return _with_overrides(
            Source(model.state_dict, run, os.path.abspath(path)), overrides
        )
    if os.path.isdir(path):
        checkpoint = os.path.join(path, rundir.MODEL)
        if not os.path.isfile(checkpoint):
            raise CheckpointError(
                f"{path} has no {rundir.MODEL}: pass a run directory written by "
                "scripts/train.py, a checkpoint file, or a model in another format "
                "(scripts/convert.py lists them)"
            )
    elif os.path.isfile(path):
        checkpoint = path
    else:
        raise CheckpointError(
            f"no checkpoint at {path}: pass a run directory (holding {rundir.MODEL} and "
            f"{rundir.CONFIG}) or a .safetensors checkpoint"
        )
    state_dict, config = read_checkpoint(checkpoint)
    folder = os.path.dirname(os.path.abspath(checkpoint))
    config_path = os.path.join(folder, rundir.CONFIG)
    run, history = RunConfig(config, TrainConfig()), []
    if os.path.basename(checkpoint) == rundir.MODEL and os.path.isfile(config_path):
        run = rundir.read_run_config(folder)
        if run.model != config:
            differ = [
                f"{field.name} {getattr(config, field.name)!r} (config.json "
                f"{getattr(run.model, field.name)!r})"
                for field in dataclasses.fields(SAEConfig)
                if getattr(config, field.name) != getattr(run.model, field.name)
            ]
            raise CheckpointError(
                f"{checkpoint} holds another architecture than {config_path} "
                f"describes: {', '.join(differ)}; put the checkpoint back with its "
                "own run, or copy it out of this run directory and evaluate it alone "
                "(with --dataset/--normalize flags)"
            )
        history = rundir.read_history(folder)
    return _with_overrides(
        Source(state_dict, run, os.path.abspath(checkpoint), history), overrides
    )


def _with_overrides(source: Source, overrides: Mapping[str, Any] | None) -> Source:
    if not overrides:
        return source
    unknown = sorted(set(overrides) - set(EVAL_FIELDS))
    if unknown:
        raise ConfigError(
            f"cannot override {', '.join(unknown)} for an evaluation; only "
            + ", ".join(EVAL_FIELDS)
        )
    run = RunConfig(
        source.run.model, dataclasses.replace(source.run.train, **overrides)
    )
    return dataclasses.replace(source, run=run)


def _foreign_model(path: str, options: Mapping[str, Any] | None):
    """The classic autoencoder at ``path`` if it is in another library's format (or
    ``options`` name one), else None (this project's checkpoint, or nothing there)."""
    if options is None:
        if not os.path.exists(path):
            return None
        try:
            format, _ = foreign.detect(path)
        except foreign.ForeignError:
            if os.path.isdir(path) or path.endswith(".safetensors"):
                return None  # load_source's own message for a run folder or checkpoint
            raise  # says what the file is
        if format == "sae" or (format == "torch" and path.endswith(".safetensors")):
            return None  # ours, or a damaged one of ours: read_checkpoint says which
    model = foreign.read(path, **dict(options or {}))
    if model.kind != "classic":
        raise CheckpointError(
            f"{path} is a dictionary SAE ({model.config.activation}); evaluate it on "
            "activations: scripts/evaluate_sae.py --model PATH --cache DIR "
            "(or scripts/evaluate.py PATH --cache DIR)"
        )
    return model


def check_inputs(x: Any, config: SAEConfig) -> np.ndarray:
    """``x`` as a numpy array, checked where a user's array enters both packages'
    ``encode``, before any batching or padding (so errors give the user's shape):
    ValueError unless it is [n, input_dim] with n >= 1; DataError unless it is
    floating point and finite (a NaN pixel would otherwise give a top-k model an
    all-zero code, silently)."""
    x = np.asarray(x)
    check_input_shape(x.shape, config)
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(
            f"x must be a floating-point array [n, {config.input_dim}] scaled as the "
            f"model's training data, got dtype {x.dtype}"
        )
    check_finite(x, "x")
    return x


def check_data(data: PreparedData, config: SAEConfig, train: bool) -> None:
    """DataError unless the test split (and with ``train`` the training split) is a
    finite [n, input_dim] array with n >= 1 and one label per sample."""
    splits = [("test", data.test, data.test_labels)]
    if train:
        splits.append(("training", data.train, data.train_labels))
    for name, x, y in splits:
        if x.ndim != 2 or x.shape[1] != config.input_dim:
            raise DataError(
                f"the {name} data is {x.shape} but the model takes [n, "
                f"{config.input_dim}]; evaluate on the kind of data the model was "
                "trained on (--dataset/--data-dir)"
            )
        if len(x) == 0 or len(x) != len(y):
            raise DataError(
                f"the {name} data has {len(x)} samples and {len(y)} labels; it needs "
                "at least one sample and one label per sample"
            )
        check_finite(x, f"the {name} data")


# --------------------------------------------------------------------------- evaluation


@dataclasses.dataclass(frozen=True, eq=False)
class Evaluation:
    """What :func:`evaluate_with` measured."""

    metrics: dict[str, float]
    """mse, bce, psnr, l0, dead_fraction, constant_fraction; probe_accuracy,
    probe_train_accuracy, pixel_probe_accuracy, pixel_probe_train_accuracy with the
    probe; noisy_psnr, denoised_psnr, denoised_mse with noise."""
    activation_frequency: np.ndarray
    """[code] share of test samples on which each unit is active."""
    info: dict[str, Any]
    """How it was measured: framework, sample counts, bce_from, probe and noise
    settings, seconds."""
    test: Encoded
    """The model's outputs on the test split (model space)."""
    noisy: np.ndarray | None = None
    """[n_test, input] the noisy test inputs in pixel space (denoising only)."""
    denoised: np.ndarray | None = None
    """[n_test, input] their reconstructions in pixel space (denoising only)."""


def evaluate_with(
    encode: Encode,
    config: SAEConfig,
    data: PreparedData,
    *,
    framework: str,
    probe: bool = True,
    noise: Noise | None = None,
    progress: bool = False,
) -> Evaluation:
    """Evaluate one model, given its framework's ``encode(x, code_only)``: the
    reconstruction and sparsity metrics on ``data.test``, the denoising metrics with
    ``noise``, and with ``probe`` the code probe (trained on ``data.train``) and the
    pixel baseline. See the module docstring for every definition."""
    check_data(data, config, train=probe)
    start = time.perf_counter()
    seconds: dict[str, float] = {}
    test = encode(data.test, False)
    clean = data.to_pixels(data.test)
    recon = data.to_pixels(test.reconstruction)
    from_logits = config.output_activation == "sigmoid" and data.normalization is None
    error = mse(recon, clean)
    metrics = {
        "mse": error,
        "bce": (
            bce_from_logits(test.logits, clean)
            if from_logits
            else bce_clipped(recon, clean)
        ),
        "psnr": psnr_from_mse(error),
    }
    code_stats = CodeStats.of(test.code)
    metrics.update(code_stats.metrics())
    info: dict[str, Any] = {
        "framework": framework,
        "n_test": len(data.test),
        "code_dim": int(test.code.shape[1]),
        "bce_from": "logits" if from_logits else f"clipped reconstruction ({BCE_EPS})",
    }
    noisy = denoised = None
    if noise is not None:
        # The trainers' rule, on the model's input (its std in those units); scored
        # and shown in [0, 1] pixel space.
        inputs = noise.apply(data.test, data.pixel_range)
        noisy = data.to_pixels(inputs)
        denoised = data.to_pixels(encode(inputs, False).reconstruction)
        metrics["noisy_psnr"] = psnr(noisy, clean)
        metrics["denoised_psnr"] = psnr(denoised, clean)
        metrics["denoised_mse"] = mse(denoised, clean)
        info["noise"] = dataclasses.asdict(noise)
    seconds["test"] = time.perf_counter() - start
    if probe:
        tic = time.perf_counter()
        train_code = encode(data.train, True).code
        seconds["train_codes"] = time.perf_counter() - tic
        for prefix, what, train_x, test_x in (
            ("", "codes", train_code, test.code),
            ("pixel_", "pixels", data.train, data.test),
        ):
            tic = time.perf_counter()
            label = f"probe on {what}" if progress else None
            fitted = fit_probe(train_x, data.train_labels, progress=label)
            metrics[f"{prefix}probe_accuracy"] = fitted.accuracy(
                test_x, data.test_labels
            )
            metrics[f"{prefix}probe_train_accuracy"] = fitted.accuracy(
                train_x, data.train_labels
            )
            info[f"{prefix}probe_iterations"] = fitted.iterations
            seconds[f"{prefix}probe"] = time.perf_counter() - tic
        info.update(n_train=len(data.train), probe_l2=PROBE_L2)
        info["probe_max_iter"] = PROBE_MAX_ITER
    seconds["total"] = time.perf_counter() - start
    info["seconds"] = seconds
    return Evaluation(
        metrics, code_stats.activation_frequency, info, test, noisy, denoised
    )


def evaluate_source(
    path: str | os.PathLike,
    out_dir: str | os.PathLike | None,
    framework: str,
    evaluate: Callable[..., Evaluation],
    *,
    overrides: Mapping[str, Any] | None = None,
    probe: bool = True,
    noise_seed: int = NOISE_SEED,
    batch_size: int | None = None,
    progress: bool = True,
    source_options: Mapping[str, Any] | None = None,
) -> tuple[Evaluation, Source, str]:
    """The body of both packages' ``evaluate_checkpoint``: load ``path``
    (:func:`load_source`, with ``overrides`` and ``source_options``), prepare its run's data, call
    ``evaluate(state_dict, config, data, probe=, noise=, batch_size=, progress=)``
    with the run's noise (seeded ``noise_seed``) if it is a denoising run and
    ``batch_size`` or the run's eval_batch_size, and write the report to ``out_dir``
    (default: eval-<framework> beside the checkpoint). Returns (evaluation, source,
    out_dir)."""
    source = load_source(path, overrides, source_options)
    data = prepare_data(source.run)
    result = evaluate(
        source.state_dict,
        source.run.model,
        data,
        probe=probe,
        noise=Noise.of(source.run.train, noise_seed),
        batch_size=source.run.train.eval_batch_size
        if batch_size is None
        else batch_size,
        progress=progress,
    )
    out_dir = os.fspath(out_dir or default_report_dir(source, framework))
    write_report(out_dir, result, data, source)
    return result, source, out_dir

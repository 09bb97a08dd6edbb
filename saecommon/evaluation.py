"""Evaluating a trained sparse autoencoder, framework-neutral (numpy + scipy).

Everything that does not run the model lives here, written once: the metric formulas
(from arrays), the linear probe, the denoising noise, loading a checkpoint and its run's
data, and the report (metrics.json, pictures, the printed table). jaxsae.evaluation and
torchsae.evaluation only run the model: each passes its ``encode`` to
:func:`evaluate_with`, so the two packages' numbers can differ only through the codes
and reconstructions their models compute.

Definitions (all over the whole test split):

- Reconstruction metrics are in [0, 1] pixel space (uint8 / 255) whatever the model was
  trained on: a model trained on normalized data has its reconstruction mapped back
  with the inverse normalization (not clipped). ``mse`` is the mean squared error over
  every pixel of every test image; for an unnormalized model it is the trainer's
  ``test/recon`` of an mse model.
- ``psnr`` = 10 * log10(MAX^2 / mse) dB with MAX = 1 (the pixel range [0, 1]): one
  dataset-level figure from the pooled mse, not a mean of per-image PSNRs.
- ``bce``: for a sigmoid-output model trained on unnormalized data, from the logits z,
  mean(softplus(z) - z * t) (the training BCE, never inf); otherwise on the
  reconstruction r clipped to p = clip(r, eps, 1 - eps), eps = ``BCE_EPS``:
  -mean(t * log p + (1 - t) * log(1 - p)). Its minimum is the mean entropy of the
  targets, not 0, since MNIST pixels are not binary.
- ``l0``: mean over samples of the number of non-zero code units (exactly != 0, as the
  trainers count it). ``activation_frequency[j]``: the share of test samples on which
  unit j is non-zero. ``dead_fraction``: the share of units with frequency 0 (zero on
  every test sample). ``constant_fraction``: the share of units that take one value on
  every test sample, dead units among them (a dead inner layer leaves its code units
  constant but not zero: they carry no information either).
- The probe (:func:`fit_probe`): softmax regression on standardized features, zero
  init, L2 ``PROBE_L2`` on the weights (not the bias), L-BFGS for at most
  ``PROBE_MAX_ITER`` iterations; trained on the frozen codes (evaluation mode) of the
  training split (without the run's validation hold-out), accuracy on the test split;
  the same probe on the raw pixels is the baseline (standardization makes it the same
  for normalized and unnormalized runs).
- Denoising (:class:`Noise`): the test images corrupted once, in numpy with a fixed
  seed; ``noisy_psnr`` is the noisy input against the clean image, ``denoised_psnr``
  (and ``denoised_mse``) the reconstruction of the noisy input against the clean image.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from saecommon import runs
from saecommon.checkpoint import CheckpointError, read_checkpoint
from saecommon.config import ConfigError, SAEConfig, check_float, check_int
from saecommon.data import DataError, check_finite
from saecommon.train_config import RunConfig, TrainConfig

BCE_EPS = 1e-7
"""Clip for the BCE of a non-sigmoid (or normalized) model's reconstruction."""
PROBE_L2 = 1e-4
"""L2 weight of the probe: objective = mean cross-entropy + PROBE_L2 / 2 * ||W||^2."""
PROBE_MAX_ITER = 100
"""L-BFGS iteration cap of the probe (raw MNIST pixels: about 92.6% test accuracy)."""
NOISE_SEED = 0
"""Seed of the denoising noise (numpy's default_rng)."""
EVAL_FIELDS = (
    "dataset",
    "normalize",
    "val_fraction",
    "noise",
    "noise_std",
    "mask_fraction",
)
"""The TrainConfig fields that change an evaluation (and may be overridden for one)."""
METRICS = "metrics.json"
DENOISING = "denoising.png"


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


# --------------------------------------------------------------------------- metrics


def mse(reconstruction, target) -> float:
    """Mean squared error over every element (float64 accumulation)."""
    r, t = _pair(reconstruction, target)
    return float(np.mean(np.square(r - t)))


def psnr(reconstruction, target, data_range: float = 1.0) -> float:
    """10 * log10(data_range^2 / mse) in dB, from the mse pooled over every element
    (inf when the two are equal)."""
    return psnr_from_mse(mse(reconstruction, target), data_range)


def psnr_from_mse(error: float, data_range: float = 1.0) -> float:
    if error == 0:
        return math.inf
    return float(10 * np.log10(data_range**2 / error))


def bce_from_logits(logits, target) -> float:
    """mean(softplus(z) - z * t): BCE of sigmoid(z) against t in [0, 1], never inf."""
    z, t = _pair(logits, target)
    return float(np.mean(np.logaddexp(z, 0) - z * t))


def bce_clipped(reconstruction, target, eps: float = BCE_EPS) -> float:
    """-mean(t log p + (1 - t) log(1 - p)) with p = clip(reconstruction, eps, 1 - eps)."""
    r, t = _pair(reconstruction, target)
    p = np.clip(r, eps, 1 - eps)
    return float(-np.mean(t * np.log(p) + (1 - t) * np.log1p(-p)))


def activation_frequency(code) -> np.ndarray:
    """[code] float64: the share of samples on which each unit of ``code`` [n, code]
    is non-zero."""
    z = np.asarray(code)
    if z.ndim != 2 or z.shape[0] < 1:
        raise ValueError(f"code must be [n, code] with n >= 1, got shape {z.shape}")
    return np.mean(z != 0, axis=0, dtype=np.float64)


def l0(code) -> float:
    """Mean over samples of the number of non-zero units of ``code`` [n, code]."""
    return float(np.sum(activation_frequency(code)))


def dead_fraction(code) -> float:
    """The share of units of ``code`` [n, code] that are zero on every sample."""
    return float(np.mean(activation_frequency(code) == 0))


def constant_fraction(code) -> float:
    """The share of units of ``code`` [n, code] that take one value on every sample
    (zero or not)."""
    code = np.asarray(code)
    return float(np.mean(np.all(code == code[:1], axis=0)))


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(
            f"expected two non-empty arrays of one shape, got {a.shape} and {b.shape}"
        )
    return a, b


# --------------------------------------------------------------------------- noise


@dataclasses.dataclass(frozen=True)
class Noise:
    """Denoising noise for evaluation, drawn once in numpy so that jaxsae and torchsae
    see the same noisy inputs (JAX's PRNG never matches torch's). Applied in [0, 1]
    pixel space: the trainers' rules, which act on normalized data at the values that
    pixels 0 and 1 take there, give the same images."""

    kind: str
    """gaussian (x + N(0, std^2), clipped to [0, 1]) or masking (a fraction
    mask_fraction of pixels set to 0)."""
    std: float = 0.1
    """Standard deviation of Gaussian noise."""
    mask_fraction: float = 0.25
    """Fraction of pixels masking sets to 0, in [0, 1)."""
    seed: int = NOISE_SEED
    """Seed of numpy's default_rng."""

    def __post_init__(self):
        if self.kind not in ("gaussian", "masking"):
            raise ConfigError(
                f"noise kind must be 'gaussian' or 'masking', got {self.kind!r}"
            )
        check_float("noise std", self.std)
        if self.std < 0:
            raise ConfigError(f"noise std must be >= 0, got {self.std}")
        check_float("mask_fraction", self.mask_fraction)
        if not 0 <= self.mask_fraction < 1:
            raise ConfigError(
                f"mask_fraction must be in [0, 1), got {self.mask_fraction}"
            )
        check_int("noise seed", self.seed, minimum=0)

    @classmethod
    def of(cls, tcfg: TrainConfig, seed: int = NOISE_SEED) -> Noise | None:
        """The noise a run trained with, or None for a run without."""
        if tcfg.noise == "none":
            return None
        return cls(tcfg.noise, tcfg.noise_std, tcfg.mask_fraction, seed)

    def apply(self, pixels) -> np.ndarray:
        """[n, features] in [0, 1] -> [n, features] float32 noisy copy."""
        x = np.asarray(pixels, dtype=np.float32)
        rng = np.random.default_rng(self.seed)
        if self.kind == "gaussian":
            noise = rng.standard_normal(x.shape, dtype=np.float32)
            return np.clip(x + np.float32(self.std) * noise, 0, 1)
        keep = rng.random(x.shape, dtype=np.float32) >= self.mask_fraction
        return np.where(keep, x, np.float32(0))

    def describe(self) -> str:
        if self.kind == "gaussian":
            return f"gaussian std {self.std:g}, seed {self.seed}"
        return f"masking {self.mask_fraction:g}, seed {self.seed}"


# --------------------------------------------------------------------------- probe


@dataclasses.dataclass(frozen=True, eq=False)
class Probe:
    """A fitted linear softmax classifier: logits = standardize(x) @ weights + bias."""

    mean: np.ndarray
    """[features] training mean of each feature."""
    scale: np.ndarray
    """[features] training standard deviation of each feature (1 where it is 0)."""
    weights: np.ndarray
    """[features, classes] float64."""
    bias: np.ndarray
    """[classes] float64."""
    classes: np.ndarray
    """[classes] the sorted label values; logit column c is ``classes[c]``."""
    iterations: int
    """L-BFGS iterations run."""
    loss: float
    """Final training objective (mean cross-entropy + L2 term)."""

    def logits(self, features) -> np.ndarray:
        """[n, features] -> [n, classes] float64."""
        x = _standardize(_features(features, "probe features"), self.mean, self.scale)
        if x.shape[1] != self.weights.shape[0]:
            raise ValueError(
                f"the probe was fitted on {self.weights.shape[0]} features, got "
                f"{x.shape[1]}"
            )
        return (x @ self.weights.astype(np.float32)).astype(np.float64) + self.bias

    def probabilities(self, features) -> np.ndarray:
        """[n, features] -> [n, classes] softmax probabilities."""
        z = self.logits(features)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def predict(self, features) -> np.ndarray:
        """[n, features] -> [n] predicted labels (ties: the smaller label)."""
        return self.classes[np.argmax(self.logits(features), axis=1)]

    def accuracy(self, features, labels) -> float:
        """Share of samples whose predicted label equals ``labels`` [n]."""
        y = _labels(labels, len(features))
        return float(np.mean(self.predict(features) == y))


def fit_probe(
    features,
    labels,
    *,
    l2: float = PROBE_L2,
    max_iter: int = PROBE_MAX_ITER,
    progress: str | None = None,
) -> Probe:
    """Fit softmax regression to ``features`` [n, features] and integer ``labels``
    [n], deterministically: features standardized with their training mean and std
    (a constant feature becomes 0), weights and bias initialised to zero, objective
    mean cross-entropy + l2 / 2 * ||weights||^2 (the bias is not penalised), minimised
    by scipy's L-BFGS-B (no bounds) for at most ``max_iter`` iterations.

    The features are standardized and multiplied in float32 (the run time is these
    two [n, features] x [features, classes] products per step); the parameters, the
    softmax and the loss are float64. ``progress``, a label, shows a progress bar on a
    terminal or one line when done."""
    from scipy.optimize import minimize

    x = _features(features, "probe features")
    y = _labels(labels, len(x))
    check_float("probe l2", l2)
    if l2 < 0:
        raise ConfigError(f"probe l2 must be >= 0, got {l2}")
    check_int("probe max_iter", max_iter, minimum=1)
    classes, target = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(
            f"the probe needs at least two classes, but every label is {classes[0]}"
        )
    n, f = x.shape
    c = len(classes)
    mean = np.mean(x, axis=0, dtype=np.float64)
    std = np.std(x, axis=0, dtype=np.float64)
    scale = np.where(std > 0, std, 1.0)
    xs = _standardize(x, mean, scale)  # [n, f] float32
    xs_t = np.ascontiguousarray(xs.T)  # [f, n]: X^T G is twice as fast contiguous
    rows = np.arange(n)

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[: f * c].reshape(f, c), theta[f * c :]
        z = (xs @ w.astype(np.float32)).astype(np.float64) + b  # [n, c]
        z -= z.max(axis=1, keepdims=True)
        log_p = z - np.log(np.sum(np.exp(z), axis=1, keepdims=True))
        loss = -np.mean(log_p[rows, target]) + 0.5 * l2 * np.sum(w * w)
        g = np.exp(log_p)  # d loss / d z = (softmax - onehot) / n
        g[rows, target] -= 1
        g /= n
        grad_w = (xs_t @ g.astype(np.float32)).astype(np.float64) + l2 * w
        return float(loss), np.concatenate([grad_w.ravel(), g.sum(axis=0)])

    bar = _ProbeProgress(progress, max_iter, n, f)
    result = minimize(
        objective,
        np.zeros(f * c + c),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iter},
        callback=bar.update,
    )
    bar.close(result.nit, result.fun)
    theta = result.x
    return Probe(
        mean,
        scale,
        theta[: f * c].reshape(f, c),
        theta[f * c :],
        classes,
        int(result.nit),
        float(result.fun),
    )


class _ProbeProgress:
    """A tqdm bar of L-BFGS iterations on a terminal; one line at the end otherwise."""

    def __init__(self, label: str | None, total: int, n: int, f: int):
        self.label, self.bar, self.start = label, None, time.perf_counter()
        self.what = f"{n} samples x {f} features"
        if label and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, desc=label, unit="it", dynamic_ncols=True, leave=False
            )

    def update(self, *_) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self, iterations: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.label:
            seconds = time.perf_counter() - self.start
            print(
                f"{self.label} ({self.what}): {iterations} L-BFGS iterations, "
                f"loss {loss:.4g} ({seconds:.1f}s)",
                flush=True,
            )


def _standardize(x: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(x - mean) / scale in float32 (no float64 copy of a 60000 x 784 array)."""
    return (x - mean.astype(np.float32)) / scale.astype(np.float32)


def _features(features, name: str) -> np.ndarray:
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} must be [n, features], got shape {x.shape}")
    check_finite(x, name)
    return x


def _labels(labels, n: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"labels must be [n] = [{n}] integers, got shape {y.shape} dtype {y.dtype}"
        )
    return y


# --------------------------------------------------------------------------- inputs


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


def load_source(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None):
    """A :class:`Source` from a run directory or a checkpoint file.

    A run directory (or a ``model.safetensors`` inside one) brings its config.json, so
    the data is prepared as the run prepared it (dataset, normalize, val_fraction,
    noise); a bare checkpoint gets TrainConfig's defaults (MNIST, unnormalized).
    ``overrides`` replace the ``EVAL_FIELDS`` of that TrainConfig (e.g.
    ``{"dataset": "tfds:fashion_mnist", "normalize": True}``)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        checkpoint = os.path.join(path, runs.MODEL)
        if not os.path.isfile(checkpoint):
            raise CheckpointError(
                f"{path} has no {runs.MODEL}: pass a run directory written by "
                "scripts/train.py, or a checkpoint file"
            )
    elif os.path.isfile(path):
        checkpoint = path
    else:
        raise CheckpointError(
            f"no checkpoint at {path}: pass a run directory (holding {runs.MODEL} and "
            f"{runs.CONFIG}) or a .safetensors checkpoint"
        )
    state_dict, config = read_checkpoint(checkpoint)
    folder = os.path.dirname(os.path.abspath(checkpoint))
    config_path = os.path.join(folder, runs.CONFIG)
    run, history = RunConfig(config, TrainConfig()), []
    if os.path.basename(checkpoint) == runs.MODEL and os.path.isfile(config_path):
        with open(config_path) as f:
            run = RunConfig.from_json(f.read())
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
        history = runs.read_history(folder)
    if overrides:
        unknown = sorted(set(overrides) - set(EVAL_FIELDS))
        if unknown:
            raise ConfigError(
                f"cannot override {', '.join(unknown)} for an evaluation; only "
                + ", ".join(EVAL_FIELDS)
            )
        run = RunConfig(run.model, dataclasses.replace(run.train, **overrides))
    return Source(state_dict, run, os.path.abspath(checkpoint), history)


def prepare_eval_data(run: RunConfig) -> runs.PreparedData:
    """The run's data as its trainer prepared it (``runs.prepare_data``: scaled to
    [0, 1], standardized with the training split's statistics when ``normalize``, the
    same validation split); the batch size plays no part here."""
    run = RunConfig(run.model, dataclasses.replace(run.train, batch_size=1))
    return runs.prepare_data(run)


def to_pixels(data: runs.PreparedData, x: np.ndarray) -> np.ndarray:
    """Model-space [n, input] -> [0, 1] pixel space (the normalization undone)."""
    return x if data.normalization is None else data.normalization.invert(x)


def check_data(data: runs.PreparedData, config: SAEConfig, train: bool) -> None:
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
    data: runs.PreparedData,
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
    clean = to_pixels(data, data.test)
    recon = to_pixels(data, test.reconstruction)
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
    frequency = activation_frequency(test.code)
    metrics["l0"] = float(np.sum(frequency))
    metrics["dead_fraction"] = float(np.mean(frequency == 0))
    metrics["constant_fraction"] = constant_fraction(test.code)
    info: dict[str, Any] = {
        "framework": framework,
        "n_test": len(data.test),
        "code_dim": int(test.code.shape[1]),
        "bce_from": "logits" if from_logits else f"clipped reconstruction ({BCE_EPS})",
    }
    noisy = denoised = None
    if noise is not None:
        noisy = noise.apply(clean)
        inputs = (
            noisy if data.normalization is None else data.normalization.apply(noisy)
        )
        denoised = to_pixels(data, encode(inputs, False).reconstruction)
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
    return Evaluation(metrics, frequency, info, test, noisy, denoised)


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
) -> tuple[Evaluation, Source, str]:
    """The body of both packages' ``evaluate_checkpoint``: load ``path``
    (:func:`load_source`, with ``overrides``), prepare its run's data, call
    ``evaluate(state_dict, config, data, probe=, noise=, batch_size=, progress=)``
    with the run's noise (seeded ``noise_seed``) if it is a denoising run and
    ``batch_size`` or the run's eval_batch_size, and write the report to ``out_dir``
    (default: eval-<framework> beside the checkpoint). Returns (evaluation, source,
    out_dir)."""
    source = load_source(path, overrides)
    data = prepare_eval_data(source.run)
    result = evaluate(
        source.state_dict,
        source.run.model,
        data,
        probe=probe,
        noise=Noise.of(source.run.train, noise_seed),
        batch_size=batch_size or source.run.train.eval_batch_size,
        progress=progress,
    )
    out_dir = os.fspath(out_dir or default_out(source, framework))
    write_evaluation(out_dir, result, data, source)
    return result, source, out_dir


# --------------------------------------------------------------------------- report


def default_out(source: Source, framework: str) -> str:
    """eval-<framework> beside the checkpoint."""
    folder = os.path.dirname(source.checkpoint) if source.checkpoint else "."
    return os.path.join(folder, f"eval-{framework}")


def write_evaluation(
    out_dir: str | os.PathLike,
    evaluation: Evaluation,
    data: runs.PreparedData,
    source: Source,
) -> list[pathlib.Path]:
    """metrics.json and the pictures into ``out_dir``; returns their paths.

    Pictures: reconstructions.png (the first 16 test images), dictionary.png,
    codes.png (the first 256 test codes), activation_frequency.png, code_scatter.png
    (every test code, when the code is 2-D), denoising.png (noisy inputs and their
    reconstructions, with noise) and loss_curves.png (when the run's history is known).
    Images are in [0, 1] pixel space."""
    from saecommon import plots

    out = pathlib.Path(os.fspath(out_dir))
    out.mkdir(parents=True, exist_ok=True)
    config = source.run.model
    test = evaluation.test
    shape = runs.picture_shape(data, config.input_dim)
    weights, tile_shape = runs.dictionary(source.state_dict, config)
    paths = [out / METRICS]
    report = {
        "checkpoint": source.checkpoint,
        "run": json.loads(source.run.to_json()),
        **evaluation.info,
        "metrics": evaluation.metrics,
        "activation_frequency": evaluation.activation_frequency.tolist(),
    }
    with open(out / METRICS, "w") as f:  # as runs.finish_run writes summary.json
        json.dump(report, f, indent=1)
    paths += [
        plots.plot_reconstructions(
            to_pixels(data, data.test[:16]),
            to_pixels(data, test.reconstruction[:16]),
            out / plots.RECONSTRUCTIONS,
            image_shape=shape,
        ),
        plots.plot_dictionary(
            weights, out / plots.DICTIONARY, image_shape=tile_shape or shape
        ),
        plots.plot_codes(test.code[:256], out / plots.CODES),
        plots.plot_activation_frequency(
            evaluation.activation_frequency, out / plots.ACTIVATION_FREQUENCY
        ),
    ]
    if test.code.shape[1] == 2:
        paths.append(
            plots.plot_code_scatter(
                test.code, data.test_labels, out / plots.CODE_SCATTER
            )
        )
    if evaluation.noisy is not None:
        paths.append(
            plots.plot_reconstructions(
                evaluation.noisy[:16],
                evaluation.denoised[:16],
                out / DENOISING,
                image_shape=shape,
            )
        )
    if source.history:
        paths.append(
            plots.plot_loss_curves(list(source.history), out / plots.LOSS_CURVES)
        )
    return paths


def format_report(evaluation: Evaluation, source: Source | None = None) -> str:
    """The printed table: one metric per line, with how it was measured."""
    m, info = evaluation.metrics, evaluation.info
    code_dim = info["code_dim"]
    dead_units = round(m["dead_fraction"] * code_dim)
    constant_units = round(m["constant_fraction"] * code_dim)
    where = f" of {source.checkpoint}" if source and source.checkpoint else ""
    dataset = f" on {source.run.train.dataset}" if source else ""
    rows = [
        ("mse", f"{m['mse']:.6f}", "pixels in [0, 1]"),
        ("bce", f"{m['bce']:.6f}", f"from {info['bce_from']}"),
        ("psnr", f"{m['psnr']:.3f} dB", "10 log10(1 / mse)"),
        ("l0", f"{m['l0']:.3f}", f"active units per sample, of {code_dim}"),
        ("dead fraction", f"{m['dead_fraction']:.4f}", f"{dead_units} of {code_dim}"),
        (
            "constant fraction",
            f"{m['constant_fraction']:.4f}",
            f"{constant_units} of {code_dim} take one value on every input "
            "(dead ones included)",
        ),
    ]
    if "noisy_psnr" in m:
        noise = Noise(**info["noise"]).describe()
        rows += [
            ("noisy psnr", f"{m['noisy_psnr']:.3f} dB", f"noisy input ({noise})"),
            ("denoised psnr", f"{m['denoised_psnr']:.3f} dB", "its reconstruction"),
            ("denoised mse", f"{m['denoised_mse']:.6f}", ""),
        ]
    if "probe_accuracy" in m:
        how = f"train {{:.4f}}; {{}} L-BFGS iterations, L2 {info['probe_l2']:g}"
        rows += [
            (
                "probe accuracy",
                f"{m['probe_accuracy']:.4f}",
                "codes; "
                + how.format(m["probe_train_accuracy"], info["probe_iterations"]),
            ),
            (
                "pixel probe accuracy",
                f"{m['pixel_probe_accuracy']:.4f}",
                "raw pixels; "
                + how.format(
                    m["pixel_probe_train_accuracy"], info["pixel_probe_iterations"]
                ),
            ),
        ]
    samples = f"{info['n_test']} test samples"
    if "n_train" in info:
        samples += f", probe trained on {info['n_train']}"
    lines = [
        f"evaluation{where} ({info['framework']}){dataset}: {samples}, "
        f"{info['seconds']['total']:.1f}s"
    ]
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    for name, value, note in rows:
        lines.append(f"  {name:<{width}}  {value:>{value_width}}  {note}".rstrip())
    return "\n".join(lines)

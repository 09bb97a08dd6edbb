"""The framework-neutral half of the dictionary SAE (numpy): initial weights, the
geometric median, the input scale and the checkpoint. jaxsae/dictionary.py and
torchsae/dictionary.py start from the same numpy arrays, so a run's initialisation
is identical in both packages for the same seed.
"""

from __future__ import annotations

import os

import numpy as np

from saecommon.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    CheckpointError,
    atomic_write,
    check_finite_weights,
    compare_shapes,
    read_safetensors,
)
from saecommon.config import ConfigError
from saecommon.dictionary_config import DictConfig, DictTrainConfig

StateDict = dict[str, np.ndarray]


def geometric_median(
    points: np.ndarray, max_iter: int = 100, tol: float = 1e-7, eps: float = 1e-12
) -> np.ndarray:
    """The point minimising the sum of Euclidean distances to ``points`` [n, d]
    (Weiszfeld's iterations, in float64, from the mean: y <- sum(x_i / d_i) /
    sum(1 / d_i) with d_i = max(||x_i - y||, eps); stops when y moves less than
    ``tol`` times its norm, or after ``max_iter`` steps). Bricken et al. 2023
    initialise b_dec with it."""
    x = np.asarray(points, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"geometric_median takes points [n, d], got {x.shape}")
    y = x.mean(axis=0)
    for _ in range(max_iter):
        w = 1.0 / np.maximum(np.linalg.norm(x - y, axis=1), eps)
        new = (w[:, None] * x).sum(axis=0) / w.sum()
        moved = np.linalg.norm(new - y)
        y = new
        if moved <= tol * max(np.linalg.norm(y), eps):
            break
    return y


def input_scale(sample: np.ndarray, normalization: str) -> float:
    """The fixed factor s applied to every input: mean ||s x||^2 = d_in ("d_in"), = 1
    ("unit"), or s = 1 ("none"); measured on ``sample`` [n, d_in]."""
    if normalization == "none":
        return 1.0
    sample = np.asarray(sample, dtype=np.float64)
    mean_sq = float(np.mean(np.sum(sample**2, axis=1)))
    if not mean_sq > 0:
        raise ValueError("cannot normalise: the sample's activations are all zero")
    target = sample.shape[1] if normalization == "d_in" else 1.0
    return float(np.sqrt(target / mean_sq))


def init_state_dict(
    config: DictConfig, train: DictTrainConfig, sample: np.ndarray | None = None
) -> StateDict:
    """Initial weights in float32, from ``train.seed`` (numpy's PCG64):

    - W_dec: rows of Gaussian noise scaled to unit norm; W_enc = W_dec.T times
      train.encoder_init_norm (Gao et al. 2024, sparsify, SAELens's
      init_encoder_as_decoder_transpose);
    - b_enc: zeros; b_dec: ``train.b_dec_init`` of ``sample`` (scaled by
      config.input_scale first: b_dec lives in the normalised space);
    - threshold: train.threshold_init per latent (jumprelu); 0 = not yet estimated
      (batchtopk, matryoshka).
    """
    rng = np.random.default_rng(train.seed)
    w_dec = rng.standard_normal((config.d_sae, config.d_in))
    w_dec /= np.linalg.norm(w_dec, axis=1, keepdims=True)
    if train.b_dec_init == "zeros":
        b_dec = np.zeros(config.d_in)
    else:
        if sample is None:
            raise ValueError(f"b_dec_init {train.b_dec_init} needs a sample")
        scaled = np.asarray(sample, dtype=np.float64) * config.input_scale
        b_dec = (
            geometric_median(scaled)
            if train.b_dec_init == "geometric_median"
            else scaled.mean(axis=0)
        )
    state = {
        "W_enc": np.ascontiguousarray(w_dec.T * train.encoder_init_norm),
        "b_enc": np.zeros(config.d_sae),
        "W_dec": w_dec,
        "b_dec": b_dec,
    }
    if config.activation == "jumprelu":
        state["threshold"] = np.full(config.d_sae, train.threshold_init)
    elif config.has_threshold:
        state["threshold"] = np.zeros(())
    return {k: np.asarray(v, dtype=np.float32) for k, v in state.items()}


def array_start(
    config: DictConfig,
    train: DictTrainConfig,
    data: np.ndarray,
    state_dict: StateDict | None = None,
) -> tuple[np.ndarray, StateDict]:
    """For training on an array in memory (``train_array`` in both packages): the
    token order (one seeded permutation, ``default_rng(train.seed)``, batches wrapping
    around it) and the initial weights: ``state_dict`` if given, else drawn with the
    order's first ``init_sample_tokens`` as the sample."""
    order = np.random.default_rng(train.seed).permutation(len(data))
    if state_dict is None:
        sample = data[order[: train.init_sample_tokens]]
        state_dict = init_state_dict(config, train, sample)
    return order, state_dict


def array_batch(data: np.ndarray, order: np.ndarray, step: int, batch: int):
    """Batch ``step`` of ``data`` in ``order`` (wrapping around), float32."""
    return np.asarray(
        data[order[np.arange(step * batch, (step + 1) * batch) % len(data)]]
    )


def check_state_dict(state_dict: StateDict, config: DictConfig, source: str) -> None:
    """CheckpointError naming every missing, unexpected and mis-shaped tensor, any
    non-finite weight, and a NaN or negative threshold."""
    expected = config.shapes()
    missing, unexpected, misshaped = compare_shapes(state_dict, expected)
    problems = [f"missing {k} {expected[k]}" for k in missing]
    problems += [f"unexpected {k}" for k in unexpected]
    problems += [f"{k} is {got}, the config says {want}" for k, got, want in misshaped]
    if problems:
        raise CheckpointError(
            f"{source} does not fit a {config.activation} SAE "
            f"(d_in={config.d_in}, d_sae={config.d_sae}): " + "; ".join(problems)
        )
    if "threshold" in state_dict:
        threshold = np.asarray(state_dict["threshold"])
        bad = np.isnan(threshold) | (threshold < 0)
        if bad.any():
            first = int(np.flatnonzero(bad.ravel())[0])
            raise CheckpointError(
                f"{source}: threshold holds {int(bad.sum())} NaN or negative values "
                f"(first at latent {first}: {threshold.ravel()[first]}); a threshold "
                "must be a number >= 0"
            )
    check_finite_weights(state_dict, source)


def save_dictionary(
    path: str | os.PathLike, state_dict: StateDict, config: DictConfig
) -> None:
    """Write the portable checkpoint (safetensors, SAELens names, the config as JSON
    in its metadata) atomically."""
    atomic_write(path, dictionary_bytes(state_dict, config, os.fspath(path)))


def dictionary_bytes(state_dict: StateDict, config: DictConfig, source: str) -> bytes:
    """The checkpoint file's bytes, after checking every tensor against ``config``
    (errors name ``source``)."""
    from safetensors.numpy import save

    # np.array, not np.ascontiguousarray: the latter makes a 0-d threshold 1-d
    arrays = {k: np.array(v, order="C") for k, v in state_dict.items()}
    check_state_dict(arrays, config, source)
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": "dictionary",
        "config": config.to_json(),
    }
    return save(arrays, metadata=metadata)


def load_dictionary(path: str | os.PathLike) -> tuple[StateDict, DictConfig]:
    """Read a dictionary checkpoint written by either package: (state dict, config)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}")
    state_dict, metadata = read_safetensors(path)
    if metadata.get("format") != FORMAT or metadata.get("kind") != "dictionary":
        raise CheckpointError(
            f"{path} is not a dictionary SAE checkpoint (its metadata has no "
            "'format': 'sae-checkpoint' with 'kind': 'dictionary')"
        )
    try:
        config = DictConfig.from_json(metadata["config"])
    except (ConfigError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path} holds an invalid config: {err}") from None
    check_state_dict(state_dict, config, path)
    return state_dict, config

"""The one config schema shared by jaxsae and torchsae.

A config is plain data: a frozen dataclass validated in ``__post_init__`` with a message
that names the field, and a JSON round trip that both packages share (the class is the
same object in both, so the JSON is identical by construction).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

ACTIVATIONS = ("relu", "leaky_relu", "sigmoid", "tanh", "identity")
OUTPUT_ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu", "identity")
ARCHITECTURES = ("mlp", "conv", "fullconv")
PENALTIES = ("none", "l1", "kl")
L1_LAYERS = ("code", "hidden")
REDUCTIONS = ("sum", "mean")
LOSSES = ("mse", "bce")
CONFIG_VERSION = 1


class ConfigError(ValueError):
    """A config field holds a value the models cannot use."""


@dataclasses.dataclass(frozen=True)
class SAEConfig:
    """A sparse autoencoder: architecture, sparsity rule and loss.

    ``mlp``: the encoder is ``input_dim -> hidden_dims[0] -> ... -> hidden_dims[-1]``
    (the code) and the decoder mirrors it back to ``input_dim``. ``conv`` and
    ``fullconv``: the fixed convolutional layers of saecommon/architectures.py on
    1x28x28 images, with a linear or a transposed-convolution decoder.
    """

    architecture: str = "mlp"
    """mlp (fully connected, any depth), conv (conv encoder + linear decoder, code
    8x4x4) or fullconv (conv encoder + transposed-conv decoder, code 32x4x4); the conv
    layers are listed in saecommon/architectures.py and take 1x28x28 images."""
    input_dim: int = 784
    """Width of one input sample (784 for flattened 28x28 images)."""
    hidden_dims: tuple[int, ...] | None = None
    """mlp: encoder layer widths, outermost first, the last one the code width
    (default (64,)). conv/fullconv: the code width, fixed by the architecture."""
    activation: str = "relu"
    """Activation of every hidden layer except the code: relu, leaky_relu, sigmoid,
    tanh, identity."""
    code_activation: str = "relu"
    """Activation of the code layer (before the sparsity layer): relu, leaky_relu,
    sigmoid, tanh, identity (the KL penalty needs sigmoid)."""
    output_activation: str = "sigmoid"
    """Activation of the reconstruction: sigmoid or relu for pixels in [0, 1], tanh for
    pixels scaled to [-1, 1] (TrainConfig.pixel_scale symmetric), leaky_relu,
    identity. bce needs sigmoid."""
    negative_slope: float = 0.01
    """Slope for x < 0 wherever leaky_relu is used."""
    tied: bool = False
    """Decoder layer i uses the transpose of its mirror encoder weight (own bias)."""
    topk: int | None = None
    """Per-sample top-k: keep the k largest code units of each sample."""
    lifetime_k: int | None = None
    """Lifetime top-k: keep, per code unit, the k largest values across the batch
    (clamped to the batch size). Training only."""
    lifetime_rate: float | None = None
    """Lifetime top-k as a rate of the batch: k = ceil(rate * batch), in (0, 1]."""
    penalty: str = "none"
    """Soft sparsity penalty: none, l1 or kl."""
    penalty_weight: float = 0.0
    """lambda for L1, beta for KL."""
    l1_layers: str = "code"
    """L1 on the code only, or summed over every hidden activation ("hidden")."""
    kl_rho: float = 0.05
    """Target mean activation rho of each code unit, in (0, 1)."""
    kl_reduction: str = "sum"
    """How the per-unit KL terms are reduced: sum (Ng's notes) or mean."""
    kl_eps: float = 1e-6
    """rho_hat is clamped to [eps, 1 - eps] so the KL stays finite."""
    loss: str = "mse"
    """Reconstruction loss: mse (mean over elements) or bce (from logits; needs a
    sigmoid output and targets in [0, 1])."""

    def __post_init__(self):
        check_choice("architecture", self.architecture, ARCHITECTURES)
        if self.architecture != "mlp":
            self._check_conv()
        elif self.hidden_dims is None:
            object.__setattr__(self, "hidden_dims", (64,))
        # JSON gives lists; keep the dataclass hashable and comparable.
        object.__setattr__(self, "hidden_dims", tuple(self.hidden_dims))
        check_int("input_dim", self.input_dim, minimum=1)
        if not self.hidden_dims:
            raise ConfigError("hidden_dims must name at least one layer (the code)")
        for i, width in enumerate(self.hidden_dims):
            check_int(f"hidden_dims[{i}]", width, minimum=1)
        check_choice("activation", self.activation, ACTIVATIONS)
        check_choice("code_activation", self.code_activation, ACTIVATIONS)
        check_choice("output_activation", self.output_activation, OUTPUT_ACTIVATIONS)
        check_float("negative_slope", self.negative_slope)
        if not isinstance(self.tied, bool):
            raise ConfigError(f"tied must be true or false, got {self.tied!r}")
        if self.topk is not None:
            check_int("topk", self.topk, minimum=1)
            if self.topk > self.code_dim:
                raise ConfigError(
                    f"topk={self.topk} is larger than the code ({self.code_dim} units)"
                )
        if self.lifetime_k is not None and self.lifetime_rate is not None:
            raise ConfigError("set lifetime_k or lifetime_rate, not both")
        if self.lifetime_k is not None:
            check_int("lifetime_k", self.lifetime_k, minimum=1)
        if self.lifetime_rate is not None:
            check_lifetime_rate(self.lifetime_rate)
        check_choice("penalty", self.penalty, PENALTIES)
        check_float("penalty_weight", self.penalty_weight)
        if self.penalty_weight < 0:
            raise ConfigError(f"penalty_weight must be >= 0, got {self.penalty_weight}")
        check_choice("l1_layers", self.l1_layers, L1_LAYERS)
        check_rho(self.kl_rho)
        check_choice("kl_reduction", self.kl_reduction, REDUCTIONS)
        check_float("kl_eps", self.kl_eps)
        if not 0 < self.kl_eps < 0.5:
            raise ConfigError(f"kl_eps must be in (0, 0.5), got {self.kl_eps}")
        if self.penalty == "kl" and self.code_activation != "sigmoid":
            raise ConfigError(
                "the KL penalty compares the mean code activation with rho, so the code "
                "must lie in [0, 1]: set code_activation='sigmoid' "
                f"(got {self.code_activation!r})"
            )
        check_choice("loss", self.loss, LOSSES)
        if self.loss == "bce" and self.output_activation != "sigmoid":
            raise ConfigError(
                "bce needs a sigmoid output (probabilities): set "
                f"output_activation='sigmoid' (got {self.output_activation!r}); it is "
                "computed from the logits"
            )

    def _check_conv(self) -> None:
        from saecommon.architectures import CODE_SHAPES, IMAGE_SHAPE

        c, h, w = CODE_SHAPES[self.architecture]
        code = (c * h * w,)
        if self.hidden_dims is None:
            object.__setattr__(self, "hidden_dims", code)
        if tuple(self.hidden_dims) != code:
            raise ConfigError(
                f"the {self.architecture} architecture's code is {c}x{h}x{w} = {code[0]} "
                f"units; leave hidden_dims unset (got {tuple(self.hidden_dims)})"
            )
        pixels = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2]
        if self.input_dim != pixels:
            raise ConfigError(
                f"the {self.architecture} architecture takes 1x28x28 images "
                f"(input_dim {pixels}), got input_dim {self.input_dim}"
            )
        if self.tied is True:
            raise ConfigError("tied weights are defined for the mlp architecture only")

    @property
    def code_dim(self) -> int:
        return self.hidden_dims[-1]

    @property
    def encoder_dims(self) -> tuple[tuple[int, int], ...]:
        """(fan_in, fan_out) of each encoder layer, outermost first."""
        widths = (self.input_dim, *self.hidden_dims)
        return tuple(zip(widths[:-1], widths[1:]))

    @property
    def decoder_dims(self) -> tuple[tuple[int, int], ...]:
        """(fan_in, fan_out) of each decoder layer; decoder i mirrors encoder n-1-i."""
        return tuple(
            (fan_out, fan_in) for fan_in, fan_out in reversed(self.encoder_dims)
        )

    def replace(self, **changes: Any) -> SAEConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["hidden_dims"] = list(self.hidden_dims)
        return {"version": CONFIG_VERSION, **out}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAEConfig:
        data = dict(data)
        version = data.pop("version", CONFIG_VERSION)
        if version != CONFIG_VERSION:
            raise ConfigError(f"config version {version} is not {CONFIG_VERSION}")
        return from_fields(cls, data, "config")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SAEConfig:
        return cls.from_dict(json_object(text))


def json_object(text: str) -> dict[str, Any]:
    """The JSON object in ``text``; ConfigError if it is not valid JSON or not an
    object."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"config is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError("config JSON must be an object")
    return data


def from_fields(cls, data: dict[str, Any], what: str):
    """``cls(**data)`` for a config dataclass, naming any key it has no field for."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {what} fields: {', '.join(unknown)}")
    return cls(**data)


def check_topk(k: Any, width: int) -> int:
    """k for per-sample top-k over ``width`` code units; raises ConfigError if unusable."""
    check_int("k", k, minimum=1)
    if k > width:
        raise ConfigError(f"k={k} is larger than the code ({width} units)")
    return k


def check_lifetime_rate(rate: Any) -> float:
    check_float("lifetime rate", rate)
    if not 0 < rate <= 1:
        raise ConfigError(f"lifetime rate must be in (0, 1], got {rate}")
    return rate


def check_rho(rho: Any) -> float:
    check_float("rho", rho)
    if not 0 < rho < 1:
        raise ConfigError(f"rho must be in (0, 1), got {rho}")
    return rho


def resolve_lifetime_k(
    batch: int, k: int | None = None, rate: float | None = None
) -> int:
    """How many samples each code unit keeps: k, or ceil(rate * batch), clamped to
    [1, batch]. Computed from the static batch size, the same in both packages."""
    if (k is None) == (rate is None):
        raise ConfigError("lifetime top-k needs exactly one of k or rate")
    if k is not None:
        check_int("lifetime k", k, minimum=1)
    else:
        check_lifetime_rate(rate)
    return lifetime_count(batch, k, rate)


def lifetime_count(batch: int, k: int | None, rate: float | None) -> int:
    """:func:`resolve_lifetime_k` without its checks, for a validated config's k or
    rate (the model's forward pass calls this on every step)."""
    if k is not None:
        return min(k, batch)
    return max(1, min(batch, math.ceil(rate * batch)))


def check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")


def check_float(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be finite, got {value!r}")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(
            f"unknown {name} {value!r}; expected one of {', '.join(choices)}"
        )

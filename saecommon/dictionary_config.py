"""The dictionary SAE's schema, shared by jaxsae and torchsae: ``DictConfig`` (the model:
what encoding a token needs, stored in every checkpoint) and ``DictTrainConfig`` (how it
is trained: penalties, AuxK, optimizer, schedule).

The model, the same in both packages (names and shapes as SAELens stores them)::

    pre   = (x * input_scale - b_dec) @ W_enc + b_enc      # b_dec subtracted if
                                                           # subtract_b_dec
    z     = act(pre)                                       # [tokens, d_sae]
    x_hat = (z @ W_dec + b_dec) / input_scale              # [tokens, d_in]

    W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in],
    threshold [d_sae] (jumprelu), threshold [] (batchtopk, matryoshka)
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from saecommon.config import (
    ConfigError,
    check_choice,
    check_float,
    check_int,
    from_fields,
    json_object,
)

DICT_ACTIVATIONS = ("relu", "topk", "batchtopk", "jumprelu", "matryoshka")
THRESHOLD_PARAMS = ("log", "raw")
AUX_NORMALIZATIONS = ("x_variance", "residual_variance", "none")
INPUT_NORMALIZATIONS = ("none", "d_in", "unit")
B_DEC_INITS = ("geometric_median", "mean", "zeros")
DICT_PRECISIONS = ("float32", "bfloat16")
DICT_CONFIG_VERSION = 1


@dataclasses.dataclass(frozen=True)
class DictConfig:
    """A dictionary SAE: widths, activation and what encoding needs."""

    d_in: int = 384
    """Width of one activation vector (the transformer's residual stream)."""
    d_sae: int = 3072
    """Number of latents (dictionary size)."""
    activation: str = "topk"
    """relu (with an L1 penalty), topk (per token), batchtopk (k * tokens over the
    batch; one threshold at inference), jumprelu (per-latent threshold), matryoshka
    (batchtopk whose loss sums the reconstructions of nested prefixes)."""
    k: int | None = 32
    """Latents per token for topk, batchtopk and matryoshka (batchtopk keeps
    k * tokens over the batch). Ignored by relu and jumprelu."""
    subtract_b_dec: bool = True
    """Subtract b_dec from the input before encoding (Anthropic's 2023 SAE, SAELens's
    default; Gemma Scope's JumpReLU SAEs do not)."""
    matryoshka_widths: tuple[int, ...] = ()
    """matryoshka: the nested prefix widths, strictly increasing, each <= d_sae; the
    whole dictionary (d_sae) is always the last prefix, added if not given."""
    threshold_param: str = "raw"
    """jumprelu: the threshold is trained as raw theta (the default, as in
    Rajamanoharan et al. 2024 and SAELens 6), clamped at 0 after each step, or as
    log(theta) (positive by construction, as SAELens's earlier versions did). Adam
    moves log theta by about the learning rate *relative* to theta per step, so from
    a small start it barely moves at an SAE's learning rate: on MiniLM, 300 steps at
    lr 2e-4 (bandwidth 0.05, start 0.1, l0_coefficient 1) left L0 at 871 of 3072
    with log theta and 701 with raw theta."""
    input_scale: float = 1.0
    """A fixed factor applied to the input (and undone on the output): the activation
    normalisation measured before training (DictTrainConfig.input_normalization)."""

    def __post_init__(self):
        check_int("d_in", self.d_in, minimum=1)
        check_int("d_sae", self.d_sae, minimum=1)
        check_choice("activation", self.activation, DICT_ACTIVATIONS)
        if self.activation in ("topk", "batchtopk", "matryoshka"):
            if self.k is None:
                raise ConfigError(f"activation {self.activation} needs k")
            check_int("k", self.k, minimum=1)
            if self.k > self.d_sae:
                raise ConfigError(
                    f"k={self.k} is larger than the dictionary (d_sae={self.d_sae})"
                )
        if not isinstance(self.subtract_b_dec, bool):
            raise ConfigError(
                f"subtract_b_dec must be true or false, got {self.subtract_b_dec!r}"
            )
        widths = tuple(self.matryoshka_widths)
        if self.activation == "matryoshka":
            widths = check_matryoshka_widths(widths, self.d_sae)
        elif widths:
            raise ConfigError("matryoshka_widths is for activation matryoshka only")
        object.__setattr__(self, "matryoshka_widths", widths)
        check_choice("threshold_param", self.threshold_param, THRESHOLD_PARAMS)
        check_float("input_scale", self.input_scale)
        if self.input_scale <= 0:
            raise ConfigError(f"input_scale must be > 0, got {self.input_scale}")

    @property
    def has_threshold(self) -> bool:
        """The model holds a ``threshold`` tensor: [d_sae] for jumprelu, [] for the
        batch rules' inference threshold."""
        return self.activation in ("jumprelu", "batchtopk", "matryoshka")

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """The checkpoint's tensor names and shapes (SAELens's names and layouts)."""
        shapes = {
            "W_enc": (self.d_in, self.d_sae),
            "b_enc": (self.d_sae,),
            "W_dec": (self.d_sae, self.d_in),
            "b_dec": (self.d_in,),
        }
        if self.activation == "jumprelu":
            shapes["threshold"] = (self.d_sae,)
        elif self.has_threshold:
            shapes["threshold"] = ()
        return shapes

    def replace(self, **changes: Any) -> DictConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["matryoshka_widths"] = list(self.matryoshka_widths)
        return {"kind": "dictionary", "version": DICT_CONFIG_VERSION, **out}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DictConfig:
        data = dict(data)
        if data.pop("kind", "dictionary") != "dictionary":
            raise ConfigError("config is not a dictionary SAE's (kind != dictionary)")
        version = data.pop("version", DICT_CONFIG_VERSION)
        if version != DICT_CONFIG_VERSION:
            raise ConfigError(f"config version {version} is not {DICT_CONFIG_VERSION}")
        return from_fields(cls, data, "dictionary config")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DictConfig:
        return cls.from_dict(json_object(text))


def check_matryoshka_widths(widths: tuple[int, ...], d_sae: int) -> tuple[int, ...]:
    """Strictly increasing prefix widths in [1, d_sae], d_sae appended if missing."""
    for i, w in enumerate(widths):
        check_int(f"matryoshka_widths[{i}]", w, minimum=1)
    if any(b <= a for a, b in zip(widths, widths[1:])):
        raise ConfigError(
            f"matryoshka_widths must increase strictly, got {list(widths)}"
        )
    if widths and widths[-1] > d_sae:
        raise ConfigError(
            f"matryoshka_widths {list(widths)} exceed the dictionary (d_sae={d_sae})"
        )
    if not widths or widths[-1] != d_sae:
        widths = (*widths, d_sae)
    return widths


@dataclasses.dataclass(frozen=True)
class DictTrainConfig:
    """How a dictionary SAE is trained. Each rule names the paper or library it
    follows."""

    steps: int = 1000
    """Optimizer steps; each sees ``batch_size`` tokens."""
    batch_size: int = 4096
    """Tokens per step."""
    learning_rate: float = 2e-4
    """Adam's peak learning rate."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    warmup_steps: int = 0
    """Linear learning-rate warm-up from 0 over this many steps."""
    decay_steps: int = 0
    """Linear decay to 0 over the last this many steps (Conerly et al. 2024, the
    Anthropic April update, decays over the last 20%)."""
    grad_clip: float | None = None
    """Clip the gradient's global norm to this (None: no clipping)."""
    l1_coefficient: float = 5.0
    """relu: lambda of the L1 penalty sum_i |z_i| (mean over tokens)."""
    l1_decoder_norm: bool = False
    """relu: weight each latent's L1 term by its decoder row norm,
    sum_i |z_i| ||W_dec[i]|| (Anthropic's April 2024 update; use with
    normalize_decoder off, as there)."""
    l0_coefficient: float = 1e-3
    """jumprelu: lambda of the L0 penalty sum_i H(pre_i - theta_i)."""
    sparsity_warmup_steps: int = 0
    """Linear warm-up of the L1/L0 coefficient from 0 (Rajamanoharan et al. 2024)."""
    bandwidth: float = 1e-3
    """jumprelu: width eps of the rectangle kernel of the straight-through
    pseudo-derivatives (Rajamanoharan et al. 2024: 0.001 on inputs normalised to
    mean squared norm 1; SAELens's default is 0.05)."""
    threshold_init: float = 1e-3
    """jumprelu: the initial threshold of every latent (Rajamanoharan et al. 2024's
    0.001; SAELens's default is 0.01)."""
    threshold_beta: float = 0.999
    """batchtopk: the inference threshold is an exponential moving average,
    t <- beta * t + (1 - beta) * m, of m = the smallest kept positive value of each
    training batch; the first batch sets t = m (dictionary_learning's estimator,
    with its beta)."""
    aux_k: int | None = None
    """AuxK (Gao et al. 2024): the k_aux largest dead latents of each token
    reconstruct the residual x - x_hat. None: off. (topk, batchtopk, matryoshka.)"""
    aux_coefficient: float = 1 / 32
    """AuxK's weight in the loss (Gao et al. 2024: 1/32)."""
    dead_tokens: int = 10_000_000
    """A latent is dead once it has not fired in this many training tokens
    (sparsify's default window)."""
    aux_normalization: str = "x_variance"
    """How AuxK's squared error (summed over the batch) is normalised; the peers
    disagree: x_variance divides by the batch's total variance of x (sparsify),
    residual_variance by the total variance of the residual (OpenAI's normalised MSE;
    dictionary_learning), none is the mean over tokens of the squared error
    (SAELens). All scale by min(dead / k_aux, 1) (sparsify, SAELens;
    dictionary_learning does not)."""
    normalize_decoder: bool = True
    """Keep decoder rows at unit norm: the gradient component parallel to each row is
    removed before the step and rows are renormalised after it (Bricken et al. 2023;
    sparsify; dictionary_learning. SAELens 6's TopK instead scales the latents by the
    decoder norms)."""
    encoder_init_norm: float = 0.577
    """W_enc starts as W_dec.T times this (W_dec's rows have unit norm; Gao et al.
    2024 tie the two at the start). 0.577 = 1/sqrt(3) is the row norm of torch's
    default nn.Linear init, the scale sparsify's encoder starts at. With Adam's
    fixed-size steps the start's scale sets how fast the encoder moves: on MiniLM
    activations, 100 steps of TopK at lr 2e-4 reach FVU 0.33 from 0.577, 0.35 from
    0.3, 0.39 from 0.1 and 0.42 from 1."""
    b_dec_init: str = "geometric_median"
    """b_dec's start: the geometric median of a sample (Bricken et al. 2023;
    Weiszfeld's iterations), its mean, or zeros."""
    init_sample_tokens: int = 4096
    """Tokens sampled for b_dec's start and the input normalisation."""
    input_normalization: str = "d_in"
    """A fixed input scale measured on the sample before training: d_in makes the
    mean squared norm of x equal d_in (SAELens's expected_average_only_in), unit
    makes it 1, none leaves x as it is."""
    precision: str = "float32"
    """Compute precision: float32, or bfloat16 matrix products with float32 master
    weights, loss and JumpReLU threshold."""
    seed: int = 0
    """Initialisation and shuffle seed."""

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            check_int(name, getattr(self, name), minimum=1)
        for name in ("warmup_steps", "decay_steps", "sparsity_warmup_steps", "seed"):
            check_int(name, getattr(self, name), minimum=0)
        check_int("dead_tokens", self.dead_tokens, minimum=1)
        check_int("init_sample_tokens", self.init_sample_tokens, minimum=1)
        for name in (
            "learning_rate",
            "adam_eps",
            "l1_coefficient",
            "l0_coefficient",
            "bandwidth",
            "threshold_init",
            "aux_coefficient",
            "encoder_init_norm",
        ):
            check_float(name, getattr(self, name))
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in (
            "bandwidth",
            "threshold_init",
            "learning_rate",
            "encoder_init_norm",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        betas = tuple(self.adam_betas)
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ConfigError(f"adam_betas must be two numbers in [0, 1), got {betas}")
        object.__setattr__(self, "adam_betas", betas)
        check_float("threshold_beta", self.threshold_beta)
        if not 0 <= self.threshold_beta < 1:
            raise ConfigError(
                f"threshold_beta must be in [0, 1), got {self.threshold_beta}"
            )
        if self.grad_clip is not None:
            check_float("grad_clip", self.grad_clip)
            if self.grad_clip <= 0:
                raise ConfigError(f"grad_clip must be > 0, got {self.grad_clip}")
        if self.aux_k is not None:
            check_int("aux_k", self.aux_k, minimum=1)
        check_choice("aux_normalization", self.aux_normalization, AUX_NORMALIZATIONS)
        check_choice("b_dec_init", self.b_dec_init, B_DEC_INITS)
        check_choice(
            "input_normalization", self.input_normalization, INPUT_NORMALIZATIONS
        )
        check_choice("precision", self.precision, DICT_PRECISIONS)
        for name in ("l1_decoder_norm", "normalize_decoder"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false")
        if self.warmup_steps + self.decay_steps > self.steps:
            raise ConfigError(
                f"warmup_steps + decay_steps ({self.warmup_steps} + "
                f"{self.decay_steps}) exceed steps ({self.steps})"
            )

    def check_model(self, config: DictConfig) -> None:
        """Raise ConfigError where this training does not fit ``config``."""
        if self.aux_k is not None:
            if config.activation not in ("topk", "batchtopk", "matryoshka"):
                raise ConfigError(
                    f"aux_k needs a top-k rule; activation is {config.activation}"
                )
            if self.aux_k > config.d_sae:
                raise ConfigError(
                    f"aux_k={self.aux_k} is larger than the dictionary "
                    f"(d_sae={config.d_sae})"
                )

    def replace(self, **changes: Any) -> DictTrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["adam_betas"] = list(self.adam_betas)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DictTrainConfig:
        return from_fields(cls, dict(data), "dictionary training config")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DictTrainConfig:
        return cls.from_dict(json_object(text))

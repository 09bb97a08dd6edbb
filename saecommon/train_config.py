"""The training config schema: ``TrainConfig`` (how to train) and ``RunConfig`` = model
(``SAEConfig``) + training; a RunConfig is what ``scripts/train.py`` builds from flags
and what a run directory stores as config.json. Presets live in presets.py, the rules
applied per step and per epoch in schedules.py.
"""

from __future__ import annotations

import dataclasses
import json

from saecommon.config import (
    ConfigError,
    SAEConfig,
    check_choice,
    check_float,
    check_int,
    from_fields,
)

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "plateau")
NOISES = ("none", "gaussian", "masking")
PIXEL_SCALES = ("unit", "symmetric")
SHUFFLE_SOURCES = ("framework", "numpy")
PRECISIONS = ("float32", "bfloat16")
DATA_FIELDS = (
    "dataset",
    "pixel_scale",
    "normalize",
    "val_fraction",
    "noise",
    "noise_std",
    "mask_fraction",
)
"""The TrainConfig fields that say what data a model sees (--help's "data" group; the
evaluation may override them: ``evaluation.EVAL_FIELDS``)."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train: data, optimizer, schedule, denoising, seed."""

    dataset: str = "mnist"
    """"mnist" (ships with the project), a folder of the four IDX files, or tfds:NAME."""
    epochs: int = 10
    """Passes over the training set."""
    batch_size: int = 512
    """Minibatch size. The short last batch of an epoch is dropped, so every step has
    the same static shape (the shuffle changes each epoch, so every sample is seen)."""
    eval_batch_size: int = 1000
    """Batch size for evaluation; evaluation covers every sample."""
    optimizer: str = "adam"
    """adam, adamw (decoupled weight decay) or sgd (with momentum)."""
    learning_rate: float = 1e-3
    """Base learning rate."""
    weight_decay: float = 1e-4
    """AdamW's decoupled weight decay (ignored by adam and sgd)."""
    momentum: float = 0.9
    """SGD momentum (ignored by adam and adamw)."""
    schedule: str = "constant"
    """constant; cosine (decay to 0 over all steps); plateau (multiply by
    plateau_factor after plateau_patience epochs without validation improvement)."""
    plateau_factor: float = 0.1
    """Reduce-on-plateau multiplier, in (0, 1)."""
    plateau_patience: int = 10
    """Epochs without improvement before reduce-on-plateau acts."""
    noise: str = "none"
    """Denoising, applied to the model's input (after pixel_scale and normalize):
    none, gaussian (x + noise_std * N(0, 1), clipped to where pixels 0 and 1 sit:
    [0, 1], or [-1, 1] with pixel_scale symmetric) or masking (a fraction
    mask_fraction of pixels set to pixel 0: 0, or -1 with pixel_scale symmetric). The
    target is the clean input."""
    noise_std: float = 0.1
    """Standard deviation of Gaussian noise, in the units of the model's input: [0, 1]
    pixels; [-1, 1] with pixel_scale symmetric (std 1 there is std 0.5 in [0, 1]
    pixels, the tutorial's noise); standardized units with normalize."""
    mask_fraction: float = 0.25
    """Fraction of pixels masking noise sets to pixel 0, in [0, 1)."""
    normalize: bool = False
    """Standardise pixels with the training set's mean/std (after scaling to [0, 1])."""
    pixel_scale: str = "unit"
    """How uint8 pixels p become the model's input: unit (p / 255, in [0, 1]) or
    symmetric ((p / 255 - 0.5) / 0.5, in [-1, 1]: torchvision's Normalize((0.5,),
    (0.5,)), for a tanh output). Pictures and PSNR map the data back to [0, 1]. Not
    with normalize: standardizing undoes any such affine map (the data would be
    normalize's alone), so asking for both is an error rather than a silent no-op.
    Not with loss bce, whose targets must lie in [0, 1]."""
    val_fraction: float = 0.0
    """Hold out this last fraction of the training set for validation; 0 validates on
    the test split."""
    seed: int = 0
    """Seeds init, shuffling and noise."""
    shuffle: bool = True
    """Reshuffle the training set every epoch. False visits it in order (with no noise,
    both packages then see the same batches: the cross-framework training tests)."""
    shuffle_source: str = "framework"
    """Who draws each epoch's order: "framework" (JAX's or torch's PRNG, on the device)
    or "numpy" (``epoch_order``: the same order in both packages, so runs of jaxsae
    and torchsae from one init see the same batches; noise stays the framework's)."""
    layerwise_epochs: tuple[int, ...] = ()
    """Greedy layer-wise pretraining (mlp): epochs for each stage, one per encoder
    layer, outermost first; ``epochs`` then fine-tunes the whole model. Empty: none.
    See saecommon/layerwise.py."""
    layerwise_tied: bool = False
    """Tie the decoder weights while pretraining layer-wise (the fine-tune follows the
    model's ``tied``: a tied pretraining may be fine-tuned untied)."""
    precision: str = "float32"
    """Training's forward pass: float32, or bfloat16 (mixed precision: each step casts
    the float32 master weights and the input to bfloat16, runs the model, sparsity
    masks included, in bfloat16, and casts its outputs back to float32 for the loss
    and penalties; gradients, weights and optimizer state stay float32). Evaluation
    and checkpoints are float32 either way."""

    def __post_init__(self):
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ConfigError(
                f"dataset must be a non-empty string, got {self.dataset!r}"
            )
        check_int("epochs", self.epochs, minimum=1)
        check_int("batch_size", self.batch_size, minimum=1)
        check_int("eval_batch_size", self.eval_batch_size, minimum=1)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        for name in ("learning_rate", "weight_decay", "momentum", "noise_std"):
            check_float(name, getattr(self, name))
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        check_choice("schedule", self.schedule, SCHEDULES)
        check_float("plateau_factor", self.plateau_factor)
        if not 0 < self.plateau_factor < 1:
            raise ConfigError(
                f"plateau_factor must be in (0, 1), got {self.plateau_factor}"
            )
        check_int("plateau_patience", self.plateau_patience, minimum=0)
        check_choice("noise", self.noise, NOISES)
        check_choice("shuffle_source", self.shuffle_source, SHUFFLE_SOURCES)
        check_choice("precision", self.precision, PRECISIONS)
        if self.noise_std < 0:
            raise ConfigError(f"noise_std must be >= 0, got {self.noise_std}")
        check_float("mask_fraction", self.mask_fraction)
        if not 0 <= self.mask_fraction < 1:
            raise ConfigError(
                f"mask_fraction must be in [0, 1), got {self.mask_fraction}"
            )
        if not isinstance(self.normalize, bool):
            raise ConfigError(
                f"normalize must be true or false, got {self.normalize!r}"
            )
        check_choice("pixel_scale", self.pixel_scale, PIXEL_SCALES)
        if self.normalize and self.pixel_scale != "unit":
            raise ConfigError(
                f"pixel_scale {self.pixel_scale!r} with normalize: standardizing "
                "undoes the scaling (the data would be normalize's alone); set "
                "pixel_scale 'unit' or normalize false"
            )
        check_float("val_fraction", self.val_fraction)
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(
                f"val_fraction must be in [0, 1), got {self.val_fraction}"
            )
        check_int("seed", self.seed, minimum=0)
        for name in ("shuffle", "layerwise_tied"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(
                    f"{name} must be true or false, got {getattr(self, name)!r}"
                )
        if self.shuffle_source == "numpy" and not self.shuffle:
            raise ConfigError(
                "shuffle_source numpy draws a shuffle, but shuffle is false (the "
                "data would be visited in order)"
            )
        if not isinstance(self.layerwise_epochs, list | tuple):
            raise ConfigError(
                "layerwise_epochs must be a list of epochs per stage, got "
                f"{self.layerwise_epochs!r}"
            )
        # JSON gives lists; keep the dataclass hashable and comparable.
        object.__setattr__(self, "layerwise_epochs", tuple(self.layerwise_epochs))
        for i, epochs in enumerate(self.layerwise_epochs):
            check_int(f"layerwise_epochs[{i}]", epochs, minimum=1)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A whole experiment: the model and how to train it."""

    model: SAEConfig = SAEConfig()
    train: TrainConfig = TrainConfig()

    def __post_init__(self):
        if isinstance(self.model, dict):
            object.__setattr__(self, "model", SAEConfig.from_dict(self.model))
        if isinstance(self.train, dict):
            object.__setattr__(
                self, "train", from_fields(TrainConfig, self.train, "TrainConfig")
            )
        if self.model.loss == "bce" and self.train.pixel_scale != "unit":
            raise ConfigError(
                "bce needs targets in [0, 1] (and a sigmoid output): set pixel_scale "
                f"'unit' (got {self.train.pixel_scale!r}), or use loss mse"
            )

    def to_json(self) -> str:
        data = {"model": self.model.to_dict(), "train": dataclasses.asdict(self.train)}
        return json.dumps(data, sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"run config is not valid JSON: {err}") from None
        if not isinstance(data, dict) or set(data) != {"model", "train"}:
            raise ConfigError(
                "run config JSON must be an object with 'model' and 'train'"
            )
        return cls(model=data["model"], train=data["train"])

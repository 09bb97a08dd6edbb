"""The evaluation's denoising noise, drawn once in numpy so that jaxsae and torchsae
see the same noisy test inputs (JAX's PRNG never matches torch's).

``noisy_psnr`` is the noisy input against the clean image, ``denoised_psnr`` (and
``denoised_mse``) the reconstruction of the noisy input against the clean image.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from saecommon.config import ConfigError, check_float, check_int
from saecommon.train_config import TrainConfig

NOISE_SEED = 0
"""Seed of the denoising noise (numpy's default_rng)."""


@dataclasses.dataclass(frozen=True)
class Noise:
    """Denoising noise for evaluation, drawn once in numpy so that jaxsae and torchsae
    see the same noisy inputs (JAX's PRNG never matches torch's). Applied to the
    model's input by the trainers' rule (``corrupt``): the std is in the units of the
    model's input ([-1, 1] pixels with pixel_scale symmetric), clipped to where pixels
    0 and 1 sit there, and masking sets pixels to pixel 0."""

    kind: str
    """gaussian (x + std * N(0, 1), clipped to the pixel range) or masking (a fraction
    mask_fraction of pixels set to the low end of the pixel range, pixel 0)."""
    std: float = 0.1
    """Standard deviation of Gaussian noise, in the units of the model's input."""
    mask_fraction: float = 0.25
    """Fraction of pixels masking sets to pixel 0, in [0, 1)."""
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

    def apply(self, x, pixel_range=(0.0, 1.0)) -> np.ndarray:
        """[n, features] model input -> [n, features] float32 noisy copy;
        ``pixel_range`` is where pixels 0 and 1 sit (``PreparedData.pixel_range``)."""
        x = np.asarray(x, dtype=np.float32)
        lo, hi = np.float32(pixel_range[0]), np.float32(pixel_range[1])
        rng = np.random.default_rng(self.seed)
        if self.kind == "gaussian":
            noise = rng.standard_normal(x.shape, dtype=np.float32)
            return np.clip(x + np.float32(self.std) * noise, lo, hi)
        keep = rng.random(x.shape, dtype=np.float32) >= self.mask_fraction
        return np.where(keep, x, lo)

    def describe(self) -> str:
        if self.kind == "gaussian":
            return f"gaussian std {self.std:g}, seed {self.seed}"
        return f"masking {self.mask_fraction:g}, seed {self.seed}"

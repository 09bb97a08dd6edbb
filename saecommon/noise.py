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

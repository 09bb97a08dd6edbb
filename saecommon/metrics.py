"""The metric formulas, each defined once (numpy), for both trainers' per-epoch
evaluation and for the evaluation command.

Reconstruction: :func:`mse`, :func:`psnr` (from the pooled mse), :func:`bce_from_logits`
and :func:`bce_clipped`. Sparsity: :class:`CodeStats`, per-unit statistics of a code
that merge batch by batch, so a trainer reduces each batch on its device and reads
``l0``, ``dead_fraction`` and ``constant_fraction`` from the same definitions the
evaluation applies to a whole code array (:func:`l0`, :func:`dead_fraction`, ... are
``CodeStats.of(code)``'s).

Definitions, over the samples of a split:

- ``l0``: mean over samples of the number of non-zero code units (exactly != 0).
- ``activation_frequency[j]``: the share of samples on which unit j is non-zero.
- ``dead_fraction``: the share of units with frequency 0 (zero on every sample).
- ``constant_fraction``: the share of units that take one value on every sample, dead
  units among them (a dead inner layer leaves its code units constant but not zero:
  they carry no information either).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

BCE_EPS = 1e-7
"""Clip for the BCE of a non-sigmoid (or normalized) model's reconstruction."""


# --------------------------------------------------------------------------- reconstruction


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


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(
            f"expected two non-empty arrays of one shape, got {a.shape} and {b.shape}"
        )
    return a, b


# --------------------------------------------------------------------------- sparsity


@dataclasses.dataclass(frozen=True, eq=False)
class CodeStats:
    """Per-unit statistics of a code over ``samples`` samples, from which every
    sparsity metric is read. Two batches' stats :meth:`merge` into their union's, so
    a trainer computes ``active``, ``low`` and ``high`` per batch on its device and
    builds this once per split."""

    samples: int
    """How many samples (rows of the code) these statistics cover; >= 1."""
    active: np.ndarray
    """[code] int: on how many samples each unit is non-zero."""
    low: np.ndarray
    """[code] each unit's smallest value."""
    high: np.ndarray
    """[code] each unit's largest value."""

    def __post_init__(self):
        if self.samples < 1:
            raise ValueError(f"code statistics need >= 1 sample, got {self.samples}")
        shapes = {np.shape(a) for a in (self.active, self.low, self.high)}
        if len(shapes) != 1 or len(next(iter(shapes))) != 1:
            raise ValueError(
                f"active, low and high must be [code] each, got shapes {shapes}"
            )

    @classmethod
    def of(cls, code) -> CodeStats:
        """The statistics of ``code`` [n, code], n >= 1."""
        z = np.asarray(code)
        if z.ndim != 2 or z.shape[0] < 1:
            raise ValueError(f"code must be [n, code] with n >= 1, got shape {z.shape}")
        return cls(
            z.shape[0], np.sum(z != 0, axis=0), np.min(z, axis=0), np.max(z, axis=0)
        )

    def merge(self, other: CodeStats) -> CodeStats:
        """The statistics of both sets of samples together."""
        return CodeStats(
            self.samples + other.samples,
            self.active + other.active,
            np.minimum(self.low, other.low),
            np.maximum(self.high, other.high),
        )

    @property
    def activation_frequency(self) -> np.ndarray:
        """[code] float64: the share of samples on which each unit is non-zero."""
        return np.asarray(self.active, dtype=np.float64) / self.samples

    @property
    def l0(self) -> float:
        """Mean over samples of the number of non-zero units."""
        return float(np.sum(self.active, dtype=np.float64) / self.samples)

    @property
    def dead_fraction(self) -> float:
        """The share of units that are zero on every sample."""
        return float(np.mean(np.asarray(self.active) == 0))

    @property
    def constant_fraction(self) -> float:
        """The share of units that take one value on every sample (zero or not)."""
        return float(np.mean(np.asarray(self.low) == np.asarray(self.high)))

    def metrics(self) -> dict[str, float]:
        """{"l0", "dead_fraction", "constant_fraction"}: the sparsity metrics that
        the trainers record per epoch and the evaluation reports."""
        return {
            "l0": self.l0,
            "dead_fraction": self.dead_fraction,
            "constant_fraction": self.constant_fraction,
        }


def activation_frequency(code) -> np.ndarray:
    """[code] float64: the share of samples on which each unit of ``code`` [n, code]
    is non-zero."""
    return CodeStats.of(code).activation_frequency


def l0(code) -> float:
    """Mean over samples of the number of non-zero units of ``code`` [n, code]."""
    return CodeStats.of(code).l0


def dead_fraction(code) -> float:
    """The share of units of ``code`` [n, code] that are zero on every sample."""
    return CodeStats.of(code).dead_fraction


def constant_fraction(code) -> float:
    """The share of units of ``code`` [n, code] that take one value on every sample
    (zero or not)."""
    return CodeStats.of(code).constant_fraction


# --------------------------------------------------------------------------- dictionaries


@dataclasses.dataclass
class ReconStats:
    """Sums over tokens that give a dictionary SAE's reconstruction metrics and merge
    batch by batch (float64), so a streamed evaluation reads the same definitions as
    one array:

    - ``fvu``: fraction of variance unexplained, sum ||x - x_hat||^2 over
      sum ||x - mean(x)||^2 (the mean over tokens, per dimension);
      ``explained_variance`` = 1 - fvu;
    - ``cosine``: mean over tokens of cos(x, x_hat) (0 where either is 0);
    - ``relative_bias``: E||x_hat||^2 / E[x . x_hat], the relative reconstruction
      bias gamma of Rajamanoharan et al. 2024 (Gated SAEs): 1 is unbiased, < 1
      shrinks.
    """

    n: int = 0
    sq_error: float = 0.0
    sum_x: np.ndarray | float = 0.0
    sum_sq_x: float = 0.0
    cosine_sum: float = 0.0
    dot: float = 0.0
    sq_hat: float = 0.0

    @classmethod
    def of(cls, x, x_hat) -> ReconStats:
        x, x_hat = _pair(x, x_hat)
        x = x.reshape(x.shape[0], -1)
        x_hat = x_hat.reshape(x.shape)
        norms = np.linalg.norm(x, axis=1) * np.linalg.norm(x_hat, axis=1)
        dots = np.sum(x * x_hat, axis=1)
        cos = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
        return cls(
            n=x.shape[0],
            sq_error=float(np.sum((x - x_hat) ** 2)),
            sum_x=x.sum(axis=0),
            sum_sq_x=float(np.sum(x**2)),
            cosine_sum=float(cos.sum()),
            dot=float(dots.sum()),
            sq_hat=float(np.sum(x_hat**2)),
        )

    def merge(self, other: ReconStats) -> ReconStats:
        return ReconStats(
            n=self.n + other.n,
            sq_error=self.sq_error + other.sq_error,
            sum_x=self.sum_x + other.sum_x,
            sum_sq_x=self.sum_sq_x + other.sum_sq_x,
            cosine_sum=self.cosine_sum + other.cosine_sum,
            dot=self.dot + other.dot,
            sq_hat=self.sq_hat + other.sq_hat,
        )

    @property
    def fvu(self) -> float:
        total = self.sum_sq_x - float(np.sum(np.square(self.sum_x))) / self.n
        return self.sq_error / total if total > 0 else math.nan

    @property
    def explained_variance(self) -> float:
        return 1.0 - self.fvu

    @property
    def cosine(self) -> float:
        return self.cosine_sum / self.n

    @property
    def relative_bias(self) -> float:
        return self.sq_hat / self.dot if self.dot else math.nan

    def as_dict(self) -> dict[str, float]:
        return {
            "fvu": self.fvu,
            "explained_variance": self.explained_variance,
            "cosine": self.cosine,
            "relative_bias": self.relative_bias,
        }


def fvu(x, x_hat) -> float:
    """Fraction of variance unexplained of ``x_hat`` for ``x`` [n, d]
    (:class:`ReconStats`)."""
    return ReconStats.of(x, x_hat).fvu

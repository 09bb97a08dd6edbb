"""Hard sparsity layers: per-sample top-k and lifetime (winner-take-all) top-k.

Tie rule, the same in torchsae on every device: among equal values the lower index
wins (lower feature index for per-sample top-k, lower sample index for lifetime top-k).
The library's top-k is asked only for the *value* of the k-th largest entry, which is
unambiguous; the mask is "strictly above it, plus the first ``need`` entries equal to
it", so no library tie-breaking (and no -0.0 vs 0.0 ordering) can leak in.

``apply_mask`` is the one ``jax.custom_vjp``: its backward passes the incoming gradient
through the kept entries only. ``topk`` and ``lifetime_topk`` are mask-then-apply;
``sparsity_mask`` is the model's rule (top-k, then lifetime top-k in training).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsae import cpu_kernels
from jaxsae.cpu_kernels import partitioner_tracing
from saecommon.config import SAEConfig, check_topk, lifetime_count, resolve_lifetime_k


def top_k(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """(values, indices) [..., k] of the k largest entries of each row, as
    ``jax.lax.top_k`` gives them (larger first, equal values by lower index).

    On the CPU this is jaxsae's top-k kernel (``jaxsae.cpu_kernels``: the same
    result on every core). Otherwise ``lax.top_k`` behind an optimisation barrier:
    fused with its consumer, XLA turns the top-k into a full sort of each row on the
    CPU (0.06 s -> 2.2 s on [4096, 3072], k=32); alone it keeps its kernel. Traced
    inside ``for_partitioner()``, plain ``lax.top_k``."""
    return cpu_kernels.top_k(x, k, _xla_top_k)


def relu_top_k(x: jax.Array, bias: jax.Array, k: int) -> jax.Array:
    """The indices [..., k] of ``top_k(jax.nn.relu(x + bias), k)`` (no gradient);
    on the CPU the kernel applies bias and relu as it reads x."""
    return cpu_kernels.relu_top_k(x, bias, k, _xla_top_k)


def _xla_top_k(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    values_indices = jax.lax.top_k(x, k)
    if partitioner_tracing():
        return values_indices
    return jax.lax.optimization_barrier(values_indices)


def _first_k_mask(x: jax.Array, k: int) -> jax.Array:
    """Keep the k largest entries of each row of x [rows, n]; ties to the lower index.
    On the CPU this is jaxsae's mask kernel: the same mask from one selection and two
    passes over x on every core, where each XLA op of ``_xla_first_k_mask`` takes a
    pass and its sums run on one thread."""
    return cpu_kernels.first_k_mask(x, k, _xla_first_k_mask)


def _xla_first_k_mask(x: jax.Array, k: int) -> jax.Array:
    kth = top_k(x, k)[0][:, k - 1 : k]
    above = x > kth
    tied = x == kth
    need = k - jnp.sum(above, axis=-1, keepdims=True)
    # Where no row has more entries equal to its k-th value than it needs, every tied
    # entry is kept and the running count (a scan over each row) can be skipped.
    return jax.lax.cond(
        jnp.all(jnp.sum(tied, axis=-1, keepdims=True) == need),
        lambda: above | tied,
        lambda: above | (tied & (jnp.cumsum(tied, axis=-1) <= need)),
    )


def topk_mask(x: jax.Array, k: int) -> jax.Array:
    """Bool mask [batch, code]: the k largest units of each sample."""
    _check_2d(x)
    check_topk(k, x.shape[1])
    return _first_k_mask(x, k)


def lifetime_topk_mask(x: jax.Array, k: int | None = None, rate: float | None = None):
    """Bool mask [batch, code]: per code unit, its k largest values across the batch.

    Give ``k`` (clamped to the batch) or ``rate`` (k = ceil(rate * batch)).
    """
    _check_2d(x)
    k = resolve_lifetime_k(x.shape[0], k, rate)
    return _lifetime_mask(x, k)


def _lifetime_mask(x: jax.Array, k: int) -> jax.Array:
    return _first_k_mask(x.T, k).T


@jax.custom_vjp
def apply_mask(x: jax.Array, mask: jax.Array) -> jax.Array:
    """x where mask, else 0; the gradient flows through the kept entries only.

    Today the custom backward gives what autodiff of ``jnp.where`` gives; it is
    written out so that every sparsity layer's gradient is this one function, stated
    once and checked against torchsae's twin, and so that a layer whose backward
    differs from the forward's autodiff (a sparse decoder gradient, a straight-through
    estimator) has its place to go."""
    return jnp.where(mask, x, 0)


def _apply_mask_fwd(x, mask):
    return jnp.where(mask, x, 0), mask


def _apply_mask_bwd(mask, g):
    return jnp.where(mask, g, 0), None  # the mask is piecewise constant: no gradient


apply_mask.defvjp(_apply_mask_fwd, _apply_mask_bwd)


def sparsity_mask(code: jax.Array, config: SAEConfig, train: bool) -> jax.Array:
    """Bool [batch, code]: per-sample top-k, then lifetime top-k of what it kept (the
    lifetime layer acts in training only). The model's own path: ``config`` was
    validated when it was built, so nothing is checked again here (``topk_mask`` and
    ``lifetime_topk_mask`` check their arguments)."""
    mask = jnp.ones(code.shape, bool)
    if config.topk is not None:
        mask = _first_k_mask(code, config.topk)
        code = jnp.where(mask, code, 0)
    if train and (config.lifetime_k is not None or config.lifetime_rate is not None):
        k = lifetime_count(code.shape[0], config.lifetime_k, config.lifetime_rate)
        mask = mask & _lifetime_mask(code, k)
    return mask


def topk(x: jax.Array, k: int) -> jax.Array:
    """x [batch, code] with all but the k largest units of each sample set to 0."""
    return apply_mask(x, topk_mask(x, k))


def lifetime_topk(x: jax.Array, k: int | None = None, rate: float | None = None):
    """x [batch, code] with all but each unit's k largest values over the batch set to 0."""
    return apply_mask(x, lifetime_topk_mask(x, k, rate))


def _check_2d(x) -> None:
    if x.ndim != 2:
        raise ValueError(
            f"sparsity layers take a code [batch, code], got shape {x.shape}"
        )

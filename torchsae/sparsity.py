"""Hard sparsity layers: per-sample top-k and lifetime (winner-take-all) top-k.

Tie rule, the same in jaxsae on every device: among equal values the lower index
wins (lower feature index for per-sample top-k, lower sample index for lifetime top-k).
``torch.topk`` promises no order among ties, so it is asked only for the *value* of the
k-th largest entry, which is unambiguous; the mask is "strictly above it, plus the first
``need`` entries equal to it", so no library tie-breaking (and no -0.0 vs 0.0 ordering)
can leak in.

``apply_mask`` is the one ``torch.autograd.Function``: its backward passes the incoming
gradient through the kept entries only. ``topk`` and ``lifetime_topk`` are
mask-then-apply; ``sparsity_mask`` is the model's rule (top-k, then lifetime top-k in
training).
"""

from __future__ import annotations

import torch

from saecommon.config import SAEConfig, check_topk, lifetime_count, resolve_lifetime_k
from torchsae.distributed import gather_rows, local_part, rows_total


def _first_k_mask(x: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest entries of each row of x [rows, n]; ties to the lower index."""
    kth = torch.topk(x, k, dim=-1, sorted=True).values[:, k - 1 : k]  # [rows, 1]
    above = x > kth
    tied = x == kth
    need = k - above.sum(dim=-1, keepdim=True)
    return above | (tied & (tied.cumsum(dim=-1) <= need))


def topk_mask(x: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask [batch, code]: the k largest units of each sample."""
    _check_2d(x)
    check_topk(k, x.shape[1])
    return _first_k_mask(x, k)


def lifetime_topk_mask(
    x: torch.Tensor, k: int | None = None, rate: float | None = None
) -> torch.Tensor:
    """Bool mask [batch, code]: per code unit, its k largest values across the batch.

    Give ``k`` (clamped to the batch) or ``rate`` (k = ceil(rate * batch)).
    """
    _check_2d(x)
    return _lifetime_mask(x, resolve_lifetime_k(x.shape[0], k, rate))


def _lifetime_mask(x: torch.Tensor, k: int) -> torch.Tensor:
    return _first_k_mask(x.T, k).T


class _ApplyMask(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mask):
        ctx.save_for_backward(mask)
        return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))

    @staticmethod
    def backward(ctx, g):
        (mask,) = ctx.saved_tensors
        # the mask is piecewise constant: no gradient
        return torch.where(
            mask, g, torch.zeros((), dtype=g.dtype, device=g.device)
        ), None


def apply_mask(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x where mask, else 0; the gradient flows through the kept entries only.

    Today the custom backward gives what autodiff of ``torch.where`` gives; it is
    written out so that every sparsity layer's gradient is this one function, stated
    once and checked against jaxsae's twin, and so that a layer whose backward
    differs from the forward's autodiff (a sparse decoder gradient, a straight-through
    estimator) has its place to go."""
    return _ApplyMask.apply(x, mask)


def sparsity_mask(code: torch.Tensor, config: SAEConfig, train: bool) -> torch.Tensor:
    """Bool [batch, code]: per-sample top-k, then lifetime top-k of what it kept (the
    lifetime layer acts in training only). The model's own path: ``config`` was
    validated when it was built, so nothing is checked again here (``topk_mask`` and
    ``lifetime_topk_mask`` check their arguments)."""
    mask = torch.ones(code.shape, dtype=torch.bool, device=code.device)
    if config.topk is not None:
        mask = _first_k_mask(code, config.topk)
        code = torch.where(
            mask, code, torch.zeros((), dtype=code.dtype, device=code.device)
        )
    if train and (config.lifetime_k is not None or config.lifetime_rate is not None):
        # over the global batch when it is split over processes (torchsae.distributed)
        n = code.shape[0]
        k = lifetime_count(rows_total(n), config.lifetime_k, config.lifetime_rate)
        mask = mask & local_part(_lifetime_mask(gather_rows(code), k), n)
    return mask


def topk(x: torch.Tensor, k: int) -> torch.Tensor:
    """x [batch, code] with all but the k largest units of each sample set to 0."""
    return apply_mask(x, topk_mask(x, k))


def lifetime_topk(
    x: torch.Tensor, k: int | None = None, rate: float | None = None
) -> torch.Tensor:
    """x [batch, code] with all but each unit's k largest values over the batch set to 0."""
    return apply_mask(x, lifetime_topk_mask(x, k, rate))


def _check_2d(x) -> None:
    if x.ndim != 2:
        raise ValueError(
            f"sparsity layers take a code [batch, code], got shape {x.shape}"
        )

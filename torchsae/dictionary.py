"""Dictionary SAEs on transformer activations (the schema and the model's formulas:
saecommon/dictionary_config.py), as pure functions of a parameter dict.

Parameters: ``W_enc`` [d_in, d_sae], ``b_enc`` [d_sae], ``W_dec`` [d_sae, d_in],
``b_dec`` [d_in] and, for jumprelu, ``log_threshold`` or ``threshold`` [d_sae]
(config.threshold_param). The batch rules' inference threshold is not a parameter: it
is estimated (``update_threshold``) and passed in.

Custom backwards (each mirrored by a ``jax.custom_vjp`` in jaxsae):

- ``jumprelu`` and ``step``: straight-through pseudo-derivatives for the threshold with
  a rectangle kernel of bandwidth eps (Rajamanoharan et al. 2024, eqs. 11-12);
- ``gather_pre`` and ``sparse_decode``: the TopK path's encoder and decoder gradients
  touch only the k selected latents of each token (index_add_, embedding_bag; no
  dense [tokens, d_sae] product in the backward pass).

Tie rule, as for every sparsity layer of this project: among equal values the lower
index wins (``torchsae.sparsity``'s mask; ``torch.topk`` is asked for no indices).
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from saecommon.dictionary_config import DictConfig, DictTrainConfig
from torchsae import distributed
from torchsae.sparsity import _first_k_mask, apply_mask

__all__ = [
    "Coefficients",
    "DictState",
    "METRICS",
    "aux_mask",
    "batchtopk_mask",
    "decode",
    "encode",
    "forward",
    "gather_pre",
    "init_state",
    "jumprelu",
    "loss_terms",
    "make_optimizer",
    "make_train_step",
    "params_from_state_dict",
    "pre_activation",
    "remove_parallel_component",
    "sparse_decode",
    "step",
    "threshold_value",
    "to_state_dict",
    "unit_rows",
    "update_threshold",
]

METRICS = ("recon", "sparsity", "aux", "l0", "fvu", "cosine", "relative_bias")
"""The per-step metrics besides loss and dead_fraction (``make_train_step``)."""

Params = dict[str, torch.Tensor]


# --------------------------------------------------------------------------- custom backwards


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return torch.where(pre > threshold, pre, torch.zeros((), dtype=pre.dtype))

    @staticmethod
    def backward(ctx, g):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        d_pre = torch.where(pre > threshold, g, torch.zeros((), dtype=g.dtype))
        kernel = _rectangle((pre - threshold) / eps)
        d_threshold = (-(threshold / eps) * kernel * g).sum(dim=0)
        return d_pre, d_threshold.reshape(threshold.shape), None


def jumprelu(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float):
    """pre * H(pre - threshold) [tokens, d_sae]. Gradients: H(pre - theta) for pre;
    for theta the pseudo-derivative -(theta / eps) K((pre - theta) / eps), K the
    rectangle kernel 1{|u| < 1/2} (Rajamanoharan et al. 2024, eq. 11)."""
    return _JumpReLU.apply(pre, threshold, bandwidth)


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, g):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        kernel = _rectangle((pre - threshold) / eps)
        d_threshold = (-(1.0 / eps) * kernel * g).sum(dim=0)
        return torch.zeros_like(pre), d_threshold.reshape(threshold.shape), None


def step(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float):
    """H(pre - threshold) [tokens, d_sae], the L0 penalty's step function, taken on
    the pre-activation (not on the JumpReLU output, whose zeros would hide the
    kernel's window below theta). Gradients: none for pre; for theta
    -(1 / eps) K((pre - theta) / eps) (Rajamanoharan et al. 2024, eq. 12)."""
    return _Step.apply(pre, threshold, bandwidth)


def _rectangle(u: torch.Tensor) -> torch.Tensor:
    return (u.abs() < 0.5).to(u.dtype)


class _GatherPre(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xc, b_dec, w_enc, b_enc, idx, pre, subtract_b_dec):
        ctx.save_for_backward(xc, w_enc, idx)
        ctx.subtract_b_dec = subtract_b_dec
        return torch.gather(pre, 1, idx)

    @staticmethod
    def backward(ctx, g):
        xc, w_enc, idx = ctx.saved_tensors
        d_sae = w_enc.shape[1]
        flat = idx.reshape(-1)
        d_b_enc = g.new_zeros(d_sae).index_add_(0, flat, g.reshape(-1))
        d_w_enc = _scatter_outer(g, idx, xc, d_sae).T
        d_b_dec = -(w_enc @ d_b_enc) if ctx.subtract_b_dec else None
        return None, d_b_dec, d_w_enc, d_b_enc, None, None, None


def _scatter_outer(weights, idx, rows, n: int) -> torch.Tensor:
    """[n, d]: out[l] = sum over (t, j) with idx[t, j] = l of weights[t, j] * rows[t],
    by the backward kernel of ``F.embedding_bag`` (that sum is the gradient of its
    table), which adds in place of materialising the [t * j, d] products."""
    with torch.enable_grad():
        table = rows.new_zeros(n, rows.shape[1], requires_grad=True)
        bag = F.embedding_bag(idx, table, per_sample_weights=weights, mode="sum")
        (grad,) = torch.autograd.grad(bag, table, grad_outputs=rows)
    return grad


def gather_pre(xc, b_dec, w_enc, b_enc, idx, pre, subtract_b_dec) -> torch.Tensor:
    """pre[t, idx[t, j]] [tokens, m], differentiable in (b_dec, W_enc, b_enc) as the
    encoder's pre-activation of the selected latents, pre = xc @ W_enc + b_enc with
    xc = x - b_dec (or x): ``pre`` (the dense pre-activation, computed without
    gradient) gives the values; the backward pass adds into the selected columns
    only (b*m*d_in work, not b*d_sae*d_in). The input gets no gradient (it is data);
    b_dec's, summed over tokens, is -W_enc @ (b_enc's)."""
    return _GatherPre.apply(xc, b_dec, w_enc, b_enc, idx, pre, subtract_b_dec)


def sparse_decode(vals, idx, w_dec) -> torch.Tensor:
    """sum_j vals[t, j] * W_dec[idx[t, j]] [tokens, d_in]: the decoder product with
    only the selected latents. ``F.embedding_bag`` with per-sample weights is its
    own custom backward: the values' gradient gathers W_dec's selected rows, W_dec's
    gradient adds into those rows only (torch's embedding_bag kernels, parallel;
    twice as fast here as the same sums written with index_add_)."""
    return F.embedding_bag(idx, w_dec, per_sample_weights=vals, mode="sum")


# --------------------------------------------------------------------------- selection rules


def topk_indices(acts: torch.Tensor, k: int) -> torch.Tensor:
    """int64 [tokens, k]: the k largest latents of each token, ties to the lower
    index, listed by value, largest first (as ``jax.lax.top_k`` lists them)."""
    n = acts.shape[1]
    values, indices = torch.topk(acts, min(k + 1, n), dim=1, sorted=True)
    if k == n or bool((values[:, k] < values[:, k - 1]).all()):
        # no entry outside the k largest equals the k-th: torch.topk's set is the
        # rule's; only the order among equal values is torch's own, so sort it as
        # jax does
        return _value_then_index_order(acts, indices[:, :k])
    mask = _first_k_mask(acts, k)
    cols = mask.nonzero()[:, 1].reshape(acts.shape[0], k)  # ascending index
    return _value_then_index_order(acts, cols)


def _value_then_index_order(acts: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``cols`` [tokens, k] reordered by value, largest first, lower index first
    among equal values."""
    cols = cols.sort(dim=1).values
    order = torch.gather(acts, 1, cols).argsort(dim=1, descending=True, stable=True)
    return torch.gather(cols, 1, order)


def batchtopk_mask(acts: torch.Tensor, k: int) -> torch.Tensor:
    """Bool [tokens, d_sae]: the k * tokens largest entries of ``acts`` over the whole
    batch (Bussmann et al. 2024); ties to the lower flat (token-major) index."""
    n = acts.shape[0] * k
    return _first_k_mask(acts.reshape(1, -1), n).reshape(acts.shape)


def aux_mask(acts: torch.Tensor, dead: torch.Tensor, k_aux: int) -> torch.Tensor:
    """Bool [tokens, d_sae]: per token, the k_aux largest of ``acts`` among the dead
    latents (fewer where fewer are dead); ties to the lower index (Gao et al. 2024)."""
    masked = torch.where(
        dead[None, :], acts, torch.full((), -torch.inf, dtype=acts.dtype)
    )
    return _first_k_mask(masked, k_aux) & dead[None, :]


def threshold_value(params: Params, config: DictConfig) -> torch.Tensor:
    """JumpReLU's theta [d_sae] from its parameterisation."""
    if config.threshold_param == "log":
        return params["log_threshold"].exp()
    return params["threshold"]


# --------------------------------------------------------------------------- the model


def _mm(a: torch.Tensor, b: torch.Tensor, precision: str) -> torch.Tensor:
    """a @ b; bfloat16 inputs with a float32 result under mixed precision."""
    if precision == "bfloat16":
        return (a.to(torch.bfloat16) @ b.to(torch.bfloat16)).to(torch.float32)
    return a @ b


def _linear(xc, w_enc, b_enc, precision: str) -> torch.Tensor:
    """xc @ W_enc + b_enc, in one addmm in float32."""
    if precision == "bfloat16":
        return _mm(xc, w_enc, precision) + b_enc
    return torch.addmm(b_enc, xc, w_enc)


def _scaled(params: Params, x: torch.Tensor, config: DictConfig):
    """(xs, xc): the normalised input x * input_scale, and the encoder's input
    xs - b_dec (or xs without the b_dec subtraction)."""
    xs = x * config.input_scale
    return xs, xs - params["b_dec"] if config.subtract_b_dec else xs


def pre_activation(
    params: Params, x: torch.Tensor, config: DictConfig, precision: str = "float32"
) -> torch.Tensor:
    """pre [tokens, d_sae] = (x * input_scale - b_dec) @ W_enc + b_enc."""
    _, xc = _scaled(params, x, config)
    return _linear(xc, params["W_enc"], params["b_enc"], precision)


def encode(params: Params, x, config: DictConfig, threshold=None) -> torch.Tensor:
    """The latents z [tokens, d_sae] of x [tokens, d_in] at inference: each token on
    its own. batchtopk and matryoshka keep relu(pre) > threshold (the training
    estimate); topk keeps each token's k largest."""
    pre = pre_activation(params, x, config)
    acts = F.relu(pre)
    zero = torch.zeros((), dtype=pre.dtype)
    if config.activation == "relu":
        return acts
    if config.activation == "topk":
        return torch.where(_first_k_mask(acts, config.k), acts, zero)
    if config.activation == "jumprelu":
        return torch.where(pre > threshold_value(params, config), pre, zero)
    return torch.where(acts > threshold, acts, zero)


def decode(params: Params, z: torch.Tensor, config: DictConfig) -> torch.Tensor:
    """x_hat [tokens, d_in] = (z @ W_dec + b_dec) / input_scale."""
    return (z @ params["W_dec"] + params["b_dec"]) / config.input_scale


def forward(params: Params, x, config: DictConfig, threshold=None):
    """(z, x_hat) at inference."""
    z = encode(params, x, config, threshold)
    return z, decode(params, z, config)


class Coefficients(NamedTuple):
    """Per-step scalars the host computes (saecommon.dictionary_config)."""

    lr: float
    sparsity: float  # L1 (relu) or L0 (jumprelu) coefficient after warm-up


def loss_terms(
    params: Params,
    x: torch.Tensor,
    dead: torch.Tensor,
    sparsity_coefficient: float,
    config: DictConfig,
    train: DictTrainConfig,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(loss, terms) of one training batch x [tokens, d_in], in the normalised space
    (x * input_scale). ``dead`` [d_sae] bool marks the latents AuxK may use.

    recon = mean over tokens of ||x_hat - x||^2 (summed over d_in; matryoshka sums it
    over the prefixes); sparsity = coefficient * mean over tokens of sum_i |z_i|
    (relu, times ||W_dec[i]|| with l1_decoder_norm) or of sum_i H(pre_i - theta_i)
    (jumprelu); aux = aux_coefficient * AuxK's normalised error. ``terms`` also holds
    ``fired`` [d_sae] (latents non-zero on some token), ``l0`` and, for the batch
    rules, ``min_kept`` (the smallest kept positive value; inf if none)."""
    act = config.activation
    n = x.shape[0]
    xs, xc = _scaled(params, x, config)
    terms: dict[str, torch.Tensor] = {}
    zero = torch.zeros((), dtype=xs.dtype)
    sparsity = aux = zero
    aux_on = train.aux_k is not None
    if act == "topk":
        with torch.no_grad():  # gather_pre carries the gradient of what is kept
            pre_ng = _linear(xc, params["W_enc"], params["b_enc"], train.precision)
        acts_ng = F.relu(pre_ng)
        idx = topk_indices(acts_ng, config.k)
        if aux_on:
            a_mask = aux_mask(acts_ng, dead, train.aux_k)
            aux_idx = topk_indices(
                torch.where(
                    a_mask, acts_ng, torch.full((), -torch.inf, dtype=xs.dtype)
                ),
                train.aux_k,
            )
            aux_keep = torch.gather(a_mask, 1, aux_idx)
            terms["aux_mask"] = a_mask
            idx_all = torch.cat([idx, aux_idx], dim=1)
        else:
            idx_all = idx
        vals_all = F.relu(
            gather_pre(
                xc.detach(),
                params["b_dec"],
                params["W_enc"],
                params["b_enc"],
                idx_all,
                pre_ng,
                config.subtract_b_dec,
            )
        )
        vals = vals_all[:, : config.k]
        x_hat = sparse_decode(vals, idx, params["W_dec"]) + params["b_dec"]
        recon = ((x_hat - xs) ** 2).sum() / n
        hits = (vals > 0).reshape(-1).long()
        fired = idx.new_zeros(config.d_sae).index_add_(0, idx.reshape(-1), hits)
        fired = distributed.all_sum(fired) > 0
        terms["mask"] = torch.zeros_like(pre_ng, dtype=torch.bool).scatter_(
            1, idx, True
        )
        l0 = (vals > 0).to(xs.dtype).sum() / n
        if aux_on:
            aux_vals = torch.where(aux_keep, vals_all[:, config.k :], zero)
            e_hat = sparse_decode(aux_vals, aux_idx, params["W_dec"])
            aux = _aux_loss(e_hat, xs, x_hat, dead, train)
    else:
        pre = _linear(xc, params["W_enc"], params["b_enc"], train.precision)
        acts = F.relu(pre)
        if act == "relu":
            z = acts
            terms["mask"] = acts.detach() > 0
            weights = params["W_dec"].norm(dim=1) if train.l1_decoder_norm else 1.0
            sparsity = sparsity_coefficient * (z.abs() * weights).sum() / n
        elif act == "jumprelu":
            theta = threshold_value(params, config)
            z = jumprelu(pre, theta, train.bandwidth)
            terms["mask"] = pre.detach() > theta.detach()
            sparsity = (
                sparsity_coefficient * step(pre, theta, train.bandwidth).sum() / n
            )
        else:  # batchtopk, matryoshka: over the global batch (torchsae.distributed)
            everyone = distributed.gather_rows(acts)
            kept = batchtopk_mask(everyone, config.k)
            mask = distributed.local_part(kept, n)
            z = apply_mask(acts, mask)
            terms["mask"] = mask
            inf = torch.full((), torch.inf, dtype=acts.dtype)
            terms["min_kept"] = torch.where(kept & (everyone > 0), everyone, inf).min()
        if act == "matryoshka":
            recon = zero
            x_hat = params["b_dec"]
            start = 0
            for width in config.matryoshka_widths:
                x_hat = x_hat + _mm(
                    z[:, start:width], params["W_dec"][start:width], train.precision
                )
                recon = recon + ((x_hat - xs) ** 2).sum() / n
                start = width
        else:
            x_hat = _mm(z, params["W_dec"], train.precision) + params["b_dec"]
            recon = ((x_hat - xs) ** 2).sum() / n
        fired = distributed.any_rows(z != 0)
        l0 = (z != 0).to(xs.dtype).sum() / n
        if aux_on:
            a_mask = aux_mask(acts.detach(), dead, train.aux_k)
            terms["aux_mask"] = a_mask
            e_hat = _mm(apply_mask(acts, a_mask), params["W_dec"], train.precision)
            aux = _aux_loss(e_hat, xs, x_hat, dead, train)
    loss = recon + sparsity + train.aux_coefficient * aux
    terms.update(recon=recon, sparsity=sparsity, aux=aux, l0=l0, fired=fired)
    terms.update(_recon_metrics(x_hat.detach(), xs))
    return loss, terms


def _recon_metrics(x_hat: torch.Tensor, xs: torch.Tensor) -> dict[str, torch.Tensor]:
    """The batch's fvu, mean cosine of x and x_hat, and relative reconstruction bias
    (saecommon.metrics.ReconStats states them); of the global batch when it is split
    over processes (torchsae.distributed)."""
    total = distributed.all_sum
    dots = (xs * x_hat).sum(dim=1)
    norms = xs.norm(dim=1) * x_hat.norm(dim=1)
    safe = torch.where(norms > 0, norms, torch.ones((), dtype=norms.dtype))
    cosines = torch.where(norms > 0, dots / safe, torch.zeros((), dtype=dots.dtype))
    return {
        "fvu": total(((x_hat - xs) ** 2).sum()) / _centered_square_sum(xs),
        "cosine": total(cosines.sum()) / distributed.rows_total(xs.shape[0]),
        "relative_bias": total((x_hat**2).sum()) / total(dots.sum()),
    }


def _centered_square_sum(v: torch.Tensor) -> torch.Tensor:
    """sum ||v_i - mean(v)||^2 over the (global) batch, without gradient flowing
    in from other processes (a normaliser)."""
    if distributed.current() is None:
        return ((v - v.mean(0)) ** 2).sum()
    mean = distributed.all_sum(v.sum(0)) / distributed.rows_total(v.shape[0])
    return distributed.all_sum(((v - mean) ** 2).sum())


def _aux_loss(e_hat, xs, x_hat, dead, train: DictTrainConfig) -> torch.Tensor:
    """AuxK (Gao et al. 2024): the dead latents' reconstruction e_hat (no b_dec) of
    the residual e = x - x_hat (no gradient), its squared error summed over the batch,
    normalised as train.aux_normalization says, times min(dead / k_aux, 1). Split
    over W processes, a variance normaliser is the global batch's and this
    process's error counts W times (torchsae.distributed's rule for ratios)."""
    e = (xs - x_hat).detach()
    err = ((e_hat - e) ** 2).sum()
    if train.aux_normalization == "x_variance":
        err = err * distributed.scale() / _centered_square_sum(xs)
    elif train.aux_normalization == "residual_variance":
        err = err * distributed.scale() / _centered_square_sum(e)
    else:
        err = err / xs.shape[0]
    scale = torch.clamp(dead.sum().to(xs.dtype) / train.aux_k, max=1.0)
    return scale * err


# --------------------------------------------------------------------------- training


class DictState:
    """Parameters, Adam, the batch threshold, dead-latent counters, step count."""

    def __init__(self, params: Params, optimizer, threshold, since_fired, step=0):
        self.params = params
        self.optimizer = optimizer
        self.threshold = threshold  # [] the batch rules' threshold (0: not yet set)
        self.since_fired = since_fired  # [d_sae] int64: tokens since each latent fired
        self.step = step


def make_optimizer(params: Params, train: DictTrainConfig) -> torch.optim.Adam:
    """Adam (clipping is done by the step, before it); the step sets the learning
    rate each step (it comes from the host)."""
    return torch.optim.Adam(
        list(params.values()),
        lr=train.learning_rate,
        betas=train.adam_betas,
        eps=train.adam_eps,
    )


def params_from_state_dict(state_dict, config: DictConfig, device="cpu"):
    """(params, threshold) on ``device`` from a numpy state dict (SAELens names;
    threshold raw)."""

    def tensor(name):
        return torch.tensor(np.asarray(state_dict[name]), device=device)

    params = {
        k: torch.nn.Parameter(tensor(k)) for k in ("W_enc", "b_enc", "W_dec", "b_dec")
    }
    threshold = torch.zeros((), dtype=params["W_enc"].dtype, device=device)
    if config.activation == "jumprelu":
        theta = tensor("threshold")
        if config.threshold_param == "log":
            params["log_threshold"] = torch.nn.Parameter(theta.log())
        else:
            params["threshold"] = torch.nn.Parameter(theta)
    elif config.has_threshold:
        threshold = tensor("threshold")
    return params, threshold


def to_state_dict(
    params: Params, threshold, config: DictConfig
) -> dict[str, np.ndarray]:
    """The numpy state dict (SAELens names and layouts, threshold raw)."""
    with torch.no_grad():
        out = {
            k: params[k].detach().cpu().numpy().copy()
            for k in ("W_enc", "b_enc", "W_dec", "b_dec")
        }
        if config.activation == "jumprelu":
            out["threshold"] = threshold_value(params, config).cpu().numpy().copy()
        elif config.has_threshold:
            out["threshold"] = threshold.cpu().numpy().copy()
    return out


def init_state(
    state_dict, config: DictConfig, train: DictTrainConfig, device="cpu"
) -> DictState:
    params, threshold = params_from_state_dict(state_dict, config, device)
    return DictState(
        params=params,
        optimizer=make_optimizer(params, train),
        threshold=threshold,
        since_fired=torch.zeros(
            config.d_sae, dtype=torch.int64, device=threshold.device
        ),
    )


def remove_parallel_component(grad: torch.Tensor, w_dec: torch.Tensor) -> torch.Tensor:
    """grad [d_sae, d_in] less its component along each decoder row, so a step moves
    rows along the unit sphere (Bricken et al. 2023; sparsify; dictionary_learning)."""
    dots = (grad * w_dec).sum(dim=1, keepdim=True)
    return grad - dots * w_dec / (w_dec**2).sum(dim=1, keepdim=True)


def unit_rows(w_dec: torch.Tensor) -> torch.Tensor:
    return w_dec / w_dec.norm(dim=1, keepdim=True)


def update_threshold(threshold: torch.Tensor, min_kept: torch.Tensor, beta: float):
    """The batch rules' inference threshold: the first finite estimate sets it, then
    t <- beta * t + (1 - beta) * min_kept (a batch with nothing kept leaves it)."""
    moved = torch.where(
        threshold == 0, min_kept, beta * threshold + (1 - beta) * min_kept
    )
    return torch.where(torch.isfinite(min_kept), moved, threshold).to(threshold.dtype)


class _Objective(torch.nn.Module):
    """``loss_terms`` as a module over the state's parameters (the same Parameter
    objects), for DistributedDataParallel to wrap."""

    def __init__(self, params: Params, config: DictConfig, train: DictTrainConfig):
        super().__init__()
        self.params = torch.nn.ParameterDict(params)
        self.config, self.train = config, train

    def forward(self, x, dead, sparsity_coefficient):
        params = dict(self.params)
        return loss_terms(
            params, x, dead, sparsity_coefficient, self.config, self.train
        )


LOCAL_MEANS = ("recon", "sparsity", "aux", "l0", "loss")
"""The metrics that are means over a process's rows (averaged over processes); the
others are the global batch's already."""


def make_train_step(
    config: DictConfig,
    train: DictTrainConfig,
    split: distributed.Split | None = None,
):
    """``step(state, x, coefficients) -> (state, metrics)`` (state updated in place).
    The order within a step: gradients; the parallel component of W_dec's gradient
    removed; clipping and Adam; the update; decoder rows renormalised; the batch
    threshold and the dead-latent counters updated.

    With ``split`` (one of several processes, torchsae.distributed) ``x`` is this
    process's rows of the global batch: the loss runs under DistributedDataParallel
    (built on the first call, over the state's parameters), the rules over the
    batch and the metrics see the global batch."""
    batch_rule = config.activation in ("batchtopk", "matryoshka")
    wrapped = {}

    def loss_of(state: DictState, x, dead, coefficient):
        if split is None:
            return loss_terms(state.params, x, dead, coefficient, config, train)
        if "ddp" not in wrapped:
            device = state.threshold.device
            wrapped["ddp"] = torch.nn.parallel.DistributedDataParallel(
                _Objective(state.params, config, train),
                device_ids=[device.index] if device.type == "cuda" else None,
            )
        return wrapped["ddp"](x, dead, coefficient)

    def train_step(state: DictState, x: torch.Tensor, coefficients: Coefficients):
        with distributed.batch_split(split) if split else contextlib.nullcontext():
            return _train_step(state, x, coefficients)

    def _train_step(state: DictState, x: torch.Tensor, coefficients: Coefficients):
        params = state.params
        dead = state.since_fired >= train.dead_tokens
        for p in params.values():
            p.grad = None
        loss, terms = loss_of(state, x, dead, coefficients.sparsity)
        loss.backward()
        with torch.no_grad():
            if train.normalize_decoder:
                params["W_dec"].grad = remove_parallel_component(
                    params["W_dec"].grad, params["W_dec"]
                )
            if train.grad_clip is not None:
                _clip_global_norm(list(params.values()), train.grad_clip)
            for group in state.optimizer.param_groups:
                group["lr"] = float(coefficients.lr)
            state.optimizer.step()
            if train.normalize_decoder:
                params["W_dec"].copy_(unit_rows(params["W_dec"]))
            if "threshold" in params:  # raw theta stays >= 0 (SAELens 6 clamps it too)
                params["threshold"].clamp_(min=0)
            if batch_rule:
                state.threshold = update_threshold(
                    state.threshold, terms["min_kept"], train.threshold_beta
                )
            tokens = distributed.rows_total(x.shape[0])
            since = torch.clamp(state.since_fired + tokens, max=train.dead_tokens)
            state.since_fired = torch.where(terms["fired"], 0, since)
        state.step += 1
        metrics = {k: terms[k].detach() for k in METRICS}
        metrics["loss"] = loss.detach()
        if split is not None:
            means = torch.stack([metrics[k] for k in LOCAL_MEANS])
            means = distributed.all_sum(means) / split.size
            metrics.update(zip(LOCAL_MEANS, means))
        metrics["dead_fraction"] = dead.to(x.dtype).mean()
        return state, metrics

    return train_step


def _clip_global_norm(params, max_norm: float) -> None:
    """Scale every gradient by min(1, max_norm / global norm), as optax's
    clip_by_global_norm does (torch's clip_grad_norm_ adds 1e-6 to the norm)."""
    norm = torch.sqrt(sum((p.grad**2).sum() for p in params))
    scale = torch.clamp(max_norm / norm, max=1.0)
    for p in params:
        p.grad.mul_(scale)

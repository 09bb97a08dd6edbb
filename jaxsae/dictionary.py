"""Dictionary SAEs on transformer activations (the schema and the model's formulas:
saecommon/dictionary_config.py), as pure functions of a parameter dict.

Parameters: ``W_enc`` [d_in, d_sae], ``b_enc`` [d_sae], ``W_dec`` [d_sae, d_in],
``b_dec`` [d_in] and, for jumprelu, ``log_threshold`` or ``threshold`` [d_sae]
(config.threshold_param). The batch rules' inference threshold is not a parameter: it
is estimated (``update_threshold``) and passed in.

Custom backwards (each mirrored by a ``torch.autograd.Function`` in torchsae):

- ``jumprelu`` and ``step``: straight-through pseudo-derivatives for the threshold with
  a rectangle kernel of bandwidth eps (Rajamanoharan et al. 2024, eqs. 11-12);
- ``gather_pre`` and ``sparse_decode``: the TopK path's encoder and decoder gradients
  touch only the k selected latents of each token (scatter-adds, no dense
  [tokens, d_sae] product in the backward pass).

Tie rule, as for every sparsity layer of this project: among equal values the lower
index wins (``jax.lax.top_k`` puts the lower index first among equal values; the
batch rules and AuxK use ``jaxsae.sparsity``'s mask). The selections go through
``jaxsae.mesh_select``: the same functions on one device, shard-local selections
when the mesh step traces them.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxsae import cpu_kernels, mesh_select
from jaxsae.sparsity import _first_k_mask, apply_mask
from saecommon.dictionary_config import DictConfig, DictTrainConfig

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

Params = dict[str, jax.Array]


# --------------------------------------------------------------------------- custom backwards


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def jumprelu(pre: jax.Array, threshold: jax.Array, bandwidth: float) -> jax.Array:
    """pre * H(pre - threshold) [tokens, d_sae]. Gradients: H(pre - theta) for pre;
    for theta the pseudo-derivative -(theta / eps) K((pre - theta) / eps), K the
    rectangle kernel 1{|u| < 1/2} (Rajamanoharan et al. 2024, eq. 11)."""
    return jnp.where(pre > threshold, pre, 0)


def _jumprelu_fwd(pre, threshold, bandwidth):
    return jumprelu(pre, threshold, bandwidth), (pre, threshold)


def _jumprelu_bwd(bandwidth, res, g):
    pre, threshold = res
    d_pre = jnp.where(pre > threshold, g, 0)
    kernel = _rectangle((pre - threshold) / bandwidth)
    d_threshold = jnp.sum(-(threshold / bandwidth) * kernel * g, axis=0)
    return d_pre, d_threshold.reshape(jnp.shape(threshold))


jumprelu.defvjp(_jumprelu_fwd, _jumprelu_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def step(pre: jax.Array, threshold: jax.Array, bandwidth: float) -> jax.Array:
    """H(pre - threshold) [tokens, d_sae], the L0 penalty's step function, taken on
    the pre-activation (not on the JumpReLU output, whose zeros would hide the
    kernel's window below theta). Gradients: none for pre; for theta
    -(1 / eps) K((pre - theta) / eps) (Rajamanoharan et al. 2024, eq. 12)."""
    return (pre > threshold).astype(pre.dtype)


def _step_fwd(pre, threshold, bandwidth):
    return step(pre, threshold, bandwidth), (pre, threshold)


def _step_bwd(bandwidth, res, g):
    pre, threshold = res
    kernel = _rectangle((pre - threshold) / bandwidth)
    d_threshold = jnp.sum(-(1.0 / bandwidth) * kernel * g, axis=0)
    return jnp.zeros_like(pre), d_threshold.reshape(jnp.shape(threshold))


step.defvjp(_step_fwd, _step_bwd)


def _rectangle(u: jax.Array) -> jax.Array:
    return (jnp.abs(u) < 0.5).astype(u.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(6,))
def gather_pre(
    xc: jax.Array,
    b_dec: jax.Array,
    w_enc: jax.Array,
    b_enc: jax.Array,
    idx: jax.Array,
    pre: jax.Array,
    subtract_b_dec: bool,
) -> jax.Array:
    """pre[t, idx[t, j]] [tokens, m], differentiable in (b_dec, W_enc, b_enc) as the
    encoder's pre-activation of the selected latents, pre = xc @ W_enc + b_enc with
    xc = x - b_dec (or x): ``pre`` (the dense pre-activation, computed without
    gradient) gives the values; the backward pass scatter-adds into the selected
    columns only (b*m*d_in work, not b*d_sae*d_in). The input gets no gradient (it
    is data); b_dec's, summed over tokens, is -W_enc @ (b_enc's)."""
    return jnp.take_along_axis(pre, idx, axis=1)


def _gather_pre_fwd(xc, b_dec, w_enc, b_enc, idx, pre, subtract_b_dec):
    return jnp.take_along_axis(pre, idx, axis=1), (xc, b_dec, w_enc, idx)


def _gather_pre_bwd(subtract_b_dec, res, g):
    xc, b_dec, w_enc, idx = res
    d_sae = w_enc.shape[1]
    flat = idx.reshape(-1)
    d_b_enc = jnp.zeros(d_sae, g.dtype).at[flat].add(g.reshape(-1))
    d_w_enc = _scatter_outer(g, idx, xc, d_sae).T
    d_b_dec = -(w_enc @ d_b_enc) if subtract_b_dec else jnp.zeros_like(b_dec)
    return None, d_b_dec, d_w_enc, d_b_enc, None, None


gather_pre.defvjp(_gather_pre_fwd, _gather_pre_bwd)


@jax.custom_vjp
def sparse_decode(vals: jax.Array, idx: jax.Array, w_dec: jax.Array) -> jax.Array:
    """sum_j vals[t, j] * W_dec[idx[t, j]] [tokens, d_in]: the decoder product with
    only the selected latents; its backward gathers (values) and scatter-adds
    (W_dec's rows)."""
    return _weighted_rows(vals, idx, w_dec)


# The sparse products below are jaxsae's CPU kernels on the CPU (jaxsae.cpu_kernels:
# on every core, 1.2-6x faster than what follows). Elsewhere they loop over the m
# selected latents of each token (a lax.fori_loop, in place): XLA then fuses each
# gather with its product and updates the scatter's target in place. Measured on the
# CPU on [4096 tokens, 32 of 3072, 384]: 4-14x faster than gathering or scattering
# all [tokens, m, d] rows at once.


def _column(a: jax.Array, j) -> jax.Array:
    return jax.lax.dynamic_index_in_dim(a, j, axis=1, keepdims=False)


def _weighted_rows(weights: jax.Array, idx: jax.Array, table: jax.Array) -> jax.Array:
    """[tokens, d]: sum_j weights[t, j] * table[idx[t, j]]."""
    return cpu_kernels.weighted_rows(weights, idx, table, _xla_weighted_rows)


def _xla_weighted_rows(weights, idx, table):
    def add(j, out):
        return out + _column(weights, j)[:, None] * table[_column(idx, j)]

    init = jnp.zeros((idx.shape[0], table.shape[1]), table.dtype)
    return jax.lax.fori_loop(0, idx.shape[1], add, init)


def _row_dots(g: jax.Array, idx: jax.Array, table: jax.Array) -> jax.Array:
    """[tokens, m]: g[t] . table[idx[t, j]]."""
    return cpu_kernels.row_dots(g, idx, table, _xla_row_dots)


def _xla_row_dots(g, idx, table):
    def dot(j, out):
        column = jnp.sum(g * table[_column(idx, j)], axis=1)
        return jax.lax.dynamic_update_index_in_dim(out, column, j, axis=1)

    return jax.lax.fori_loop(0, idx.shape[1], dot, jnp.zeros(idx.shape, g.dtype))


def _scatter_outer(weights: jax.Array, idx: jax.Array, rows: jax.Array, n: int):
    """[n, d]: out[l] = sum over (t, j) with idx[t, j] = l of weights[t, j] * rows[t]
    (a segment sum of outer products, never materialised)."""

    def xla(weights, idx, rows):
        def add(j, out):
            return out.at[_column(idx, j)].add(_column(weights, j)[:, None] * rows)

        init = jnp.zeros((n, rows.shape[1]), rows.dtype)
        return jax.lax.fori_loop(0, idx.shape[1], add, init)

    return cpu_kernels.scatter_outer(weights, idx, rows, n, xla)


def _sparse_decode_fwd(vals, idx, w_dec):
    return sparse_decode(vals, idx, w_dec), (vals, idx, w_dec)


def _sparse_decode_bwd(res, g):
    vals, idx, w_dec = res
    d_vals = _row_dots(g, idx, w_dec)
    d_w_dec = _scatter_outer(vals, idx, g, w_dec.shape[0])
    return d_vals, None, d_w_dec


sparse_decode.defvjp(_sparse_decode_fwd, _sparse_decode_bwd)


# --------------------------------------------------------------------------- selection rules


def batchtopk_mask(acts: jax.Array, k: int) -> jax.Array:
    """Bool [tokens, d_sae]: the k * tokens largest entries of ``acts`` over the whole
    batch (Bussmann et al. 2024); ties to the lower flat (token-major) index."""
    return mesh_select.flat_first_k_mask(acts, acts.shape[0] * k)


def aux_mask(acts: jax.Array, dead: jax.Array, k_aux: int) -> jax.Array:
    """Bool [tokens, d_sae]: per token, the k_aux largest of ``acts`` among the dead
    latents (fewer where fewer are dead); ties to the lower index (Gao et al. 2024)."""
    masked = jnp.where(dead[None, :], acts, -jnp.inf)
    return mesh_select.first_k_mask(masked, k_aux) & dead[None, :]


def threshold_value(params: Params, config: DictConfig) -> jax.Array:
    """JumpReLU's theta [d_sae] from its parameterisation."""
    if config.threshold_param == "log":
        return jnp.exp(params["log_threshold"])
    return params["threshold"]


# --------------------------------------------------------------------------- the model


def _mm(a: jax.Array, b: jax.Array, precision: str) -> jax.Array:
    """a @ b; bfloat16 inputs with a float32 result under mixed precision."""
    if precision == "bfloat16":
        return jnp.matmul(
            a.astype(jnp.bfloat16),
            b.astype(jnp.bfloat16),
            preferred_element_type=jnp.float32,
        )
    return a @ b


def _scaled(params: Params, x: jax.Array, config: DictConfig):
    """(xs, xc): the normalised input x * input_scale, and the encoder's input
    xs - b_dec (or xs without the b_dec subtraction)."""
    xs = x * config.input_scale
    return xs, xs - params["b_dec"] if config.subtract_b_dec else xs


def _linear(xc, w_enc, b_enc, precision: str) -> jax.Array:
    """xc @ W_enc + b_enc."""
    return _mm(xc, w_enc, precision) + b_enc


def pre_activation(
    params: Params, x: jax.Array, config: DictConfig, precision: str = "float32"
) -> jax.Array:
    """pre [tokens, d_sae] = (x * input_scale - b_dec) @ W_enc + b_enc."""
    _, xc = _scaled(params, x, config)
    return _linear(xc, params["W_enc"], params["b_enc"], precision)


def encode(
    params: Params, x: jax.Array, config: DictConfig, threshold: jax.Array | None = None
) -> jax.Array:
    """The latents z [tokens, d_sae] of x [tokens, d_in] at inference: each token on
    its own. batchtopk and matryoshka keep relu(pre) > threshold (the training
    estimate); topk keeps each token's k largest."""
    pre = pre_activation(params, x, config)
    acts = jax.nn.relu(pre)
    if config.activation == "relu":
        return acts
    if config.activation == "topk":
        return jnp.where(_first_k_mask(acts, config.k), acts, 0)
    if config.activation == "jumprelu":
        return jnp.where(pre > threshold_value(params, config), pre, 0)
    return jnp.where(acts > threshold, acts, 0)


def decode(params: Params, z: jax.Array, config: DictConfig) -> jax.Array:
    """x_hat [tokens, d_in] = (z @ W_dec + b_dec) / input_scale."""
    return (z @ params["W_dec"] + params["b_dec"]) / config.input_scale


def forward(
    params: Params, x: jax.Array, config: DictConfig, threshold: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """(z, x_hat) at inference."""
    z = encode(params, x, config, threshold)
    return z, decode(params, z, config)


class Coefficients(NamedTuple):
    """Per-step scalars the host computes (saecommon.dictionary_config)."""

    lr: jax.Array
    sparsity: jax.Array  # L1 (relu) or L0 (jumprelu) coefficient after warm-up


def loss_terms(
    params: Params,
    x: jax.Array,
    dead: jax.Array,
    sparsity_coefficient: jax.Array,
    config: DictConfig,
    train: DictTrainConfig,
) -> tuple[jax.Array, dict[str, jax.Array]]:
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
    dense = _mm(xc, params["W_enc"], train.precision)
    pre = dense + params["b_enc"]
    terms: dict[str, jax.Array] = {}
    zero = jnp.zeros((), xs.dtype)
    sparsity = aux = zero
    aux_on = train.aux_k is not None
    if act == "topk":
        pre_ng = jax.lax.stop_gradient(pre)
        acts_ng = jax.nn.relu(pre_ng)
        # the k largest of relu(pre), which the CPU kernel computes as it reads
        idx = mesh_select.relu_top_k(dense, params["b_enc"], config.k)
        if aux_on:
            masked = jnp.where(dead[None, :], acts_ng, -jnp.inf)
            aux_picked, aux_idx = mesh_select.top_k(masked, train.aux_k)
            idx_all = jnp.concatenate([idx, aux_idx], axis=1)
            rows = jnp.arange(n)[:, None]
            terms["aux_mask"] = (
                jnp.zeros(pre.shape, bool).at[rows, aux_idx].set(aux_picked > -jnp.inf)
            )
        else:
            idx_all = idx
        vals_all = jax.nn.relu(
            gather_pre(
                jax.lax.stop_gradient(xc),
                params["b_dec"],
                params["W_enc"],
                params["b_enc"],
                idx_all,
                pre_ng,
                config.subtract_b_dec,
            )
        )
        vals = vals_all[:, : config.k]
        w_dec = params["W_dec"]
        decoded = mesh_select.latent_sum(sparse_decode, vals, idx, w_dec)
        x_hat = decoded + params["b_dec"]
        recon = jnp.sum((x_hat - xs) ** 2) / n
        hits = (vals > 0).astype(jnp.int32).reshape(-1)
        fired = jnp.zeros(config.d_sae, jnp.int32).at[idx.reshape(-1)].add(hits) > 0
        rows = jnp.arange(n)[:, None]
        terms["mask"] = jnp.zeros(pre.shape, bool).at[rows, idx].set(True)
        l0 = jnp.sum(vals > 0) / n
        if aux_on:
            aux_vals = jnp.where(aux_picked > -jnp.inf, vals_all[:, config.k :], 0)
            e_hat = mesh_select.latent_sum(sparse_decode, aux_vals, aux_idx, w_dec)
            aux = _aux_loss(e_hat, xs, x_hat, dead, train)
    else:
        acts = jax.nn.relu(pre)
        if act == "relu":
            z = acts
            terms["mask"] = acts > 0
            weights = (
                jnp.linalg.norm(params["W_dec"], axis=1)
                if train.l1_decoder_norm
                else 1.0
            )
            sparsity = sparsity_coefficient * jnp.sum(jnp.abs(z) * weights) / n
        elif act == "jumprelu":
            theta = threshold_value(params, config)
            z = jumprelu(pre, theta, train.bandwidth)
            terms["mask"] = jax.lax.stop_gradient(pre > theta)
            l0_step = step(pre, theta, train.bandwidth)
            sparsity = sparsity_coefficient * jnp.sum(l0_step) / n
        else:  # batchtopk, matryoshka
            mask = batchtopk_mask(jax.lax.stop_gradient(acts), config.k)
            z = apply_mask(acts, mask)
            terms["mask"] = mask
            kept = jnp.where(mask & (acts > 0), jax.lax.stop_gradient(acts), jnp.inf)
            terms["min_kept"] = jnp.min(kept)
        if act == "matryoshka":
            recon = zero
            x_hat = params["b_dec"]
            start = 0
            for width in config.matryoshka_widths:
                x_hat = x_hat + _mm(
                    z[:, start:width], params["W_dec"][start:width], train.precision
                )
                recon = recon + jnp.sum((x_hat - xs) ** 2) / n
                start = width
        else:
            x_hat = _mm(z, params["W_dec"], train.precision) + params["b_dec"]
            recon = jnp.sum((x_hat - xs) ** 2) / n
        fired = jnp.any(z != 0, axis=0)
        l0 = jnp.sum(z != 0) / n
        if aux_on:
            a_mask = aux_mask(jax.lax.stop_gradient(acts), dead, train.aux_k)
            terms["aux_mask"] = a_mask
            e_hat = _mm(apply_mask(acts, a_mask), params["W_dec"], train.precision)
            aux = _aux_loss(e_hat, xs, x_hat, dead, train)
    loss = recon + sparsity + train.aux_coefficient * aux
    terms.update(recon=recon, sparsity=sparsity, aux=aux, l0=l0, fired=fired)
    terms.update(_recon_metrics(jax.lax.stop_gradient(x_hat), xs))
    return loss, terms


def _recon_metrics(x_hat: jax.Array, xs: jax.Array) -> dict[str, jax.Array]:
    """The batch's fvu, mean cosine of x and x_hat, and relative reconstruction bias
    (saecommon.metrics.ReconStats states them)."""
    dots = jnp.sum(xs * x_hat, axis=1)
    norms = jnp.linalg.norm(xs, axis=1) * jnp.linalg.norm(x_hat, axis=1)
    return {
        "fvu": jnp.sum((x_hat - xs) ** 2) / jnp.sum((xs - xs.mean(0)) ** 2),
        "cosine": jnp.mean(
            jnp.where(norms > 0, dots / jnp.where(norms > 0, norms, 1), 0)
        ),
        "relative_bias": jnp.sum(x_hat**2) / jnp.sum(dots),
    }


def _aux_loss(e_hat, xs, x_hat, dead, train: DictTrainConfig) -> jax.Array:
    """AuxK (Gao et al. 2024): the dead latents' reconstruction e_hat (no b_dec) of
    the residual e = x - x_hat (no gradient), its squared error summed over the batch,
    normalised as train.aux_normalization says, times min(dead / k_aux, 1)."""
    e = jax.lax.stop_gradient(xs - x_hat)
    err = jnp.sum((e_hat - e) ** 2)
    if train.aux_normalization == "x_variance":
        err = err / jnp.sum((xs - xs.mean(0)) ** 2)
    elif train.aux_normalization == "residual_variance":
        err = err / jnp.sum((e - e.mean(0)) ** 2)
    else:
        err = err / xs.shape[0]
    scale = jnp.minimum(jnp.sum(dead) / train.aux_k, 1.0)
    return scale * err


# --------------------------------------------------------------------------- training


class DictState(NamedTuple):
    params: Params
    opt_state: Any
    threshold: jax.Array  # [] the batch rules' inference threshold (0: not yet set)
    since_fired: jax.Array  # [d_sae] int32: training tokens since each latent fired
    step: jax.Array  # int32 []: updates done


def make_optimizer(train: DictTrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping (optional), then Adam's scaling; the learning rate is
    applied by the step (it comes from the host each step)."""
    b1, b2 = train.adam_betas
    parts = [optax.scale_by_adam(b1=b1, b2=b2, eps=train.adam_eps)]
    if train.grad_clip is not None:
        parts.insert(0, optax.clip_by_global_norm(train.grad_clip))
    return optax.chain(*parts)


def params_from_state_dict(state_dict, config: DictConfig) -> tuple[Params, jax.Array]:
    """(params, threshold) from a numpy state dict (SAELens names; threshold raw)."""
    params = {
        k: jnp.asarray(state_dict[k]) for k in ("W_enc", "b_enc", "W_dec", "b_dec")
    }
    threshold = jnp.zeros((), params["W_enc"].dtype)
    if config.activation == "jumprelu":
        theta = jnp.asarray(state_dict["threshold"])
        if config.threshold_param == "log":
            params["log_threshold"] = jnp.log(theta)
        else:
            params["threshold"] = theta
    elif config.has_threshold:
        threshold = jnp.asarray(state_dict["threshold"])
    return params, threshold


def to_state_dict(
    params: Params, threshold, config: DictConfig
) -> dict[str, np.ndarray]:
    """The numpy state dict (SAELens names and layouts, threshold raw)."""
    out = {k: np.asarray(params[k]) for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    if config.activation == "jumprelu":
        out["threshold"] = np.asarray(threshold_value(params, config))
    elif config.has_threshold:
        out["threshold"] = np.asarray(threshold)
    return out


def init_state(state_dict, config: DictConfig, train: DictTrainConfig) -> DictState:
    params, threshold = params_from_state_dict(state_dict, config)
    return DictState(
        params=params,
        opt_state=make_optimizer(train).init(params),
        threshold=threshold,
        since_fired=jnp.zeros(config.d_sae, jnp.int32),
        step=jnp.zeros((), jnp.int32),
    )


def remove_parallel_component(grad: jax.Array, w_dec: jax.Array) -> jax.Array:
    """grad [d_sae, d_in] less its component along each decoder row, so a step moves
    rows along the unit sphere (Bricken et al. 2023; sparsify; dictionary_learning)."""
    dots = jnp.sum(grad * w_dec, axis=1, keepdims=True)
    return grad - dots * w_dec / jnp.sum(w_dec**2, axis=1, keepdims=True)


def unit_rows(w_dec: jax.Array) -> jax.Array:
    return w_dec / jnp.linalg.norm(w_dec, axis=1, keepdims=True)


def update_threshold(threshold: jax.Array, min_kept: jax.Array, beta: float):
    """The batch rules' inference threshold: the first finite estimate sets it, then
    t <- beta * t + (1 - beta) * min_kept (a batch with nothing kept leaves it)."""
    moved = jnp.where(
        threshold == 0, min_kept, beta * threshold + (1 - beta) * min_kept
    )
    return jnp.where(jnp.isfinite(min_kept), moved, threshold).astype(threshold.dtype)


def make_train_step(config: DictConfig, train: DictTrainConfig):
    """``step(state, x, coefficients) -> (state, metrics)``, jitted with the state
    donated. The order within a step: gradients; the parallel component of W_dec's
    gradient removed; clipping and Adam; the update; decoder rows renormalised; the
    batch threshold and the dead-latent counters updated."""
    optimizer = make_optimizer(train)
    batch_rule = config.activation in ("batchtopk", "matryoshka")

    def train_step(state: DictState, x: jax.Array, coefficients: Coefficients):
        dead = state.since_fired >= train.dead_tokens
        grad_fn = jax.value_and_grad(loss_terms, has_aux=True)
        (loss, terms), grads = grad_fn(
            state.params, x, dead, coefficients.sparsity, config, train
        )
        if train.normalize_decoder:
            grads = {
                **grads,
                "W_dec": remove_parallel_component(
                    grads["W_dec"], state.params["W_dec"]
                ),
            }
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = jax.tree.map(
            lambda p, u: (p - coefficients.lr * u).astype(p.dtype),
            state.params,
            updates,
        )
        if train.normalize_decoder:
            params["W_dec"] = unit_rows(params["W_dec"])
        if "threshold" in params:  # raw theta stays >= 0 (SAELens 6 clamps it too)
            params["threshold"] = jnp.maximum(params["threshold"], 0)
        threshold = state.threshold
        if batch_rule:
            threshold = update_threshold(
                threshold, terms["min_kept"], train.threshold_beta
            )
        since = jnp.minimum(state.since_fired + x.shape[0], train.dead_tokens)
        since = jnp.where(terms["fired"], 0, since)
        metrics = {k: terms[k] for k in METRICS}
        metrics["loss"] = loss
        metrics["dead_fraction"] = jnp.mean(dead)
        new = DictState(params, opt_state, threshold, since, state.step + 1)
        return new, metrics

    return jax.jit(train_step, donate_argnums=0)

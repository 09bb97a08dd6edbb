"""The sparse autoencoder in Flax Linen (functional init/apply), in its three
architectures: mlp (fully connected, any depth), conv and fullconv (the convolutional
layers of saecommon/architectures.py).

Parameters are named ``encoder_{i}``/``decoder_{i}`` with ``kernel`` [in, out] (Dense)
or [kh, kw, in, out] (Conv) and ``bias`` [out]; torchsae's ``encoder.{i}``/
``decoder.{i}`` hold ``weight`` in torch's layouts (checkpoint.py converts). A tied
decoder layer has only a bias and uses its mirror encoder kernel transposed.
Initialisation matches torch's default for each layer: U(-1/sqrt(fan_in),
1/sqrt(fan_in)) for kernel and bias, so the two packages start from the same
distribution.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxsae.conv import (
    conv2d,
    conv_impl,
    conv_transpose2d,
    default_chunk,
    max_pool2,
)
from jaxsae.sparsity import apply_mask, sparsity_mask
from saecommon.architectures import (
    CODE_SHAPES,
    IMAGE_SHAPE,
    Layer,
    check_input_shape,
    layers,
)
from saecommon.config import SAEConfig


class AutoencoderOutput(NamedTuple):
    reconstruction: jax.Array
    """[batch, input] after the output activation."""
    logits: jax.Array
    """[batch, input] before the output activation (BCE is computed from these)."""
    code: jax.Array
    """[batch, code] after the sparsity layers."""
    hiddens: tuple[jax.Array, ...]
    """Every hidden activation, input side first: encoder layers, code, decoder layers."""
    mask: jax.Array
    """[batch, code] bool: units kept by the sparsity layers (all True without them)."""


def activate(x: jax.Array, name: str, negative_slope: float = 0.01) -> jax.Array:
    if name == "relu":
        return jax.nn.relu(x)
    if name == "leaky_relu":
        # x > 0, not >= 0: torch's gradient at exactly 0 is the slope, and so is ours.
        return jnp.where(x > 0, x, negative_slope * x)
    if name == "sigmoid":
        return jax.nn.sigmoid(x)
    if name == "tanh":
        return jnp.tanh(x)
    if name == "identity":
        return x
    raise ValueError(f"unknown activation {name!r}")


def check_input(x: jax.Array, config: SAEConfig) -> None:
    """ValueError unless ``x`` is [batch, input_dim] with batch >= 1."""
    check_input_shape(x.shape, config)


def _uniform(bound: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Dense(nn.Module):
    """y = x @ kernel + bias. With ``kernel`` given (tied decoders) it owns a bias only."""

    features: int
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, kernel: jax.Array | None = None):
        init = _uniform(1 / math.sqrt(x.shape[-1]))
        if kernel is None:
            kernel = self.param(
                "kernel", init, (x.shape[-1], self.features), self.param_dtype
            )
        bias = self.param("bias", init, (self.features,), self.param_dtype)
        return jnp.dot(x, kernel) + bias, kernel


class Conv(nn.Module):
    """A VALID convolution on NHWC images; kernel [kh, kw, in, out] (torch's
    [out, in, kh, kw] transposed by the conversion table). Computed as matrix
    products on the CPU and by XLA's convolution op elsewhere (jaxsae.conv)."""

    layer: Layer
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        spec = self.layer
        init = _uniform(1 / math.sqrt(spec.init_fan_in))
        k = spec.kernel
        kernel = self.param(
            "kernel", init, (k, k, spec.fan_in, spec.fan_out), self.param_dtype
        )
        bias = self.param("bias", init, (spec.fan_out,), self.param_dtype)
        dtype = jnp.result_type(x, kernel)  # promote as jnp.dot does for Dense
        x, kernel = x.astype(dtype), kernel.astype(dtype)
        impl, chunk = conv_impl(), default_chunk()
        if spec.kind == "conv":
            y = conv2d(x, kernel, spec.stride, impl, chunk)
        else:
            y = conv_transpose2d(x, kernel, spec.stride, impl, chunk)
        return y + bias


class Autoencoder(nn.Module):
    """x [batch, input] -> AutoencoderOutput. ``train`` turns lifetime top-k on.

    Convolutional architectures take the same flat input [batch, 784] and return a
    flat reconstruction; inside they work on [batch, 28, 28, 1] (NHWC) and flatten
    the pooled code in NCHW order, as torch does, so code unit j is the same unit in
    both packages."""

    config: SAEConfig
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> AutoencoderOutput:
        cfg = self.config
        check_input(x, cfg)
        if cfg.architecture != "mlp":
            return self._conv(x, train)
        n = len(cfg.hidden_dims)
        hiddens, kernels = [], []
        h = x
        for i, width in enumerate(cfg.hidden_dims):
            h, kernel = Dense(width, self.param_dtype, name=f"encoder_{i}")(h)
            kernels.append(kernel)
            if i < n - 1:
                h = activate(h, cfg.activation, cfg.negative_slope)
                hiddens.append(h)
        code = activate(h, cfg.code_activation, cfg.negative_slope)
        mask = sparsity_mask(code, cfg, train)
        code = apply_mask(code, mask)
        hiddens.append(code)
        h = code
        for i, (_, fan_out) in enumerate(cfg.decoder_dims):
            tied_kernel = kernels[n - 1 - i].T if cfg.tied else None
            h, _ = Dense(fan_out, self.param_dtype, name=f"decoder_{i}")(h, tied_kernel)
            if i < n - 1:
                h = activate(h, cfg.activation, cfg.negative_slope)
                hiddens.append(h)
        reconstruction = activate(h, cfg.output_activation, cfg.negative_slope)
        return AutoencoderOutput(reconstruction, h, code, tuple(hiddens), mask)

    def _conv(self, x: jax.Array, train: bool) -> AutoencoderOutput:
        cfg = self.config
        specs = layers(cfg)
        encoder = [s for s in specs if s.name.startswith("encoder.")]
        decoder = [s for s in specs if s.name.startswith("decoder.")]
        c, hh, ww = IMAGE_SHAPE
        h = x.reshape(x.shape[0], c, hh, ww).transpose(0, 2, 3, 1)  # NCHW -> NHWC
        hiddens = []
        for i, spec in enumerate(encoder):
            h = Conv(spec, self.param_dtype, name=spec.name.replace(".", "_"))(h)
            if i < len(encoder) - 1:
                h = activate(h, cfg.activation, cfg.negative_slope)
                hiddens.append(h.transpose(0, 3, 1, 2))  # returned as NCHW, like torch
        h = activate(h, cfg.code_activation, cfg.negative_slope)
        h = max_pool2(h)
        code = h.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)  # flattened as NCHW
        mask = sparsity_mask(code, cfg, train)
        code = apply_mask(code, mask)
        hiddens.append(code)
        if cfg.architecture == "conv":  # Linear 128 -> 784
            h, _ = Dense(decoder[0].fan_out, self.param_dtype, name="decoder_0")(code)
        else:
            cc, ch, cw = CODE_SHAPES[cfg.architecture]
            h = code.reshape(x.shape[0], cc, ch, cw).transpose(0, 2, 3, 1)
            for i, spec in enumerate(decoder):
                h = Conv(spec, self.param_dtype, name=spec.name.replace(".", "_"))(h)
                if i < len(decoder) - 1:
                    h = activate(h, cfg.activation, cfg.negative_slope)
                    hiddens.append(h.transpose(0, 3, 1, 2))
            h = h.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)  # NHWC -> flat NCHW
        reconstruction = activate(h, cfg.output_activation, cfg.negative_slope)
        return AutoencoderOutput(reconstruction, h, code, tuple(hiddens), mask)

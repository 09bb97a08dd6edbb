"""Convolutions on NHWC images, three ways: XLA's convolution op, matrix products,
or jaxsae's CPU kernels.

XLA's CPU backend runs its convolution op slowly, and about 20x more slowly inside a
``lax.scan`` (a while loop) than in a plain jitted call; a matrix product it runs at
the speed of its matmul library in both, but the im2col form writes k*k copies of
the input. So on the CPU the layers are jaxsae's direct convolution kernels
(``jaxsae.cpu_kernels``: each window read where it lies, on every core, 2-7x faster
than the matrix products) or, where those cannot be built, matrix products; on GPUs
(cuDNN) XLA's convolutions: ``conv_impl`` picks.

- ``conv2d`` as matmul: im2col. The k*k shifted (strided) slices of the input are
  stacked on the channel axis, [B, Ho, Wo, k*k*Cin], and multiplied by the kernel
  read as [k*k*Cin, Cout].
- ``conv_transpose2d`` as matmul: col2im. Each input pixel is multiplied by the whole
  kernel, [B, H, W, k*k*Cout], and each of the k*k planes is added into the output at
  its offset with stride-spaced zeros between pixels (``lax.pad``'s interior padding).
  Written as a convolution of the dilated input it would multiply mostly zeros.

On the CPU the batch goes through them in chunks (``_by_chunks``), so that each
chunk's patches stay in the cache. Both give the same sums as the convolution ops in
a different order: float32 results agree to rounding, float64 to ~1e-15
(tests/test_conv.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp

from jaxsae import cpu_kernels

IMPLS = ("auto", "xla", "matmul", "kernel")
ENV = "JAXSAE_CONV"
"""Environment variable that overrides ``auto``: "xla", "matmul" or "kernel"."""
CHUNK = 50
"""Samples per chunk of the matmul convolutions on the CPU (``_by_chunks``): 24 to 100
measured alike; 50 divides the usual batches (1200, 1000)."""


def conv_impl(impl: str = "auto") -> str:
    """ "xla", "matmul" or "kernel": ``impl`` itself, or for "auto" the
    ``JAXSAE_CONV`` environment variable if set, else on the CPU backend "kernel"
    (jaxsae's CPU kernels) where they are available and "matmul" where not or where
    the step is traced for XLA's partitioner (a mesh: a custom call is not split),
    and "xla" on GPUs and TPUs. The platform is the default device's
    (``jax.default_device``, as ``--device cpu`` sets it on a GPU machine), else the
    default backend's. Called at trace time; the result is a static argument of the
    layers, so their jit caches tell the cases apart."""
    source = "convolution implementation"
    if impl == "auto" and os.environ.get(ENV):
        impl, source = os.environ[ENV], f"environment variable {ENV}"
    elif impl == "auto" and cpu_kernels.default_platform() == "cpu":
        on = cpu_kernels.available() and not cpu_kernels.partitioner_tracing()
        impl = "kernel" if on else "matmul"
    elif impl == "auto":
        impl = "xla"
    if impl not in IMPLS[1:]:
        raise ValueError(f"{source} is {impl!r}: use one of {IMPLS}")
    return impl


def _out_size(size: int, k: int, stride: int) -> int:
    return (size - k) // stride + 1


# im2col and col2im are each other's transpose (adjoint), and each is the other's
# gradient. Written as a custom_vjp pair so that neither gradient goes through
# autodiff's transpose of slicing one plane out of [..., k*k*C] (a pad of every plane
# back to full size: k*k times the work, 300x slower for an 8x8 kernel).


def _windows(x: jax.Array, axis: int, k: int, stride: int, out: int) -> jax.Array:
    """The k slices of ``x`` along ``axis`` (1: rows, 2: columns) that start at 0..k-1
    and take ``out`` values ``stride`` apart, stacked as a new axis 3."""
    span = stride * (out - 1) + 1
    return jnp.stack(
        [jax.lax.slice_in_dim(x, i, i + span, stride, axis) for i in range(k)], axis=3
    )


def _add_windows(p: jax.Array, axis: int, k: int, stride: int, size: int) -> jax.Array:
    """The transpose of ``_windows``: the k planes of p's axis 3 added back, each at
    its offset along ``axis``, into ``size`` places (axis 3 removed)."""
    span = stride * (p.shape[axis] - 1) + 1
    zero = jnp.zeros((), p.dtype)

    def placed(i):  # plane i, moved i places along axis, stride - 1 zeros between
        padding = [(0, 0, 0)] * (p.ndim - 1)
        padding[axis] = (i, size - i - span, stride - 1)
        return jax.lax.pad(jax.lax.index_in_dim(p, i, 3, keepdims=False), zero, padding)

    return sum(placed(i) for i in range(k))


@partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def im2col(x: jax.Array, k: int, stride: int) -> jax.Array:
    """x [B, H, W, C] -> patches [B, Ho, Wo, k*k*C] of every VALID k x k window
    taken every ``stride`` pixels; channel (i * k + j) * C + c holds
    x[b, ho*stride + i, wo*stride + j, c]."""
    _, h, w, _ = x.shape
    ho, wo = _out_size(h, k, stride), _out_size(w, k, stride)
    # In two passes, columns then rows: the second moves whole rows of k*C values,
    # and XLA's CPU code for it is 2-3x faster than one k*k-way concatenation.
    cols = _windows(x, 2, k, stride, wo)  # [B, H, Wo, k, C]
    rows = _windows(cols, 1, k, stride, ho)  # [B, Ho, Wo, k, k, C]
    return rows.reshape(*rows.shape[:3], -1)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def col2im(patches: jax.Array, k: int, stride: int, size: tuple[int, int]) -> jax.Array:
    """The transpose of ``im2col``: patches [B, Ho, Wo, k*k*C] -> [B, H, W, C] with
    (H, W) = ``size``, each window's values added back where ``im2col`` took them."""
    b, ho, wo, kkc = patches.shape
    patches = patches.reshape(b, ho, wo, k, k, kkc // (k * k))
    # Rows first, then columns: 2k pads instead of k*k.
    rows = _add_windows(patches, 1, k, stride, size[0])  # [B, H, Wo, k, C]
    return _add_windows(rows, 2, k, stride, size[1])


def _im2col_fwd(x, k, stride):
    return im2col(x, k, stride), x.shape[1:3]


def _im2col_bwd(k, stride, size, g):
    return (col2im(g, k, stride, size),)


def _col2im_fwd(patches, k, stride, size):
    return col2im(patches, k, stride, size), None


def _col2im_bwd(k, stride, size, _, g):
    return (im2col(g, k, stride),)


im2col.defvjp(_im2col_fwd, _im2col_bwd)
col2im.defvjp(_col2im_fwd, _col2im_bwd)


# The layers are jitted so that op-by-op code (Flax's init, eager gradients in tests)
# compiles each one once instead of its dozens of slices and pads one by one; inside
# an outer jit they are inlined.


def _by_chunks(fn: Callable, x: jax.Array, chunk: int) -> jax.Array:
    """``fn(x)`` for x [B, ...], computed ``chunk`` samples at a time (a ``lax.map``;
    the last B % chunk samples in one more call), each chunk rematerialised in the
    backward pass (``jax.checkpoint``). The patches of a chunk then stay in the CPU's
    cache between being written and read, instead of going through memory: 464 MB for
    the whole batch of the ivlabs model's second layer. Measured on the 2-core CPU, a
    fullconv layer's forward and backward at batch 1200: 1.6-2.8x faster."""
    n = x.shape[0] // chunk if chunk else 0
    if n < 2:
        return fn(x)
    fn = jax.checkpoint(fn)
    full = n * chunk
    head = jax.lax.map(fn, x[:full].reshape(n, chunk, *x.shape[1:]))
    head = head.reshape(full, *head.shape[2:])
    if full == x.shape[0]:
        return head
    return jnp.concatenate([head, fn(x[full:])])


def default_chunk() -> int:
    """Samples per chunk of the matmul convolutions: ``CHUNK`` on the CPU, 0
    (the whole batch at once) elsewhere, where a chunked loop would only serialise."""
    return CHUNK if cpu_kernels.default_platform() == "cpu" else 0


@partial(jax.jit, static_argnums=(2, 3, 4))
def conv2d(
    x: jax.Array, kernel: jax.Array, stride: int, impl: str, chunk: int = 0
) -> jax.Array:
    """VALID convolution: x [B, H, W, Cin], kernel [k, k, Cin, Cout] ->
    [B, Ho, Wo, Cout] with Ho = (H - k) // stride + 1 (cross-correlation, as
    torch.nn.Conv2d). ``chunk``: the matmul form's samples per chunk (0: all)."""
    if impl == "kernel" and cpu_kernels.conv_supported(x, kernel):
        return cpu_kernels.conv2d(x, kernel, stride)
    if impl == "xla":
        return jax.lax.conv_general_dilated(
            x,
            kernel,
            (stride, stride),
            "VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
    k, _, cin, cout = kernel.shape
    matrix = kernel.reshape(k * k * cin, cout)
    return _by_chunks(lambda x: jnp.dot(im2col(x, k, stride), matrix), x, chunk)


@partial(jax.jit, static_argnums=(2, 3, 4))
def conv_transpose2d(
    x: jax.Array, kernel: jax.Array, stride: int, impl: str, chunk: int = 0
) -> jax.Array:
    """torch.nn.ConvTranspose2d without padding: x [B, H, W, Cin], kernel
    [k, k, Cin, Cout] (torch's [Cin, Cout, k, k] moved, not flipped) ->
    [B, (H - 1) * stride + k, (W - 1) * stride + k, Cout]:
    y[b, h*s + i, w*s + j, o] += x[b, h, w, c] * kernel[i, j, c, o]. ``chunk``: the
    matmul form's samples per chunk (0: all)."""
    if impl == "kernel" and cpu_kernels.conv_supported(x, kernel):
        return cpu_kernels.conv_transpose2d(x, kernel, stride)
    if impl == "xla":
        # The gradient of a convolution: the kernel flipped and its channel roles
        # swapped (transpose_kernel=True), read as HWOI since it stores [in, out].
        return jax.lax.conv_transpose(
            x,
            kernel,
            (stride, stride),
            "VALID",
            dimension_numbers=("NHWC", "HWOI", "NHWC"),
            transpose_kernel=True,
        )
    k, _, cin, cout = kernel.shape
    _, h, w, _ = x.shape
    matrix = kernel.transpose(2, 0, 1, 3).reshape(cin, k * k * cout)
    size = ((h - 1) * stride + k, (w - 1) * stride + k)
    return _by_chunks(
        lambda x: col2im(jnp.dot(x, matrix), k, stride, size), x, chunk
    )  # [B, H', W', Cout]


@jax.jit
def max_pool2(x: jax.Array) -> jax.Array:
    """2x2 max pooling, stride 2, VALID: x [B, H, W, C] -> [B, H // 2, W // 2, C].
    On ties the gradient goes to the first maximum in row-major window order, as in
    torch's max_pool2d (CPU and CUDA). Written as 4 strided slices and an argmax: on
    XLA's CPU backend 3x faster than ``reduce_window`` and its select-and-scatter
    gradient, and the tie rule is explicit."""
    h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
    window = jnp.stack(
        [x[:, i:h:2, j:w:2] for i in (0, 1) for j in (0, 1)], axis=-1
    )  # [B, H/2, W/2, C, 4]
    first = jnp.argmax(window, axis=-1)[..., None]  # the first maximum of each window
    return jnp.take_along_axis(window, first, axis=-1)[..., 0]

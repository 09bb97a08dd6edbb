"""jaxsae's CPU kernels: top-k, the TopK SAE's sparse products and direct
convolutions on every core, called from jitted code through the XLA FFI (the C++ is
``cpu_kernels.cc`` beside this file; it says what each kernel computes).

Why: XLA's CPU backend runs ``lax.top_k`` on one thread with a per-row heap (0.055 s
on [4096, 3072], k = 32, a fifth of a dictionary TopK training step on this
project's 2-core machine) and the sparse gathers and scatter-adds on one thread too.
The kernels give the same top-k bit for bit (XLA's order: larger first, -0.0 below
0.0, NaN above +inf, equal values by lower index), the same top-k masks (the
classic layers', BatchTopK's over a whole batch: XLA sums each mask's counts on one
thread, 30 ms a pass on [4096, 3072]) and the same sparse products up to rounding (a
fixed summation order; deterministic whatever the thread count). The
convolutions (``conv2d``, ``conv_transpose2d``) read each window where it lies, where
XLA's own convolution op is slow on the CPU and the im2col form writes every window
out (jaxsae/conv.py).

How they are chosen: the convolutions by ``jaxsae.conv.conv_impl`` ("kernel", the
CPU backend's default where the kernels are available). Each other wrapper below is
a ``jax.lax.platform_dependent`` whose CPU branch calls the kernel and whose other
branch is the XLA code it replaces, so a step jitted for a GPU never sees them.
They are used where they built and loaded (``available()``), for float32 and
float64, and not in code traced for XLA's SPMD partitioner (``for_partitioner()``:
a custom call cannot be split over a mesh). ``JAXSAE_CPU_KERNELS=0`` turns them off.

Building: on first use the C++ is compiled with ``$CXX`` (default ``c++``) against
the FFI headers jaxlib ships (``jax.ffi.include_dir()``), into
``$JAXSAE_KERNEL_CACHE`` (default ``~/.cache/jaxsae/kernels``), one library per
source, jaxlib version and CPU (it is built with ``-march=native``); a few seconds,
once. Where that fails (no compiler), jaxsae warns once and keeps XLA's ops.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "available",
    "conv2d",
    "conv_transpose2d",
    "default_platform",
    "first_k_mask",
    "for_partitioner",
    "partitioner_tracing",
    "relu_top_k",
    "row_dots",
    "scatter_outer",
    "top_k",
    "weighted_rows",
]

SOURCE = Path(__file__).with_name("cpu_kernels.cc")
TARGETS = (
    "top_k",
    "relu_top_k",
    "first_k_mask",
    "weighted_rows",
    "row_dots",
    "scatter_outer",
    "conv_gather",
    "conv_scatter",
    "conv_weights",
)
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread", "-Wall")
ENV_SWITCH = "JAXSAE_CPU_KERNELS"
ENV_CACHE = "JAXSAE_KERNEL_CACHE"
_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _cpu_id() -> str:
    """The CPU model and instruction-set flags (what ``-march=native`` builds for)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine() + platform.processor()
    lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))]
    return platform.machine() + "\n".join(sorted(set(lines)))


def library_path() -> Path:
    """Where this source, jaxlib and CPU's library lives (built or not)."""
    import jaxlib

    compiler = os.environ.get("CXX", "c++")
    key = hashlib.sha256(
        b"\0".join(
            s.encode()
            for s in (
                SOURCE.read_text(),
                jaxlib.__version__,
                compiler,
                " ".join(FLAGS),
                _cpu_id(),
            )
        )
    ).hexdigest()[:16]
    root = os.environ.get(ENV_CACHE) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
        "jaxsae",
        "kernels",
    )
    return Path(root) / f"jaxsae_cpu_kernels-{key}.so"


def build(path: Path) -> None:
    """Compile the kernels to ``path``: into a temporary file beside it, then renamed,
    so processes building at once (test workers) never load a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(fd)
    command = [os.environ.get("CXX", "c++"), *FLAGS]
    command += ["-isystem", jax.ffi.include_dir(), str(SOURCE), "-o", tmp]
    try:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def available() -> bool:
    """Whether the kernels are on: built, loaded and registered (built on the first
    call). False, after one warning, where they cannot be built; False without a
    word where ``JAXSAE_CPU_KERNELS=0`` (read at each trace)."""
    return os.environ.get(ENV_SWITCH, "1") != "0" and _loaded()


@functools.cache
def _loaded() -> bool:
    try:
        path = library_path()
        if not path.exists():
            build(path)
        library = ctypes.cdll.LoadLibrary(str(path))
        for name in TARGETS:
            capsule = jax.ffi.pycapsule(getattr(library, f"jaxsae_{name}"))
            jax.ffi.register_ffi_target(f"jaxsae_{name}", capsule, platform="cpu")
    except (OSError, RuntimeError, AttributeError) as error:
        warnings.warn(
            f"jaxsae: the CPU kernels could not be built or loaded, so XLA's own "
            f"top-k and sparse products, and convolutions as matrix products, run "
            f"instead (slower on the CPU; set {ENV_SWITCH}=0 to silence this). "
            f"{error}",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    return True


_FOR_PARTITIONER = contextvars.ContextVar("for_partitioner", default=False)


@contextlib.contextmanager
def for_partitioner():
    """Trace for XLA's SPMD partitioner (a step on a mesh): no CPU kernels (a custom
    call is not split over a mesh) and, in ``jaxsae.sparsity.top_k``, no
    optimisation barrier (the partitioner cannot partition one whose operand is
    sharded: jax 0.10 on the CPU aborts on a failed check)."""
    token = _FOR_PARTITIONER.set(True)
    try:
        yield
    finally:
        _FOR_PARTITIONER.reset(token)


def partitioner_tracing() -> bool:
    """Whether the code being traced is inside ``for_partitioner()``."""
    return _FOR_PARTITIONER.get()


def default_platform() -> str:
    """The platform jitted code runs on by default: the default device's where one
    is set (``jax.default_device``: a Device or a platform name, as ``--device cpu``
    sets it on a GPU machine), else the default backend's."""
    device = jax.config.jax_default_device
    if device is None:
        return jax.default_backend()
    return device if isinstance(device, str) else device.platform


def _usable(*arrays: jax.Array) -> bool:
    return (
        all(np.dtype(a.dtype) in _DTYPES for a in arrays)
        and not partitioner_tracing()
        and available()
    )


def _on_cpu(kernel: Callable, xla: Callable, *args):
    """``kernel(*args)`` in a computation compiled for the CPU, else ``xla(*args)``."""
    return jax.lax.platform_dependent(*args, cpu=kernel, default=xla)


def top_k(x: jax.Array, k: int, xla: Callable) -> tuple[jax.Array, jax.Array]:
    """(values, int32 indices) [..., k] of the last axis, as ``xla(x, k)`` (a
    ``lax.top_k``) gives them; ``xla(x, k)`` itself where the kernel does not
    apply. The kernel's values are gathered from x, so they carry x's gradient."""
    if not _top_k_applies(x, k):
        return xla(x, k)
    # the kernel takes every leading axis as rows
    call = _top_k_call("jaxsae_top_k", x, k, vmap_method="broadcast_all")
    idx = _on_cpu(
        lambda a: call(a, k=np.int64(k))[1],
        lambda a: xla(a, k)[1],
        jax.lax.stop_gradient(x),
    )
    return jnp.take_along_axis(x, idx, axis=-1), idx


def relu_top_k(x: jax.Array, bias: jax.Array, k: int, xla: Callable) -> jax.Array:
    """The int32 indices [..., k] of ``xla(jax.nn.relu(x + bias), k)`` (bias [n],
    no gradient): the kernel computes relu(x + bias) as it goes instead of reading
    it from memory (a TopK encoder's [tokens, d_sae] pre-activations)."""
    x, bias = jax.lax.stop_gradient((x, bias))
    fallback = lambda a, b: xla(jax.nn.relu(a + b), k)[1]
    if not (_top_k_applies(x, k) and _usable(bias)) or bias.shape != x.shape[-1:]:
        return fallback(x, bias)
    call = _top_k_call("jaxsae_relu_top_k", x, k, vmap_method="sequential")  # bias [n]
    return _on_cpu(
        lambda a, b: call(a, b, k=np.int64(k))[1],
        fallback,
        x,
        bias,
    )


def first_k_mask(x: jax.Array, k: int, xla: Callable) -> jax.Array:
    """Bool [..., n]: ``xla(x, k)``'s mask of each row's k largest entries (no
    gradient), by the rule of ``jaxsae.sparsity._first_k_mask``: above the k-th
    value, then the first entries equal to it. The kernel reads x twice and writes
    the mask once, on every core, also where the row is a whole flattened batch."""
    x = jax.lax.stop_gradient(x)
    if not _top_k_applies(x, k):
        return xla(x, k)
    call = jax.ffi.ffi_call(
        "jaxsae_first_k_mask",
        jax.ShapeDtypeStruct(x.shape, jnp.bool_),
        vmap_method="broadcast_all",
    )
    return _on_cpu(lambda a: call(a, k=np.int64(k)), lambda a: xla(a, k), x)


def _top_k_applies(x: jax.Array, k: int) -> bool:
    return x.ndim >= 1 and 1 <= k <= x.shape[-1] and _usable(x)


def _top_k_call(target: str, x: jax.Array, k: int, vmap_method: str):
    shape = (*x.shape[:-1], k)
    out = (jax.ShapeDtypeStruct(shape, x.dtype), jax.ShapeDtypeStruct(shape, jnp.int32))
    return jax.ffi.ffi_call(target, out, vmap_method=vmap_method)


def _sparse(name: str, out: jax.ShapeDtypeStruct, xla: Callable, a, idx, b):
    """The kernel ``name`` on (a, idx, b); ``xla(a, idx, b)`` where it does not
    apply."""
    if not _usable(a, b) or idx.dtype != jnp.int32 or a.dtype != b.dtype:
        return xla(a, idx, b)
    call = jax.ffi.ffi_call(f"jaxsae_{name}", out, vmap_method="sequential")
    return _on_cpu(call, xla, a, idx, b)


def weighted_rows(weights, idx, table, xla: Callable):
    """[tokens, d]: sum_j weights[t, j] * table[idx[t, j]]."""
    out = jax.ShapeDtypeStruct((idx.shape[0], table.shape[1]), table.dtype)
    return _sparse("weighted_rows", out, xla, weights, idx, table)


def row_dots(g, idx, table, xla: Callable):
    """[tokens, m]: g[t] . table[idx[t, j]]."""
    out = jax.ShapeDtypeStruct(idx.shape, g.dtype)
    return _sparse("row_dots", out, xla, g, idx, table)


def scatter_outer(weights, idx, rows, n: int, xla: Callable):
    """[n, d]: out[l] = sum over idx[t, j] = l of weights[t, j] * rows[t]."""
    out = jax.ShapeDtypeStruct((n, rows.shape[1]), rows.dtype)
    return _sparse("scatter_outer", out, xla, weights, idx, rows)


# ---------------------------------------------------------------- convolutions
# NHWC, VALID, kernels [k, k, in, out]: jaxsae.conv's conventions. A convolution is
# the "gather" sum, its input gradient the "scatter" sum with the kernel's channel
# roles swapped, its kernel gradient the "weights" sum; a transposed convolution is
# the other way round (cpu_kernels.cc states the three sums).


def _conv_call(name: str, shape, a: jax.Array, b: jax.Array, stride: int):
    out = jax.ShapeDtypeStruct(tuple(shape), a.dtype)
    call = jax.ffi.ffi_call(f"jaxsae_{name}", out, vmap_method="sequential")
    return call(a, b, stride=np.int64(stride))


def _swap_channels(kernel: jax.Array) -> jax.Array:
    return kernel.transpose(0, 1, 3, 2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """``jaxsae.conv.conv2d``: x [B, H, W, Cin], kernel [k, k, Cin, Cout] ->
    [B, (H - k) // stride + 1, (W - k) // stride + 1, Cout]."""
    k, cout = kernel.shape[0], kernel.shape[3]
    b, h, w, _ = x.shape
    shape = (b, (h - k) // stride + 1, (w - k) // stride + 1, cout)
    return _conv_call("conv_gather", shape, x, kernel, stride)


def _conv2d_fwd(x, kernel, stride):
    return conv2d(x, kernel, stride), (x, kernel)


def _conv2d_bwd(stride, res, g):
    x, kernel = res
    dx = _conv_call("conv_scatter", x.shape, g, _swap_channels(kernel), stride)
    return dx, _conv_call("conv_weights", kernel.shape, x, g, stride)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_transpose2d(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """``jaxsae.conv.conv_transpose2d``: x [B, H, W, Cin], kernel [k, k, Cin, Cout]
    -> [B, (H - 1) * stride + k, (W - 1) * stride + k, Cout]."""
    k, cout = kernel.shape[0], kernel.shape[3]
    b, h, w, _ = x.shape
    shape = (b, (h - 1) * stride + k, (w - 1) * stride + k, cout)
    return _conv_call("conv_scatter", shape, x, kernel, stride)


def _conv_transpose2d_fwd(x, kernel, stride):
    return conv_transpose2d(x, kernel, stride), (x, kernel)


def _conv_transpose2d_bwd(stride, res, g):
    x, kernel = res
    dx = _conv_call("conv_gather", x.shape, g, _swap_channels(kernel), stride)
    swapped = _swap_channels(kernel).shape
    return dx, _swap_channels(_conv_call("conv_weights", swapped, g, x, stride))


conv_transpose2d.defvjp(_conv_transpose2d_fwd, _conv_transpose2d_bwd)


def conv_supported(*arrays: jax.Array) -> bool:
    """Whether the convolution kernels are on and take these arrays (float32 or
    float64)."""
    return all(np.dtype(a.dtype) in _DTYPES for a in arrays) and available()

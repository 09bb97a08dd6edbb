"""jaxsae's CPU kernels (jaxsae/cpu_kernels.cc) against the XLA code they replace:
top-k bit for bit on inputs built to tie, the sparse products to rounding, the
choice of kernel or XLA op in the compiled step, and the fallback where they cannot
be built."""

import os
import shutil
import subprocess
import sys
import textwrap
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsae import cpu_kernels, dictionary, sparsity

# Where there is a compiler the kernels must build: a failed build fails here.
pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler"
)


def test_the_kernels_build_and_load():
    assert cpu_kernels.available()
    assert cpu_kernels.library_path().exists()


SPECIAL = [0.0, -0.0, 1.0, -1.0, 2.0, 0.5, np.inf, -np.inf, np.nan, -np.nan]


def _rows(kind: str, rng, rows: int, n: int, dtype) -> np.ndarray:
    if kind == "special":  # ties everywhere, signed zeros, infinities, NaNs
        return rng.choice(np.array(SPECIAL, dtype), (rows, n))
    if kind == "ascending":  # every entry beats the ones before it
        return np.sort(rng.standard_normal((rows, n)), axis=1).astype(dtype)
    if kind == "descending":
        return np.sort(rng.standard_normal((rows, n)), axis=1)[:, ::-1].astype(dtype)
    if kind == "integers":  # a few values, many ties at the k-th place
        return rng.integers(-3, 3, (rows, n)).astype(dtype)
    return np.maximum(rng.standard_normal((rows, n)), 0).astype(dtype)  # relu'd


def _xla_top_k(x, k):
    return jax.lax.top_k(x, k)


def _kernel_top_k(x, k):
    return jax.jit(lambda a: sparsity.top_k(a, k))(x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "kind", ["special", "ascending", "descending", "integers", "relu"]
)
def test_top_k_is_xlas_bit_for_bit(dtype, kind):
    """Values (bit patterns: -0.0 and NaN included) and indices equal lax.top_k's,
    through both of the kernel's paths: k <= n / 32 (chunk maxima) and selection."""
    rng = np.random.default_rng(zlib.crc32(f"{kind} {dtype}".encode()))
    with jax.enable_x64(dtype == np.float64):
        for n, k in [(3072, 32), (640, 20), (200, 7), (64, 64), (100, 1), (33, 1)]:
            x = jnp.asarray(_rows(kind, rng, 37, n, dtype))
            values, idx = _kernel_top_k(x, k)
            want_values, want_idx = jax.jit(_xla_top_k, static_argnums=1)(x, k)
            assert values.dtype == want_values.dtype and idx.dtype == jnp.int32
            np.testing.assert_array_equal(idx, want_idx, err_msg=f"n={n} k={k}")
            assert np.asarray(values).tobytes() == np.asarray(want_values).tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["special", "integers", "relu"])
def test_relu_top_k_is_xlas_on_relu_of_the_sum(dtype, kind):
    """relu(x + bias) computed as the kernel reads x gives lax.top_k's indices on
    jax.nn.relu(x + bias): -0.0 sums become 0.0 and tie with the zeros, -NaN stays
    below -inf, rows with fewer than k positive entries take the first zeros."""
    rng = np.random.default_rng(zlib.crc32(f"relu {kind} {dtype}".encode()))
    with jax.enable_x64(dtype == np.float64):
        for n, k in [(3072, 32), (200, 7), (64, 64)]:
            x = jnp.asarray(_rows(kind, rng, 37, n, dtype))
            # NaNs in x only: the sign of NaN + (-NaN) is the hardware's choice of
            # operand, which XLA's code and the kernel's may make differently
            bias = _rows(kind, rng, 1, n, dtype)[0]
            bias = jnp.asarray(np.where(np.isnan(bias), 1.0, bias).astype(dtype))
            got = jax.jit(lambda a, b, k=k: sparsity.relu_top_k(a, b, k))(x, bias)
            want = jax.lax.top_k(jax.nn.relu(x + bias), k)[1]
            np.testing.assert_array_equal(got, want, err_msg=f"n={n} k={k}")


def test_top_k_one_long_row_and_leading_axes():
    """BatchTopK's shape (one row of every token's latents, k in the thousands) and
    a [2, 3, n] input (leading axes are rows), and under vmap."""
    rng = np.random.default_rng(1)
    long_row = jnp.asarray(rng.integers(0, 50, (1, 200_000)).astype(np.float32))
    for k in (6_250, 100_000):
        np.testing.assert_array_equal(
            _kernel_top_k(long_row, k)[1], jax.lax.top_k(long_row, k)[1]
        )
    cube = jnp.asarray(rng.integers(0, 9, (2, 3, 500)).astype(np.float32))
    np.testing.assert_array_equal(
        _kernel_top_k(cube, 10)[1], jax.lax.top_k(cube, 10)[1]
    )
    mapped = jax.jit(jax.vmap(lambda a: sparsity.top_k(a, 10)[1]))(cube)
    np.testing.assert_array_equal(mapped, jax.lax.top_k(cube, 10)[1])


def test_top_k_values_carry_the_gradient():
    x = jnp.asarray(np.random.default_rng(2).standard_normal((5, 300)), jnp.float32)
    weights = jnp.arange(1.0, 9.0)
    grad = jax.jit(jax.grad(lambda a: jnp.sum(sparsity.top_k(a, 8)[0] * weights)))(x)
    idx = np.asarray(jax.lax.top_k(x, 8)[1])
    want = np.zeros(x.shape, np.float32)
    np.put_along_axis(want, idx, np.asarray(weights)[None, :].repeat(5, 0), axis=1)
    np.testing.assert_array_equal(grad, want)


def _sparse_case(rng, dtype, tokens=300, m=12, n=97, d=37):
    """Indices with repeats across tokens (and a latent picked by every token)."""
    idx = rng.integers(0, n, (tokens, m)).astype(np.int32)
    idx[:, 0] = 5
    cast = lambda *shape: jnp.asarray(rng.standard_normal(shape).astype(dtype))
    return cast(tokens, m), jnp.asarray(idx), cast(n, d), cast(tokens, d), n


@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-5), (np.float64, 1e-12)])
def test_sparse_products_equal_xlas(dtype, tol):
    rng = np.random.default_rng(3)
    with jax.enable_x64(dtype == np.float64):
        weights, idx, table, rows, n = _sparse_case(rng, dtype)
        pairs = [
            (
                dictionary._weighted_rows,
                dictionary._xla_weighted_rows,
                (weights, idx, table),
            ),
            (dictionary._row_dots, dictionary._xla_row_dots, (rows, idx, table)),
        ]
        for kernel, xla, args in pairs:
            got, want = jax.jit(kernel)(*args), jax.jit(xla)(*args)
            assert got.dtype == want.dtype
            np.testing.assert_allclose(
                got, want, rtol=tol, atol=tol, err_msg=kernel.__name__
            )
        got = jax.jit(lambda w, i, r: dictionary._scatter_outer(w, i, r, n))(
            weights, idx, rows
        )
        # numpy's own segment sum of the outer products
        want = np.zeros((n, rows.shape[1]), dtype)
        np.add.at(
            want,
            np.asarray(idx).ravel(),
            (np.asarray(weights)[..., None] * np.asarray(rows)[:, None, :]).reshape(
                -1, rows.shape[1]
            ),
        )
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def _lax_first_k_mask(x, k):
    """sparsity._first_k_mask's rule in plain lax ops, the reference."""
    kth = jax.lax.top_k(x, k)[0][:, k - 1 : k]
    above, tied = x > kth, x == kth
    need = k - jnp.sum(above, axis=-1, keepdims=True)
    return above | (tied & (jnp.cumsum(tied, axis=-1) <= need))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "kind", ["special", "ascending", "descending", "integers", "relu"]
)
def test_first_k_mask_is_the_rules(dtype, kind):
    """The mask kernel equals the rule's lax ops on inputs built to tie: many short
    rows (a row per thread), and long rows split over the threads (BatchTopK's one
    flattened row, k in the thousands), through both ways of finding the k-th value
    (chunk maxima, and selection among all where k is a large part of the row).
    Without NaNs every row keeps exactly k entries."""
    rng = np.random.default_rng(zlib.crc32(f"mask {kind} {dtype}".encode()))
    cases = [(37, 3072, 32), (37, 200, 7), (37, 64, 64), (5, 33, 1)]
    cases += [(1, 200_000, 6_250), (1, 200_000, 100_000), (2, 70_000, 3)]
    with jax.enable_x64(dtype == np.float64):
        for rows, n, k in cases:
            x = jnp.asarray(_rows(kind, rng, rows, n, dtype))
            got = jax.jit(lambda a, k=k: sparsity._first_k_mask(a, k))(x)
            want = jax.jit(_lax_first_k_mask, static_argnums=1)(x, k)
            assert got.dtype == jnp.bool_
            np.testing.assert_array_equal(got, want, err_msg=f"{rows}x{n} k={k}")
            if kind != "special":
                assert (np.asarray(got).sum(axis=1) == k).all()
            text = jax.jit(lambda a, k=k: sparsity._first_k_mask(a, k)).lower(x)
            assert "jaxsae_first_k_mask" in text.as_text()


def test_first_k_mask_under_vmap_and_without_the_kernels():
    rng = np.random.default_rng(6)
    cube = jnp.asarray(rng.integers(0, 5, (3, 4, 300)).astype(np.float32))
    mapped = jax.jit(jax.vmap(lambda a: sparsity._first_k_mask(a, 9)))(cube)
    for i in range(3):
        np.testing.assert_array_equal(mapped[i], _lax_first_k_mask(cube[i], 9))
    with cpu_kernels.for_partitioner():
        text = jax.jit(lambda a: sparsity._first_k_mask(a, 9)).lower(cube[0])
    assert "jaxsae_first_k_mask" not in text.as_text()


def _targets(fn, *args) -> set[str]:
    # a new function each time: jax.jit's cache does not know the context it traced in
    text = jax.jit(lambda *a: fn(*a)).lower(*args).as_text()
    return {name for name in cpu_kernels.TARGETS if f"jaxsae_{name}" in text}


def _dictionary_case(activation: str, aux_k: int | None, seed: int):
    """(the gradient of a small dictionary SAE's loss, its params, a batch)."""
    from saecommon.dictionary_config import DictConfig, DictTrainConfig

    config = DictConfig(d_in=16, d_sae=64, activation=activation, k=4)
    train = DictTrainConfig(steps=1, batch_size=8, aux_k=aux_k)
    rng = np.random.default_rng(seed)
    params = {
        name: jnp.asarray(rng.standard_normal(shape), jnp.float32)
        for name, shape in config.shapes().items()
    }
    x = jnp.asarray(rng.standard_normal((8, 16)), jnp.float32)
    dead = jnp.arange(64) % 3 == 0

    def loss(p, a):
        return dictionary.loss_terms(p, a, dead, jnp.float32(0), config, train)[0]

    return jax.grad(loss), params, x


def test_the_topk_step_calls_the_kernels_on_the_cpu_only():
    """The dictionary TopK loss and its gradient compile to the kernels on the CPU
    (relu_top_k for TopK, top_k for AuxK, first_k_mask for BatchTopK); traced for
    the partitioner (a mesh) they are XLA's ops again."""
    sparse = {"weighted_rows", "row_dots", "scatter_outer"}
    plain = _dictionary_case("topk", None, 4)
    assert _targets(*plain) == {"relu_top_k"} | sparse
    with_aux = _dictionary_case("topk", 3, 4)
    assert _targets(*with_aux) == {"relu_top_k", "top_k"} | sparse
    with cpu_kernels.for_partitioner():
        assert _targets(*with_aux) == set()
    # BatchTopK's one mask over the batch, and its AuxK's per token: the mask kernel
    assert _targets(*_dictionary_case("batchtopk", 3, 4)) == {"first_k_mask"}


def test_steps_lowered_for_a_gpu_hold_no_cpu_kernels(monkeypatch):
    """What a GPU compiles: the classic conv step (with the convolution a GPU picks)
    and the TopK + AuxK and BatchTopK dictionary gradients, exported for CUDA from
    this CPU, keep XLA's ops (jax.export refuses custom calls it cannot vouch for,
    so a CPU kernel left in would fail here)."""
    from jax import export

    from jaxsae import conv
    from jaxsae import training as jt
    from saecommon.reproduction import ENTRIES
    from saecommon.train_config import TrainConfig

    monkeypatch.setenv(conv.ENV, "xla")
    model = ENTRIES["ivlabs-l1"].run.model  # fullconv, BCE + L1 on every layer
    tcfg = TrainConfig(batch_size=4)
    opt = jt.make_optimizer(tcfg, 1)
    params = jt.init_params(model, jax.random.key(0))
    state = jt.TrainState(params, opt.init(params), jnp.zeros((), jnp.int32))
    step = jax.jit(jt.make_train_step(model, tcfg, opt))
    args = (state, jnp.zeros((4, 784)), jax.random.key(1))
    text = export.export(step, platforms=["cuda"])(*args).mlir_module()
    assert "jaxsae_" not in text and "stablehlo.convolution" in text

    for activation in ("topk", "batchtopk"):
        grad, params, x = _dictionary_case(activation, 3, 7)
        grad = jax.jit(grad)
        cpu = grad.lower(params, x).as_text()
        assert "jaxsae_" in cpu  # the same function on the CPU calls the kernels
        text = export.export(grad, platforms=["cuda"])(params, x).mlir_module()
        assert "jaxsae_" not in text, activation


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, "JAX_PLATFORMS": "cpu", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


FALLBACK = """
    import warnings
    import jax, jax.numpy as jnp
    from jaxsae import conv, cpu_kernels, sparsity
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        on = cpu_kernels.available()
        x = jnp.arange(12.0).reshape(2, 6)
        text = jax.jit(lambda a: sparsity.top_k(a, 2)).lower(x).as_text()
        top = jax.jit(lambda a: sparsity.top_k(a, 2)[1])(x).tolist()
        print(on, "jaxsae_top_k" in text, top, conv.conv_impl())
    print("WARNINGS", [str(w.message)[:60] for w in caught])
"""


def test_without_a_compiler_xla_runs_after_one_warning(tmp_path):
    """XLA's top-k and the matmul convolutions, after one warning."""
    done = _run(FALLBACK, CXX="false", JAXSAE_KERNEL_CACHE=str(tmp_path))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "False False [[5, 4], [5, 4]] matmul"
    assert lines[1].count("could not be built or loaded") == 1, lines[1]
    assert list(tmp_path.iterdir()) == []  # no half-written library left behind


def test_switched_off_there_is_no_build_and_no_warning(tmp_path):
    done = _run(FALLBACK, JAXSAE_CPU_KERNELS="0", JAXSAE_KERNEL_CACHE=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "False False [[5, 4], [5, 4]] matmul",
        "WARNINGS []",
    ]
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []


def test_a_fresh_cache_builds_once(tmp_path):
    done = _run(FALLBACK, JAXSAE_KERNEL_CACHE=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "True True [[5, 4], [5, 4]] kernel",
        "WARNINGS []",
    ]
    assert [p.name for p in tmp_path.iterdir()] == [cpu_kernels.library_path().name]


DETERMINISM = """
    import hashlib
    import jax, jax.numpy as jnp, numpy as np
    from jaxsae import cpu_kernels, dictionary, sparsity
    rng = np.random.default_rng(5)
    f32 = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
    idx = jnp.asarray(rng.integers(0, 300, (4096, 8)), jnp.int32)
    w, table, rows, x = f32(4096, 8), f32(300, 64), f32(4096, 64), f32(64, 13, 13, 8)
    kernel, pre = f32(3, 3, 8, 16), f32(4096, 300)
    ties = jnp.asarray(rng.integers(0, 40, (1, 400_000)), jnp.float32)

    def conv_grads(x, k):
        loss = lambda x, k: jnp.sum(cpu_kernels.conv2d(x, k, 1) ** 2)
        return jax.grad(loss, argnums=(0, 1))(x, k)

    outs = [
        jax.jit(lambda p: sparsity.top_k(p, 16))(pre),
        jax.jit(lambda p: sparsity._first_k_mask(p, 16))(pre),
        jax.jit(lambda t: sparsity._first_k_mask(t, 30_000))(ties),
        jax.jit(dictionary._weighted_rows)(w, idx, table),
        jax.jit(dictionary._row_dots)(rows, idx, table),
        jax.jit(lambda w, i, r: dictionary._scatter_outer(w, i, r, 300))(w, idx, rows),
        jax.jit(conv_grads)(x, kernel),
        jax.jit(lambda x, k: cpu_kernels.conv_transpose2d(x, k, 2))(x, kernel),
    ]
    for leaf in jax.tree.leaves(outs):
        print(hashlib.sha256(np.asarray(leaf).tobytes()).hexdigest()[:16])
"""


def test_results_do_not_depend_on_the_thread_count():
    """Bit for bit the same on one thread as on every core: the sums' order is
    fixed (the weights gradient adds fixed groups of samples in order), and the masks
    (a row per thread, and one long row split over the threads) are exact."""
    one = _run(DETERMINISM, JAXSAE_KERNEL_THREADS="1")
    every = _run(DETERMINISM)
    assert one.returncode == 0 and every.returncode == 0, one.stderr + every.stderr
    assert len(one.stdout.split()) == 10
    assert one.stdout == every.stdout

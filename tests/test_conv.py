"""jaxsae.conv: convolutions as matrix products and as jaxsae's CPU kernels equal
XLA's convolution ops and torch's Conv2d/ConvTranspose2d, values and gradients, and
the choice per backend."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxsae import conv, cpu_kernels
from jaxsae.cpu_kernels import for_partitioner
from saecommon.architectures import CONV, FULLCONV

# (kind, in channels, out channels, kernel, stride, input size): every convolution of
# the two architectures, plus strides that do not divide the input evenly.
CASES = sorted(
    {(s.kind, s.fan_in, s.fan_out, s.kernel, s.stride) for s in CONV + FULLCONV}
    - {("linear", 128, 784, 1, 1)}
)
SIZES = {("conv", 1): 28, ("conv", 8): 13, ("conv", 16): 22, ("conv_transpose", 32): 4}
ODD = [
    ("conv", 3, 2, 3, 2, 10),
    ("conv", 2, 3, 2, 3, 9),
    ("conv_transpose", 2, 3, 4, 3, 3),
]


def _cases():
    for kind, cin, cout, k, s in CASES:
        yield kind, cin, cout, k, s, SIZES.get((kind, cin), 9)
    yield from ODD


def _torch(kind, x, kernel, stride):
    """torch's layer on NHWC x and our kernel [k, k, in, out], as float64 numpy."""
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_(True)
    if kind == "conv":
        wt = torch.from_numpy(kernel).permute(3, 2, 0, 1).requires_grad_(True)
        y = torch.nn.functional.conv2d(xt, wt, stride=stride)
    else:
        wt = torch.from_numpy(kernel).permute(2, 3, 0, 1).requires_grad_(True)
        y = torch.nn.functional.conv_transpose2d(xt, wt, stride=stride)
    return xt, wt, y.permute(0, 2, 3, 1)


@pytest.mark.parametrize("case", list(_cases()), ids=str)
def test_matmul_and_xla_convolutions_equal_torch_with_gradients(case):
    kind, cin, cout, k, s, size = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, size, size, cin))
    kernel = rng.standard_normal((k, k, cin, cout))
    xt, wt, yt = _torch(kind, x, kernel, s)
    cotangent = rng.standard_normal(tuple(yt.shape))
    (yt * torch.from_numpy(cotangent)).sum().backward()
    dx_t = xt.grad.permute(0, 2, 3, 1).numpy()
    dw_t = wt.grad.permute(*((2, 3, 1, 0) if kind == "conv" else (2, 3, 0, 1))).numpy()
    fn = conv.conv2d if kind == "conv" else conv.conv_transpose2d
    with jax.enable_x64(True):
        for impl in ("xla", "matmul", "kernel"):

            def f(x, w, impl=impl):
                return jnp.sum(fn(x, w, s, impl) * cotangent)

            y = fn(jnp.asarray(x), jnp.asarray(kernel), s, impl)
            dx, dw = jax.grad(f, argnums=(0, 1))(jnp.asarray(x), jnp.asarray(kernel))
            for name, got, want in (
                ("output", y, yt.detach().numpy()),
                ("input gradient", dx, dx_t),
                ("kernel gradient", dw, dw_t),
            ):
                np.testing.assert_allclose(
                    got, want, rtol=1e-12, atol=1e-12, err_msg=f"{impl} {name}"
                )


def test_im2col_takes_each_window_and_col2im_is_its_transpose():
    """Hand-checked windows of a 4x4 ramp, and <im2col(x), p> == <x, col2im(p)>
    (the adjoint identity the custom gradients rely on)."""
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    patches = conv.im2col(x, 2, 2)  # [1, 2, 2, 4]: windows at (0,0) (0,2) (2,0) (2,2)
    np.testing.assert_array_equal(patches[0, 0, 0], [0, 1, 4, 5])
    np.testing.assert_array_equal(patches[0, 1, 1], [10, 11, 14, 15])
    rng = np.random.default_rng(1)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.standard_normal((2, 7, 6, 3)))
        p = jnp.asarray(rng.standard_normal(conv.im2col(x, 3, 2).shape))
        lhs = jnp.vdot(conv.im2col(x, 3, 2), p)
        rhs = jnp.vdot(x, conv.col2im(p, 3, 2, (7, 6)))
        assert float(lhs) == pytest.approx(float(rhs), rel=1e-13)
        # Each one's gradient is the other.
        grad = jax.grad(lambda x: jnp.vdot(conv.im2col(x, 3, 2), p))(x)
        np.testing.assert_allclose(grad, conv.col2im(p, 3, 2, (7, 6)), rtol=1e-13)


def test_the_implementation_is_chosen_per_backend_and_can_be_overridden(monkeypatch):
    monkeypatch.delenv(conv.ENV, raising=False)
    cpu = "kernel" if cpu_kernels.available() else "matmul"
    want = cpu if jax.default_backend() == "cpu" else "xla"
    assert conv.conv_impl() == want
    with for_partitioner():  # a step on a mesh: no custom calls
        assert conv.conv_impl() == ("matmul" if want == "kernel" else want)
    assert conv.conv_impl("xla") == "xla"
    monkeypatch.setenv(conv.ENV, "xla")
    assert conv.conv_impl() == "xla"
    monkeypatch.setenv(conv.ENV, "fft")
    with pytest.raises(
        ValueError, match="JAXSAE_CONV is 'fft'.*auto.*xla.*matmul.*kernel"
    ):
        conv.conv_impl()
    with pytest.raises(ValueError, match="implementation is 'cudnn'"):
        conv.conv_impl("cudnn")


def test_the_default_device_chooses_over_the_default_backend(monkeypatch):
    """On a GPU machine, code placed on the CPU (``jax.default_device``, as train.py
    --device cpu and the CPU parity cases do) gets the CPU's convolutions: XLA's CPU
    convolution in the epoch's scan is 20-40x slower."""
    monkeypatch.delenv(conv.ENV, raising=False)
    cpu = "kernel" if cpu_kernels.available() else "matmul"
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert conv.conv_impl() == "xla"
    with jax.default_device(jax.devices("cpu")[0]):
        assert conv.conv_impl() == cpu
    with jax.default_device("cpu"):
        assert conv.conv_impl() == cpu


def test_max_pool_equals_torch_and_sends_ties_to_the_first_maximum():
    """Values and gradients equal torch's max_pool2d on an odd size (9 -> 4) with
    exact ties planted: window (0, 0) holds two equal maxima, at (0, 0) and (0, 1);
    the gradient goes to (0, 0) only."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 9, 9, 3))
    x[:, 0, 1] = x[:, 0, 0] = np.abs(x[:, :2, :2]).max() + 1
    cotangent = rng.standard_normal((2, 4, 4, 3))
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_(True)
    yt = torch.nn.functional.max_pool2d(xt, 2)
    (yt * torch.from_numpy(cotangent).permute(0, 3, 1, 2)).sum().backward()
    with jax.enable_x64(True):
        y = conv.max_pool2(jnp.asarray(x))
        dx = jax.grad(lambda x: jnp.sum(conv.max_pool2(x) * cotangent))(jnp.asarray(x))
    np.testing.assert_array_equal(y, yt.detach().permute(0, 2, 3, 1).numpy())
    np.testing.assert_array_equal(dx, xt.grad.permute(0, 2, 3, 1).numpy())
    np.testing.assert_array_equal(dx[:, 0, 0], cotangent[:, 0, 0])
    assert not dx[:, 0, 1].any()
    assert not dx[:, 8].any() and not dx[:, :, 8].any()  # the cropped row and column


@pytest.mark.parametrize("kind", ["conv", "conv_transpose"])
def test_chunks_compute_what_the_whole_batch_does(kind):
    """The CPU's chunked matmul convolutions (2 chunks of 2 and a remainder of 1,
    rematerialised in the backward pass) equal the unchunked ones, values and both
    gradients, in float64."""
    rng = np.random.default_rng(2)
    fn = conv.conv2d if kind == "conv" else conv.conv_transpose2d
    x = rng.standard_normal((5, 9, 9, 3))
    kernel = rng.standard_normal((3, 3, 3, 4))
    with jax.enable_x64(True):
        x, kernel = jnp.asarray(x), jnp.asarray(kernel)
        cotangent = jnp.asarray(rng.standard_normal(fn(x, kernel, 2, "matmul").shape))
        results = {}
        for chunk in (0, 2):

            def f(x, w, chunk=chunk):
                return jnp.sum(fn(x, w, 2, "matmul", chunk) * cotangent)

            results[chunk] = (
                fn(x, kernel, 2, "matmul", chunk),
                *jax.grad(f, argnums=(0, 1))(x, kernel),
            )
    for name, whole, chunked in zip(("output", "dx", "dkernel"), *results.values()):
        np.testing.assert_allclose(chunked, whole, rtol=1e-13, atol=1e-13, err_msg=name)
    assert conv.default_chunk() == (conv.CHUNK if jax.default_backend() == "cpu" else 0)


def test_the_layer_benchmark_prints_each_layer_five_ways(capsys):
    """scripts/bench_conv_layers.py at batch 2: a row per convolution of the
    fullconv model with a time for each way, and the sum of the six."""
    import json
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "scripts"))
    import bench_conv_layers

    bench_conv_layers.main(["--batch", "2", "--repeat", "1"])
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["layer"].split(" on ")[0] for r in rows] == [
        "Conv(1, 8, 3)",
        "Conv(8, 16, 5)",
        "Conv(16, 32, 5, s2)",
        "ConvT(32, 16, 3, s2)",
        "ConvT(16, 8, 5, s2)",
        "ConvT(8, 1, 8)",
    ]
    for row in rows:
        assert all(row[way] > 0 for way in bench_conv_layers.WAYS), row
    assert "all six" in out

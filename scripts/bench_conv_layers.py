"""Each convolution of the ivlabs-l1 model, forward and both gradients, five ways.

    python scripts/bench_conv_layers.py              # batch 1200, ~1 min on 2 cores
    python scripts/bench.py --layers                 # the same

Per layer of saecommon.architectures.FULLCONV (its input size as in the model), the
seconds of one forward pass and both gradients (input and kernel) at ``--batch``
1200, best of ``--repeat`` 5, float32, CPU:

- jaxsae kernel: jaxsae's direct convolution kernels (jaxsae.cpu_kernels), called
  alone and inside a ``lax.scan`` of 3 iterations (per iteration; XLA's convolution
  op is 20-40x slower in a loop, which is why the CPU trainer once looped on the
  host);
- jaxsae matmul: the im2col / col2im matrix products, in chunks of 50 samples;
- XLA conv: ``lax.conv_general_dilated`` / ``conv_transpose`` called alone;
- torch: ``F.conv2d`` / ``F.conv_transpose2d`` on NCHW and on channels_last tensors.

The last lines are one JSON object per layer.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from jaxsae import conv
from saecommon.architectures import FULLCONV

SIZES = (28, 26, 22, 4, 9, 21)  # each conv layer's input size in ivlabs-l1 (fullconv)
WAYS = (
    "jaxsae kernel",
    "kernel in a scan",
    "jaxsae matmul",
    "XLA conv",
    "torch NCHW",
    "torch channels_last",
)


def best(fn, repeat: int) -> float:
    fn()  # warm-up: compilation, allocation
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def jax_way(kind, x, kernel, stride, impl, repeat, scan=False) -> float:
    layer = conv.conv2d if kind == "conv" else conv.conv_transpose2d
    chunk = conv.CHUNK if impl == "matmul" else 0

    def loss(x, w):
        return jnp.sum(layer(x, w, stride, impl, chunk) ** 2)

    step = jax.value_and_grad(loss, argnums=(0, 1))  # forward and both gradients
    if not scan:
        fn = jax.jit(step)
        return best(lambda: jax.block_until_ready(fn(x, kernel)), repeat)
    rounds = 3

    @jax.jit
    def looped(x, w):
        def body(carry, _):
            value, (dx, dw) = step(x, w + carry)
            return carry + 1e-6 * jnp.sum(dw) + 0 * value, jnp.sum(dx)

        return jax.lax.scan(body, 0.0, None, length=rounds)

    return best(lambda: jax.block_until_ready(looped(x, kernel)), repeat) / rounds


def torch_way(kind, x, kernel, stride, channels_last, repeat) -> float:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    xt = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous(memory_format=fmt)
    order = (3, 2, 0, 1) if kind == "conv" else (2, 3, 0, 1)
    wt = (
        torch.from_numpy(np.array(kernel)).permute(*order).contiguous(memory_format=fmt)
    )
    xt.requires_grad_(True)
    wt.requires_grad_(True)
    layer = F.conv2d if kind == "conv" else F.conv_transpose2d

    def step():
        xt.grad = wt.grad = None
        (layer(xt, wt, stride=stride) ** 2).sum().backward()

    return best(step, repeat)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1200)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    jax.config.update("jax_platforms", "cpu")
    rng = np.random.default_rng(0)
    layers = [s for s in FULLCONV if s.kind in ("conv", "conv_transpose")]
    rows = []
    print(
        f"forward + both gradients, batch {args.batch}, float32, seconds (best of "
        f"{args.repeat}); jax {jax.__version__}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)"
    )
    head = f"{'layer':30s}" + "".join(f"{w:>21s}" for w in WAYS)
    print(head)
    for spec, size in zip(layers, SIZES):
        k, cin, cout, s = spec.kernel, spec.fan_in, spec.fan_out, spec.stride
        x = jnp.asarray(rng.standard_normal((args.batch, size, size, cin)), jnp.float32)
        kernel = jnp.asarray(rng.standard_normal((k, k, cin, cout)) / k, jnp.float32)
        name = (
            f"{'Conv' if spec.kind == 'conv' else 'ConvT'}({cin}, {cout}, {k}"
            f"{f', s{s}' if s > 1 else ''}) on {size}x{size}"
        )
        times = [
            jax_way(spec.kind, x, kernel, s, "kernel", args.repeat),
            jax_way(spec.kind, x, kernel, s, "kernel", args.repeat, scan=True),
            jax_way(spec.kind, x, kernel, s, "matmul", args.repeat),
            jax_way(spec.kind, x, kernel, s, "xla", args.repeat),
            torch_way(spec.kind, x, kernel, s, False, args.repeat),
            torch_way(spec.kind, x, kernel, s, True, args.repeat),
        ]
        print(f"{name:30s}" + "".join(f"{t:21.4f}" for t in times), flush=True)
        rows.append({"layer": name, **dict(zip(WAYS, times))})
    totals = [sum(r[w] for r in rows) for w in WAYS]
    print(f"{'all six':30s}" + "".join(f"{t:21.4f}" for t in totals))
    print()
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()

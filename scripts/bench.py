"""Training speed of the fashion-l1-deep model four ways, on this machine.

    python scripts/bench.py                 # 30000 samples each, batch 32 and 256
    python scripts/bench.py --samples 60000 --skip-compile

Prints samples/s and ratios for: jaxsae (jitted lax.scan epoch); torchsae eager;
torchsae with torch.compile; and a tutorial-style PyTorch loop (per-item Dataset +
DataLoader, batch 32, the L1 penalty computed by re-running the network layer by layer).
Also measures this machine's fp32 matmul GFLOP/s and reports the jaxsae step's achieved
GFLOP/s as a fraction of it. Timings exclude compilation (one warm-up pass first).
"""

import argparse
import dataclasses
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from PIL import Image

from jaxsae import training as jt
from saecommon.architectures import train_step_flops
from saecommon.data import flatten_images, load_dataset
from saecommon.presets import PRESETS
from torchsae import training as tt
from torchsae.models import Autoencoder


def best_of(fn, repeats=3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def matmul_gflops(n=2048) -> dict[str, float]:
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    ja = jnp.asarray(a)
    dot = jax.jit(lambda x: x @ x)
    dot(ja).block_until_ready()
    ta = torch.from_numpy(a)
    torch.mm(ta, ta)
    flops = 2 * n**3
    return {
        "jax": flops / best_of(lambda: dot(ja).block_until_ready(), 5) / 1e9,
        "torch": flops / best_of(lambda: torch.mm(ta, ta), 5) / 1e9,
    }


def bench_jax(run, x: np.ndarray, batch: int) -> float:
    tcfg = dataclasses.replace(run.train, batch_size=batch)
    opt = jt.make_optimizer(tcfg, len(x) // batch)
    epoch = jt.make_train_epoch(jt.make_train_step(run.model, tcfg, opt), batch)
    params = jt.Autoencoder(run.model).init(jax.random.key(0), jnp.zeros((1, 784)))[
        "params"
    ]
    state = jt.TrainState(params, opt.init(params), jnp.zeros((), jnp.int32))
    data = jnp.asarray(x)
    holder = {"state": state}

    def once():
        holder["state"], m = epoch(holder["state"], data, jax.random.key(1))
        jax.block_until_ready(m)

    once()  # compile
    return len(x) // batch * batch / best_of(once)


def bench_torch(run, x: np.ndarray, batch: int, compile: bool) -> float:
    tcfg = dataclasses.replace(run.train, batch_size=batch)
    model = Autoencoder(run.model, generator=torch.Generator().manual_seed(0))
    opt = tt.make_optimizer(tcfg, model.parameters())
    step = tt.make_train_step(run.model, tcfg, model, opt, compile=compile)
    data = torch.from_numpy(x)

    def once():
        tt.train_epoch(step, data, batch, torch.Generator().manual_seed(1))

    once()  # warm-up (and compilation)
    return len(x) // batch * batch / best_of(once, 2)


class TutorialDataset(torch.utils.data.Dataset):
    """Per-item access as torchvision's FashionMNIST dataset + transforms.ToTensor()
    do it (torchvision has no CPU build here, so its two steps are written out): each
    item becomes a PIL image, then a [1, 28, 28] float tensor in [0, 1]."""

    def __init__(self, images: np.ndarray):
        self.images = torch.from_numpy(images)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        pic = Image.fromarray(self.images[i].numpy(), mode="L")
        img = torch.from_numpy(np.array(pic, np.uint8, copy=True))  # to_tensor(pic)
        img = img.view(pic.size[1], pic.size[0], 1).permute((2, 0, 1)).contiguous()
        return img.to(dtype=torch.get_default_dtype()).div(255), 0


class TutorialModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        widths = [784, 256, 128, 64, 32, 16, 32, 64, 128, 256, 784]
        self.layers = torch.nn.ModuleList(
            torch.nn.Linear(i, o) for i, o in zip(widths[:-1], widths[1:])
        )

    def forward(self, x):
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x


def bench_tutorial(images: np.ndarray, reg=1e-3) -> float:
    model = TutorialModel()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(
        TutorialDataset(images), batch_size=32, shuffle=True
    )

    def sparse_loss(img):  # re-runs the network, as the tutorial does
        loss, values = 0, img
        for layer in model.layers:
            values = torch.relu(layer(values))
            loss = loss + torch.mean(torch.abs(values))
        return loss

    def once():
        running = 0.0
        for img, _ in loader:
            img = img.view(img.size(0), -1)
            opt.zero_grad()
            out = model(img)
            loss = torch.nn.functional.mse_loss(out, img) + reg * sparse_loss(img)
            loss.backward()
            opt.step()
            running += loss.item()

    once()
    return len(images) / best_of(once, 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=30000)
    parser.add_argument(
        "--skip-compile", action="store_true", help="skip torch.compile"
    )
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    run = PRESETS["fashion-l1-deep"]
    images = load_dataset("mnist").train_images[: args.samples]
    x = flatten_images(images)
    print(
        f"fashion-l1-deep (784-256-128-64-32-16, mirrored), {args.samples} MNIST samples, "
        f"{platform.processor() or platform.machine()}, torch threads "
        f"{torch.get_num_threads()}, jax {jax.__version__} on {jax.devices()[0].platform}"
    )
    results = {"samples": args.samples}
    peak = matmul_gflops()
    results["matmul_gflops"] = peak
    peak_best = max(peak.values())
    print(
        f"fp32 matmul 2048^2: jax {peak['jax']:.1f} GFLOP/s, torch {peak['torch']:.1f} GFLOP/s"
    )

    rows = {}
    rows["tutorial loop, batch 32"] = bench_tutorial(images)
    for batch in (32, 256):
        rows[f"jaxsae, batch {batch}"] = bench_jax(run, x, batch)
        rows[f"torchsae eager, batch {batch}"] = bench_torch(
            run, x, batch, compile=False
        )
        if not args.skip_compile:
            rows[f"torchsae torch.compile, batch {batch}"] = bench_torch(
                run, x, batch, True
            )
    base = rows["tutorial loop, batch 32"]
    print(
        f"\n{'way':38s} {'samples/s':>11s} {'vs tutorial':>12s} {'GFLOP/s':>8s} {'of peak':>8s}"
    )
    for name, rate in rows.items():
        batch = int(name.rsplit(" ", 1)[1])
        gflops = train_step_flops(run.model, batch) / batch * rate / 1e9
        print(
            f"{name:38s} {rate:11.0f} {rate / base:11.1f}x {gflops:8.1f} "
            f"{gflops / peak_best:7.0%}"
        )
        results[name] = {
            "samples_per_s": rate,
            "vs_tutorial": rate / base,
            "gflops": gflops,
            "fraction_of_peak": gflops / peak_best,
        }
    print(
        "\ntargets: jaxsae batch 32 >= 10x the tutorial loop; jaxsae batch 256 >= 60% of "
        "the matmul peak"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

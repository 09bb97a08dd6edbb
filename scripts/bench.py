"""Training speed of two models four ways each, side by side, on this machine.

    python scripts/bench.py                          # both models, CPU, full sizes
    python scripts/bench.py --model conv --steps 2   # quick: ~1-2 min on 2 CPU cores
    python scripts/bench.py --device cuda --json out.json
    python scripts/bench.py --devices                # a dictionary SAE on 1, 2, 4 devices
    python scripts/bench.py --layers                 # each conv layer, five ways
    python scripts/bench.py --end-to-end             # one training command per framework

Models (``--model mlp|conv|both``):

- mlp: fashion-l1-deep (784-256-128-64-32-16, mirrored), batch 32 and 256, on 30000
  MNIST samples (``--samples``). Its seed-style loop is the FashionMNIST L1 tutorial's:
  per-item Dataset (PIL image, then ToTensor) + DataLoader, batch 32, the L1 penalty
  computed by re-running the network layer by layer, ``loss.item()`` per step.
- conv: ivlabs-l1, the fully convolutional autoencoder (saecommon/reproduction.py),
  batch 1200, one MNIST epoch (50 steps). Its seed-style loop trains as the published
  IvLabs program does: its own nn.Module with the same six layers, BCE + lambda * L1
  over the hidden activations returned by forward, a DataLoader over a TensorDataset,
  each batch moved to the device, ``loss.item()`` per step. Before timing, its loss
  is checked against torchsae's on the same weights.

Ways: the seed-style loop; torchsae eager; torchsae with torch.compile; jaxsae (its
jitted lax.scan epoch). On a GPU jaxsae is timed with each convolution
implementation (JAXSAE_CONV=matmul and =xla; ``--jax-conv``), so a GPU session can
pick the faster; on the CPU ``--jax-conv both`` times jaxsae's convolution kernels
and the matrix products. ``--precision bfloat16`` (or ``both``) times the conv
model's jaxsae and torchsae eager rows in mixed precision too (bfloat16 compute,
float32 master weights and loss: ``TrainConfig.precision``).

``--steps N`` times N steps per way (the mlp: N*256 samples, i.e. N steps at batch
256, 8N at batch 32). Every way runs a warm-up first (compilation, allocator), which is
not timed. Printed per row: s/step, ms per MNIST epoch (60000 samples, the short last
batch dropped), samples/s and the speed relative to the seed-style loop; the mlp also
gets GFLOP/s against this machine's fp32 matmul peak. The last lines are one JSON
object per row (machine-readable; ``--json`` writes them all to a file too).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from jaxsae import training as jt
from jaxsae.conv import ENV as JAX_CONV_ENV
from saecommon.architectures import IMAGE_SHAPE, train_step_flops
from saecommon.data import flatten_images, load_dataset
from saecommon.presets import PRESETS
from saecommon.reproduction import ENTRIES
from torchsae import training as tt
from torchsae.losses import loss_terms
from torchsae.models import Autoencoder

EPOCH_SAMPLES = 60000  # one MNIST training epoch: what ms/epoch is reported for
SEED_WAY = "seed-style loop"


@dataclasses.dataclass
class Row:
    model: str
    way: str
    batch: int
    samples_per_s: float
    steps: int  # steps in one timed pass

    @property
    def s_per_step(self) -> float:
        return self.batch / self.samples_per_s

    @property
    def ms_per_epoch(self) -> float:
        return EPOCH_SAMPLES // self.batch * self.s_per_step * 1e3


def best_of(fn, repeats=3, budget_s=float("inf")) -> float:
    """The fastest of ``repeats`` calls of ``fn``, stopping early once ``budget_s``
    seconds have been spent (at least one call)."""
    times = []
    while len(times) < repeats and sum(times) < budget_s:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_gflops(device: str, n=2048) -> dict[str, float]:
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    ja = jnp.asarray(a)
    dot = jax.jit(lambda x: x @ x)
    dot(ja).block_until_ready()
    ta = torch.from_numpy(a).to(device)
    torch.mm(ta, ta)
    sync(device)

    def torch_mm():
        torch.mm(ta, ta)
        sync(device)

    flops = 2 * n**3
    return {
        "jax": flops / best_of(lambda: dot(ja).block_until_ready(), 5) / 1e9,
        "torch": flops / best_of(torch_mm, 5) / 1e9,
    }


# --- jaxsae and torchsae -----------------------------------------------------------


def bench_jax(run, x: np.ndarray, batch: int, conv: str | None = None) -> float:
    """samples/s of jaxsae's jitted lax.scan epoch over ``x`` [n, 784]. ``conv`` sets
    JAXSAE_CONV while the epoch is traced (jaxsae.conv.conv_impl reads it then)."""
    tcfg = dataclasses.replace(run.train, batch_size=batch)
    opt = jt.make_optimizer(tcfg, len(x) // batch)
    step = jt.make_train_step(run.model, tcfg, opt)
    epoch = jt.make_train_epoch(step, batch, True, step_callbacks=False)
    params = jt.init_params(run.model, jax.random.key(0))
    holder = {
        "state": jt.TrainState(params, opt.init(params), jnp.zeros((), jnp.int32))
    }
    data = jnp.asarray(x)

    def once():
        holder["state"], m = epoch(holder["state"], data, jax.random.key(1))
        jax.block_until_ready(m)

    with mock.patch.dict(os.environ, {} if conv is None else {JAX_CONV_ENV: conv}):
        once()  # trace and compile (with JAXSAE_CONV set), and run once
    return len(x) // batch * batch / best_of(once, 3, budget_s=10)


def bench_torch(run, x: np.ndarray, batch: int, compile: bool, device: str) -> float:
    """samples/s of torchsae's train_epoch over ``x`` [n, 784] on ``device``."""
    tcfg = dataclasses.replace(run.train, batch_size=batch)
    model = Autoencoder(run.model, generator=torch.Generator().manual_seed(0))
    model = model.to(device)
    opt = tt.make_optimizer(tcfg, model.parameters())
    step = tt.make_train_step(run.model, tcfg, model, opt, compile=compile)
    data = torch.from_numpy(x).to(device)
    generator = torch.Generator(device).manual_seed(1)

    def epoch(samples):
        tt.train_epoch(step, samples, batch, generator)  # syncs: reads its metrics

    epoch(data[: 2 * batch])  # warm-up (and compilation): two steps
    return len(x) // batch * batch / best_of(lambda: epoch(data), 2, budget_s=10)


# --- the mlp's seed-style loop: the FashionMNIST L1 tutorial -----------------------


class TutorialDataset(torch.utils.data.Dataset):
    """Per-item access as torchvision's FashionMNIST dataset + transforms.ToTensor()
    do it (torchvision has no CPU build here, so its two steps are written out): each
    item becomes a PIL image, then a [1, 28, 28] float tensor in [0, 1]."""

    def __init__(self, images: np.ndarray):
        from PIL import Image  # here: only this row needs Pillow

        self.to_pil = Image.fromarray
        self.images = torch.from_numpy(images)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        pic = self.to_pil(self.images[i].numpy(), mode="L")
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


def bench_tutorial(images: np.ndarray, device: str, reg=1e-3) -> float:
    model = TutorialModel().to(device)
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

    def once(max_steps=None):
        running = 0.0
        for i, (img, _) in enumerate(loader):
            if i == max_steps:
                break
            img = img.to(device).view(img.size(0), -1)
            opt.zero_grad()
            out = model(img)
            loss = torch.nn.functional.mse_loss(out, img) + reg * sparse_loss(img)
            loss.backward()
            opt.step()
            running += loss.item()

    once(2)  # warm-up
    return len(images) / best_of(once, 1)


# --- the conv model's seed-style loop: the IvLabs program ---------------------------


class IvLabsAE(torch.nn.Module):
    """The fully convolutional autoencoder as the IvLabs notebook writes it: forward
    returns the reconstruction and the hidden activations its L1 term is taken over
    (the same tensors as torchsae's ``hiddens``: two encoder convolutions, the pooled
    code, two decoder convolutions). Parameter names match torchsae's state_dict."""

    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        nn = torch.nn
        self.encoder = nn.ModuleList(
            [nn.Conv2d(1, 8, 3), nn.Conv2d(8, 16, 5), nn.Conv2d(16, 32, 5, stride=2)]
        )
        self.decoder = nn.ModuleList(
            [
                nn.ConvTranspose2d(32, 16, 3, stride=2),
                nn.ConvTranspose2d(16, 8, 5, stride=2),
                nn.ConvTranspose2d(8, 1, 8),
            ]
        )
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):  # x [batch, 1, 28, 28]
        e0, e1, e2 = self.encoder
        d0, d1, d2 = self.decoder
        h1 = F.relu(e0(x))
        h2 = F.relu(e1(h1))
        code = self.pool(F.relu(e2(h2)))  # [batch, 32, 4, 4]
        h4 = F.relu(d0(code))
        h5 = F.relu(d1(h4))
        out = torch.sigmoid(d2(h5))
        return out, (h1, h2, code, h4, h5)


def ivlabs_loss(out, hiddens, img, weight: float):
    """BCE of the sigmoid output + weight * sum over hidden layers of mean |h|."""
    penalty = sum(h.abs().mean() for h in hiddens)
    return F.binary_cross_entropy(out, img) + weight * penalty


def check_ivlabs_loss(run, images: np.ndarray) -> float:
    """|seed-style loss - torchsae's loss| on the same weights and 64 images: the
    seed loop must train the same objective (raises if it does not)."""
    cfg = run.model
    assert (cfg.architecture, cfg.activation, cfg.code_activation) == (
        "fullconv",
        "relu",
        "relu",
    ), "IvLabsAE is written for ivlabs-l1 (fullconv, ReLU)"
    assert (cfg.loss, cfg.penalty, cfg.l1_layers) == ("bce", "l1", "hidden")
    ours = Autoencoder(cfg, generator=torch.Generator().manual_seed(0))
    seed = IvLabsAE()
    seed.load_state_dict(ours.state_dict())
    x = torch.from_numpy(flatten_images(images[:64]))
    with torch.no_grad():
        want = loss_terms(ours(x, train=True), x, cfg)["loss"].item()
        out, hiddens = seed(x.view(-1, *IMAGE_SHAPE))
        got = ivlabs_loss(out, hiddens, x.view(-1, *IMAGE_SHAPE), cfg.penalty_weight)
    diff = abs(got.item() - want)
    if diff > 1e-5 * abs(want):
        raise AssertionError(
            f"seed-style IvLabs loss {got.item():.7f} != torchsae's {want:.7f}"
        )
    return diff


def bench_ivlabs(run, images: np.ndarray, device: str) -> float:
    torch.manual_seed(run.train.seed)
    model = IvLabsAE().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=run.train.learning_rate)
    data = torch.from_numpy(images).float().div(255).unsqueeze(1)  # [n, 1, 28, 28]
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(data),
        batch_size=run.train.batch_size,
        shuffle=True,
    )
    weight = run.model.penalty_weight

    def once(max_steps=None):
        running = 0.0
        for i, (img,) in enumerate(loader):
            if i == max_steps:
                break
            img = img.to(device)
            opt.zero_grad()
            out, hiddens = model(img)
            loss = ivlabs_loss(out, hiddens, img, weight)
            loss.backward()
            opt.step()
            running += loss.item()

    once(2)  # warm-up
    return len(images) / best_of(once, 1)


# --- the two models' rows ------------------------------------------------------------


def done(row: Row) -> Row:
    """Says at once what was measured (a run cut short by a time limit keeps it)."""
    print(
        f"  {row.model} {row.way}, batch {row.batch}: {row.s_per_step:.4g} s/step",
        flush=True,
    )
    return row


def mlp_rows(args, images: np.ndarray) -> list[Row]:
    run = PRESETS["fashion-l1-deep"]
    x = flatten_images(images)
    n = len(images)
    rate = bench_tutorial(images, args.device)
    rows = [done(Row("mlp", SEED_WAY, 32, rate, -(-n // 32)))]
    for batch in (32, 256):
        steps = n // batch
        rate = bench_jax(run, x, batch)
        rows.append(done(Row("mlp", "jaxsae", batch, rate, steps)))
        rate = bench_torch(run, x, batch, False, args.device)
        rows.append(done(Row("mlp", "torchsae eager", batch, rate, steps)))
        if not args.skip_compile:
            rate = bench_torch(run, x, batch, True, args.device)
            rows.append(done(Row("mlp", "torchsae torch.compile", batch, rate, steps)))
    return rows


def jax_convs(choice: str | None) -> list[str | None]:
    """The JAXSAE_CONV values to time jaxsae with (None: leave it unset)."""
    cpu = jax.default_backend() == "cpu"
    if choice is None:  # both where there is a choice to make
        choice = "auto" if cpu else "both"
    if choice == "both":
        return ["kernel", "matmul"] if cpu else ["matmul", "xla"]
    return [None if choice == "auto" else choice]


def conv_rows(args, images: np.ndarray) -> list[Row]:
    run = ENTRIES["ivlabs-l1"].run
    batch = run.train.batch_size
    diff = check_ivlabs_loss(run, images)
    print(
        f"conv seed-style loss = torchsae's loss on the same weights (|diff| {diff:.1e})"
    )
    x = flatten_images(images)
    steps = len(x) // batch
    rate = bench_ivlabs(run, images, args.device)
    rows = [done(Row("conv", SEED_WAY, batch, rate, steps))]
    for precision in precisions(args.precision):
        mixed = dataclasses.replace(
            run, train=dataclasses.replace(run.train, precision=precision)
        )
        tag = "" if precision == "float32" else " bf16"
        rate = bench_torch(mixed, x, batch, False, args.device)
        rows.append(done(Row("conv", "torchsae eager" + tag, batch, rate, steps)))
        if not args.skip_compile and precision == "float32":
            rate = bench_torch(mixed, x, batch, True, args.device)
            rows.append(done(Row("conv", "torchsae torch.compile", batch, rate, steps)))
        for conv in jax_convs(args.jax_conv):
            name = "jaxsae" if conv is None else f"jaxsae {JAX_CONV_ENV}={conv}"
            rate = bench_jax(mixed, x, batch, conv)
            rows.append(done(Row("conv", name + tag, batch, rate, steps)))
    return rows


def precisions(choice: str) -> list[str]:
    """The training precisions to time the conv model's jaxsae and torchsae in."""
    return ["float32", "bfloat16"] if choice == "both" else [choice]


def print_table(rows: list[Row], extra=None) -> None:
    base = next(r for r in rows if r.way == SEED_WAY)
    head = f"{'way':34s} {'batch':>5s} {'s/step':>9s} {'ms/epoch':>10s} {'samples/s':>10s} {'vs seed':>8s}"
    print(head + (extra(None) if extra else ""))
    for r in rows:
        print(
            f"{r.way:34s} {r.batch:5d} {r.s_per_step:9.4f} {r.ms_per_epoch:10.0f} "
            f"{r.samples_per_s:10.0f} {r.samples_per_s / base.samples_per_s:7.2f}x"
            + (extra(r) if extra else "")
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("mlp", "conv", "both"), default="both")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--steps",
        type=int,
        help="quick mode: time N steps per way (conv: N*1200 samples; mlp: N*256)",
    )
    parser.add_argument(
        "--samples", type=int, default=30000, help="mlp samples without --steps"
    )
    parser.add_argument(
        "--skip-compile", action="store_true", help="skip torch.compile"
    )
    parser.add_argument(
        "--jax-conv",
        choices=("auto", "kernel", "matmul", "xla", "both"),
        help=f"{JAX_CONV_ENV} for the conv model's jaxsae row(s); both: matmul and "
        "xla on a GPU, kernel and matmul on the CPU; default: both on a GPU, auto "
        "(kernel) on the CPU",
    )
    parser.add_argument(
        "--precision",
        choices=("float32", "bfloat16", "both"),
        default="float32",
        help="the conv model's jaxsae and torchsae rows in this training precision "
        "(bfloat16: bfloat16 compute, float32 master weights; both: each; "
        "torch.compile and the seed-style loop stay float32)",
    )
    parser.add_argument("--json", help="also write every row to this file")
    parser.add_argument(
        "--devices",
        action="store_true",
        help="instead: a jaxsae dictionary SAE on 1, 2 and 4 devices and each mesh "
        "(scripts/bench_devices.py; --steps passes on)",
    )
    parser.add_argument(
        "--layers",
        action="store_true",
        help="instead: each convolution of the conv model, forward and both "
        "gradients, five ways (scripts/bench_conv_layers.py)",
    )
    parser.add_argument(
        "--end-to-end",
        action="store_true",
        help="instead: the wall time of one ivlabs-l1 training command per framework "
        "and where it goes (scripts/bench_e2e.py; --device passes on)",
    )
    args = parser.parse_args()
    if args.end_to_end:
        import bench_e2e

        return bench_e2e.main(["--device", args.device])
    if args.layers:
        import bench_conv_layers

        return bench_conv_layers.main([])
    if args.devices:
        import bench_devices

        return bench_devices.main(
            [] if args.steps is None else ["--steps", str(args.steps)]
        )
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    if args.device == "cpu" and "JAX_PLATFORMS" not in os.environ:
        jax.config.update("jax_platforms", "cpu")  # both frameworks on the CPU

    dataset = load_dataset("mnist").train_images
    torch_where = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_device": torch_where,
        "torch_threads": torch.get_num_threads(),
        "jax": jax.__version__,
        "jax_device": str(jax.devices()[0].device_kind),
        "jax_backend": jax.default_backend(),
    }
    if args.device == "cuda":  # timed at each framework's default float32 precision
        machine["torch_tf32"] = {
            "matmul": torch.backends.cuda.matmul.allow_tf32,
            "cudnn": torch.backends.cudnn.allow_tf32,
        }
        machine["jax_matmul_precision"] = str(jax.config.jax_default_matmul_precision)
    print(
        f"{machine['cpu']} ({machine['cpu_count']} cores), torch {torch.__version__} "
        f"on {torch_where} ({machine['torch_threads']} threads), jax {jax.__version__} "
        f"on {machine['jax_backend']} ({machine['jax_device']})"
    )
    if args.device == "cuda":
        print(
            f"default precisions: torch TF32 {machine['torch_tf32']}, jax "
            f"default_matmul_precision {machine['jax_matmul_precision']}"
        )
    results = []

    if args.model in ("mlp", "both"):
        n = args.samples if args.steps is None else args.steps * 256
        print(
            f"\nmlp: fashion-l1-deep (784-256-128-64-32-16, mirrored), {n} MNIST "
            "samples per timed pass"
        )
        peak = matmul_gflops(args.device)
        peak_best = max(peak.values())
        print(
            f"fp32 matmul 2048^2: jax {peak['jax']:.1f} GFLOP/s, torch "
            f"{peak['torch']:.1f} GFLOP/s"
        )
        rows = mlp_rows(args, dataset[:n])
        config = PRESETS["fashion-l1-deep"].model

        def gflops(r):
            if r is None:
                return f" {'GFLOP/s':>8s} {'of peak':>8s}"
            g = train_step_flops(config, r.batch) / r.s_per_step / 1e9
            return f" {g:8.1f} {g / peak_best:7.0%}"

        print()
        print_table(rows, gflops)
        results += [
            {
                **row_json(r, rows, args),
                "gflops": train_step_flops(config, r.batch) / r.s_per_step / 1e9,
                "matmul_peak_gflops": peak_best,
            }
            for r in rows
        ]

    if args.model in ("conv", "both"):
        run = ENTRIES["ivlabs-l1"].run
        n = EPOCH_SAMPLES if args.steps is None else args.steps * run.train.batch_size
        print(
            f"\nconv: ivlabs-l1 (fullconv, {run.model.activation}, BCE + L1 on every "
            f"hidden layer), batch {run.train.batch_size}, {n} MNIST samples per "
            "timed pass"
        )
        rows = conv_rows(args, dataset[:n])
        print()
        print_table(rows)
        results += [row_json(r, rows, args) for r in rows]

    print()
    for row in results:
        print(json.dumps({**row, **machine}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "rows": results}, f, indent=1)


def row_json(r: Row, rows: list[Row], args) -> dict:
    base = next(b for b in rows if b.way == SEED_WAY)
    return {
        "bench": r.model,
        "way": r.way,
        "batch": r.batch,
        "device": args.device,
        "timed_steps": r.steps,
        "s_per_step": r.s_per_step,
        "ms_per_epoch": r.ms_per_epoch,
        "samples_per_s": r.samples_per_s,
        "vs_seed": r.samples_per_s / base.samples_per_s,
    }


if __name__ == "__main__":
    raise SystemExit(main())

"""TopK SAE training, four ways, on the same activations: speed, memory and FVU.

    bash scripts/peers_env.sh                       # once: .peers-venv with the peers
    .venv/bin/python scripts/bench_sae.py --activations acts.npy
    .venv/bin/python scripts/bench_sae.py --synthetic 90112 --steps 20 \\
        --impls saelens,sparsify                    # smoke run, ~1 min on 2 cores
    .venv/bin/python scripts/bench_sae.py --activations acts.npy --json rows.json

Implementations (``--impls``, default all): ``jaxsae`` and ``torchsae`` (this repo's
dictionary SAEs, run by ``--python-ours``, default .venv/bin/python) and ``saelens`` and
``sparsify`` (run by ``--python-peers``, default .peers-venv/bin/python, made by
scripts/peers_env.sh). Each trains the same TopK SAE (d_in from the data, ``--d-sae``
3072 latents, ``--k`` 32, batch ``--batch`` 4096 tokens, Adam at a constant ``--lr``
2e-4, float32, CPU, ``--steps`` 200 steps) in its own subprocess, one after another so
they do not share the cores. How each peer is set up, and which of its defaults could
not be matched, is written in scripts/bench_sae_peers.py's docstring.

Data: ``--cache DIR`` is an activation cache (scripts/cache_activations.py), copied in
cache order to one temporary .npy; ``--activations`` is a float32 .npy
[tokens, d_in]; ``--synthetic N`` writes N seeded tokens of
sparse combinations of random unit directions plus noise to a temporary .npy instead.
The last ``--heldout`` tokens are held out for the FVU; the rest are trained on in a
seeded order (one permutation, wrapping around), copied batch by batch out of the
memory map in every worker.

Timing: the first ``--warmup-steps`` (2) steps of each worker are untimed (compilation,
allocator, lazily made optimizer state); tokens/s is over the remaining steps only, and
excludes imports, data loading and the held-out evaluation (the ``wall s`` column
includes all of it). Memory: the worker's RSS after its imports, before its first step
(model, optimizer, data map and held-out copy made), and its peak (ru_maxrss).

The table gives each row's tokens/s, FVU and peak memory against ``--reference``
(sparsify); the last lines are one JSON object per row, and ``--json`` writes them all.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

# This script's folder is sys.path[0] when it is run as a script.
from bench_sae_peers import (
    EVAL_BATCH,
    PEERS,
    add_worker_args,
    check_args,
    fvu,
    load_split,
    result_row,
    rss_mib,
)

OURS = ("jaxsae", "torchsae")
IMPLS = OURS + PEERS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS_SCRIPT = os.path.join(ROOT, "scripts", "bench_sae_peers.py")


# --- synthetic activations -----------------------------------------------------------


def write_synthetic(
    path: str, tokens: int, d_in: int = 384, *, seed: int = 0, chunk: int = 8192
) -> None:
    """A float32 .npy [tokens, d_in] of structured activations, written chunk by chunk:
    each token is a sparse non-negative combination of ``4 * d_in`` random unit
    directions (6 active per token on average, with a few frequent directions so the
    latents' frequencies vary as in a model), plus a mean offset and Gaussian noise.
    """
    rng = np.random.default_rng(seed)
    n_dirs = 4 * d_in
    dirs = rng.standard_normal((n_dirs, d_in)).astype(np.float32)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    # Firing probability per direction, Zipf-like: mean 6 / n_dirs.
    p = 1.0 / np.arange(1, n_dirs + 1) ** 0.7
    p *= 6.0 / p.sum()
    offset = rng.standard_normal(d_in).astype(np.float32)
    out = np.lib.format.open_memmap(
        path, mode="w+", dtype=np.float32, shape=(tokens, d_in)
    )
    for start in range(0, tokens, chunk):
        n = min(chunk, tokens - start)
        active = rng.random((n, n_dirs)) < p
        coef = np.where(active, rng.exponential(1.0, (n, n_dirs)), 0.0).astype(
            np.float32
        )
        noise = 0.05 * rng.standard_normal((n, d_in)).astype(np.float32)
        out[start : start + n] = coef @ dirs + offset + noise
    out.flush()
    del out


# --- our implementations (run as workers by this script: --worker jaxsae|torchsae) ----
# The one place that knows the dictionary-training API of jaxsae/torchsae, in
# {jaxsae,torchsae}.OURS_MODULE:
#   train_array(model_config, train_config, data, *, steps, warmup_steps_untimed=1)
#       -> (state_dict: dict[str, np.ndarray], seconds of the timed steps)
#   forward_numpy(state_dict, model_config, x [tokens, d_in]) -> (z, x_hat)
# (torch's also take device=), with the configs of saecommon.dictionary_config.
# ``data`` is the training memmap [tokens, d_in]; train_array batches it in
# bench_sae_peers.batch_indices's order (saecommon.dictionary.array_start: one seeded
# permutation, wrapping), so every impl sees the same tokens each step.
OURS_MODULE = "dictionary_training"


def _ours_configs(args: argparse.Namespace, d_in: int):
    """(DictConfig, DictTrainConfig) matching the peers' setup (see the peers' doc)."""
    from saecommon.dictionary_config import DictConfig, DictTrainConfig

    model_config = DictConfig(d_in=d_in, d_sae=args.d_sae, activation="topk", k=args.k)
    train_config = DictTrainConfig(
        steps=args.steps,
        batch_size=args.batch,
        learning_rate=args.lr,  # constant: no warm-up, no decay, no clipping
        seed=args.seed,
        # sparsify's AuxK: k_aux = d_in // 2, the error over the batch's x variance
        aux_k=d_in // 2 if args.auxk_alpha > 0 else None,
        aux_coefficient=args.auxk_alpha,
        dead_tokens=args.dead_tokens,
        aux_normalization="x_variance",
        normalize_decoder=True,  # sparsify: unit rows + gradient projection
        b_dec_init="mean" if args.b_dec_init == "mean" else "zeros",
        init_sample_tokens=args.batch,  # sparsify: the first batch's mean
        input_normalization="none",  # neither peer normalises here
        precision=args.precision,
    )
    return model_config, train_config


def _jax_device(device: str):
    import jax

    platform = "gpu" if device.startswith(("cuda", "gpu")) else "cpu"
    return jax.default_device(jax.devices(platform)[0])


def run_ours(impl: str, args: argparse.Namespace) -> dict:
    """Train with jaxsae or torchsae's dictionary_training; the result row."""
    from importlib import import_module
    from importlib.metadata import version

    dt = import_module(f"{impl}.{OURS_MODULE}")
    framework = "jax" if impl == "jaxsae" else "torch"
    rss, train, heldout = load_split(args)
    model_config, train_config = _ours_configs(args, train.shape[1])
    # train_array builds the model and optimizer itself: this is imports + data only.
    rss["rss_before_train_mib"] = rss_mib()
    on_device = {} if framework == "jax" else {"device": args.device}
    with _jax_device(args.device) if framework == "jax" else contextlib.nullcontext():
        state, seconds = dt.train_array(
            model_config,
            train_config,
            train,
            steps=args.steps,
            warmup_steps_untimed=args.warmup_steps,
            **on_device,
        )
        # in EVAL_BATCH chunks, as the peers' held-out forward goes
        x_hat = np.concatenate(
            [
                dt.forward_numpy(state, model_config, chunk, **on_device)[1]
                for chunk in np.split(
                    heldout, range(EVAL_BATCH, len(heldout), EVAL_BATCH)
                )
            ]
        )
    ver = f"{version('jax-torch-sae')} ({framework} {version(framework)})"
    notes = (
        f"{args.device}, {args.precision}; rss_before_train: before train_array "
        "builds the model"
    )
    return result_row(impl, ver, args, seconds, rss, fvu(heldout, x_hat), notes)


def write_cache_copy(path: str, cache_dir: str) -> int:
    """The cache's tokens, in cache order, as one float32 .npy at ``path``."""
    from saecommon.activations import ActivationCache

    cache = ActivationCache(cache_dir)
    out = np.lib.format.open_memmap(
        path, mode="w+", dtype=np.float32, shape=(cache.n_tokens, cache.d_in)
    )
    for lo in range(0, cache.n_tokens, 8192):
        batch = cache.rows(lo, min(lo + 8192, cache.n_tokens))
        out[lo : lo + len(batch)] = batch
    out.flush()
    return cache.n_tokens


# --- orchestration -------------------------------------------------------------------


def worker_flags(args: argparse.Namespace, activations: str, impl: str) -> list[str]:
    flags = ["--activations", activations]
    for name in (
        "heldout steps warmup_steps batch d_sae k lr seed b_dec_init auxk_alpha dead_tokens"
    ).split():
        flags += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    if impl in OURS:
        flags += ["--device", args.device, "--precision", args.precision]
    return flags


def run_worker(impl: str, args: argparse.Namespace, activations: str) -> dict:
    """One impl in its own process; its JSON row plus the process's wall time, or a row
    with ``error`` (the tail of its output) when it fails."""
    if impl in OURS:
        cmd = [args.python_ours, os.path.abspath(__file__), "--worker", impl]
    else:
        cmd = [args.python_peers, PEERS_SCRIPT, "--impl", impl]
    if not os.path.exists(cmd[0]):
        hint = " (bash scripts/peers_env.sh)" if impl in PEERS else ""
        return {"impl": impl, "error": f"no interpreter {cmd[0]}{hint}"}
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd + worker_flags(args, activations, impl),
            capture_output=True,
            text=True,
            timeout=args.timeout,
            cwd=ROOT,
        )
    except subprocess.TimeoutExpired:
        return {"impl": impl, "error": f"timed out after {args.timeout} s"}
    wall = time.perf_counter() - start
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if proc.returncode == 0 and row.get("impl") == impl:
                return {**row, "wall_s": round(wall, 1)}
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:]  # the exception
    return {"impl": impl, "error": f"exit {proc.returncode}: " + " | ".join(tail)}


def table(rows: list[dict], reference: str) -> str:
    ref = next((r for r in rows if r["impl"] == reference and "error" not in r), None)

    def ratio(row, key, relative_diff=False):
        if ref is None or not ref[key]:
            return "-"
        if relative_diff:
            return f"{(row[key] - ref[key]) / ref[key]:+.1%}"
        return f"{row[key] / ref[key]:.2f}x"

    head = (
        f"{'impl':<9} {'version':<24} {'tok/s':>9} {'vs ref':>7} {'train s':>8} "
        f"{'FVU':>8} {'vs ref':>7} {'peak MiB':>9} {'vs ref':>7} "
        f"{'before MiB':>10} {'wall s':>7}"
    )
    lines = [f"reference: {reference}", head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['impl']:<9} ERROR {r['error']}")
            continue
        lines.append(
            f"{r['impl']:<9} {r['version'][:24]:<24} {r['tokens_per_s']:>9.0f} "
            f"{ratio(r, 'tokens_per_s'):>7} {r['train_s']:>8.2f} {r['fvu']:>8.4f} "
            f"{ratio(r, 'fvu', True):>7} {r['peak_rss_mib']:>9.0f} "
            f"{ratio(r, 'peak_rss_mib'):>7} {r['rss_before_train_mib']:>10.0f} "
            f"{r['wall_s']:>7.1f}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", choices=OURS, help=argparse.SUPPRESS)
    add_worker_args(parser, required=False)
    parser.add_argument("--synthetic", type=int, metavar="N", help="N random tokens")
    parser.add_argument(
        "--cache",
        help="an activation cache (scripts/cache_activations.py): its tokens, in "
        "cache order, are copied to one temporary .npy the workers map",
    )
    parser.add_argument("--d-in", type=int, default=384, help="--synthetic's width")
    parser.add_argument("--impls", default=",".join(IMPLS), help="comma-separated")
    parser.add_argument(
        "--device", default="cpu", help="jaxsae and torchsae: cpu or cuda (peers: cpu)"
    )
    parser.add_argument(
        "--precision",
        default="float32",
        choices=("float32", "bfloat16"),
        help="jaxsae and torchsae: bfloat16 products, float32 master weights",
    )
    parser.add_argument("--reference", default="sparsify", choices=IMPLS)
    parser.add_argument("--json", help="write all rows to this file")
    parser.add_argument("--timeout", type=float, help="seconds per worker")
    parser.add_argument("--python-ours", default=os.path.join(ROOT, ".venv/bin/python"))
    parser.add_argument(
        "--python-peers", default=os.path.join(ROOT, ".peers-venv/bin/python")
    )
    args = parser.parse_args(argv)
    if sum(a is not None for a in (args.activations, args.synthetic, args.cache)) != 1:
        parser.error("give exactly one of --activations, --synthetic and --cache")
    check_args(args)
    args.impls = args.impls.split(",")
    if unknown := set(args.impls) - set(IMPLS):
        parser.error(f"--impls: unknown {sorted(unknown)}; choose from {IMPLS}")
    return args


def main() -> None:
    args = parse_args()
    if args.worker:
        print(json.dumps(run_ours(args.worker, args)), flush=True)
        return
    with tempfile.TemporaryDirectory(prefix="bench_sae_") as tmp:
        activations = args.activations
        if args.synthetic:
            activations = os.path.join(tmp, "synthetic.npy")
            start = time.perf_counter()
            write_synthetic(activations, args.synthetic, args.d_in, seed=args.seed)
            took = time.perf_counter() - start
            print(f"synthetic: {args.synthetic} x {args.d_in} tokens in {took:.1f} s")
        if args.cache:
            activations = os.path.join(tmp, "cache.npy")
            n = write_cache_copy(activations, args.cache)
            print(f"cache {args.cache}: {n} tokens")
        rows = []
        for impl in args.impls:
            print(f"{impl} ...", flush=True)
            rows.append(run_worker(impl, args, os.path.abspath(activations)))
            print(json.dumps(rows[-1]), flush=True)
    print()
    print(
        f"{args.steps} steps x {args.batch} tokens (first {args.warmup_steps} untimed),"
        f" d_sae {args.d_sae}, k {args.k}, Adam lr {args.lr}, held out {args.heldout}"
    )
    print(table(rows, args.reference))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    sys.exit(1 if any("error" in r for r in rows) else 0)


if __name__ == "__main__":
    main()

"""Throughput of a jaxsae dictionary SAE on 1, 2 and 4 devices and every (data, model)
mesh of them, side by side (``scripts/bench.py --devices`` runs this).

    python scripts/bench_devices.py                    # forced CPU devices: 1, 2, 4
    python scripts/bench_devices.py --steps 5 --d-sae 1536

Each device count runs in its own process with
XLA_FLAGS=--xla_force_host_platform_device_count=N (on a GPU machine the real devices
are used instead, and counts above them are skipped). Forced CPU devices share this
machine's cores, so the rows show what the collectives and the partitioned step cost,
not a speed-up: N forced devices are never faster than one here. Printed per row:
devices, mesh (DATAxMODEL; "-" is one device without a mesh), tokens/s and the ratio to
one device; the last lines are one JSON object per row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

MESHES = {1: [None, (1, 1)], 2: [(2, 1), (1, 2)], 4: [(4, 1), (1, 4), (2, 2)]}


def child(args) -> None:
    import jax
    import numpy as np

    from jaxsae.dictionary_training import train_array
    from saecommon.dictionary_config import DictConfig, DictTrainConfig

    if len(jax.devices()) < args.child:
        return
    config = DictConfig(d_in=args.d_in, d_sae=args.d_sae, activation="topk", k=args.k)
    train = DictTrainConfig(batch_size=args.batch, b_dec_init="zeros", aux_k=None)
    data = np.random.default_rng(0).standard_normal((args.batch * 4, args.d_in))
    data = data.astype(np.float32)
    for mesh in MESHES[args.child]:
        _, seconds = train_array(config, train, data, steps=args.steps + 1, mesh=mesh)
        row = {
            "devices": args.child,
            "platform": jax.devices()[0].platform,
            "mesh": "-" if mesh is None else f"{mesh[0]}x{mesh[1]}",
            "tokens_per_s": args.batch * args.steps / seconds,
        }
        print(json.dumps(row), flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row")
    parser.add_argument("--d-in", type=int, default=384)
    parser.add_argument("--d-sae", type=int, default=3072)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1024, help="tokens per step")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0
    rows = []
    for count in MESHES:
        env = dict(os.environ)
        env.setdefault("XLA_FLAGS", "")
        env["XLA_FLAGS"] += f" --xla_force_host_platform_device_count={count}"
        command = [sys.executable, __file__, "--child", str(count)]
        for flag in ("steps", "d_in", "d_sae", "k", "batch"):
            command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode:
            print(done.stderr[-2000:], file=sys.stderr)
            return done.returncode
        rows += [json.loads(line) for line in done.stdout.splitlines() if line]
    base = rows[0]["tokens_per_s"]
    print(
        f"dictionary TopK {args.d_in} -> {args.d_sae}, k {args.k}, batch {args.batch}, "
        f"{args.steps} timed steps, {rows[0]['platform']}"
    )
    print(f"{'devices':>7}  {'mesh':>5}  {'tokens/s':>10}  {'vs 1':>5}")
    for row in rows:
        row["vs_one_device"] = row["tokens_per_s"] / base
        print(
            f"{row['devices']:>7}  {row['mesh']:>5}  {row['tokens_per_s']:>10,.0f}  "
            f"{row['vs_one_device']:>5.2f}"
        )
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())

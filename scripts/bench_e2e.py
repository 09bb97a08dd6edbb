"""End to end: the wall time of one training command in jaxsae and in torchsae, and
where it goes.

    python scripts/bench_e2e.py                           # ivlabs-l1, 20 epochs, CPU
    python scripts/bench_e2e.py --device cuda
    python scripts/bench_e2e.py --epochs 2 --samples 2400 # quick: ~1 min on 2 cores
    python scripts/bench.py --end-to-end                  # the same, through bench.py

Each framework runs ``scripts/train.py`` in a fresh process, as a user would: the
entry's setup (``saecommon/reproduction.py``; ivlabs-l1 by default) from the same
initial weights where the entry starts from torch's seed draw, into a temporary
folder that is removed afterwards (``--keep DIR`` keeps the runs in a new folder).
``--samples N`` trains on the first N MNIST training images and N/6 test images,
written beside the runs as IDX files.

The command's wall time is split by what the run records (each epoch's seconds, in
its metrics.jsonl) and when it wrote its files:

- start: from the process's start to its first epoch (imports, data, model init,
  device set-up);
- first epoch, and compile: the first epoch less the median of the others (an
  estimate of compilation and warm-up; 0 where the first epoch was no slower);
- epochs: every epoch (training steps and the per-epoch evaluation);
- saves: the checkpoints and metrics written between epochs;
- finish: the pictures and summary after the last epoch; exit: from there to the
  process's end;
- outside: the wall time less the epochs.

Each framework's row is printed as one JSON line as soon as its command ends, and
the table after the last (``--json FILE`` writes the rows too).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import reproduce

from saecommon import rundir
from saecommon.cli import run_flags
from saecommon.data import Dataset, load_dataset, write_idx_dir
from saecommon.reproduction import ENTRIES

ROOT = pathlib.Path(__file__).resolve().parents[1]
COLUMNS = (
    ("wall_s", "wall s"),
    ("start_s", "start"),
    ("first_epoch_s", "1st epoch"),
    ("compile_s", "compile"),
    ("epoch_s", "epoch"),
    ("epochs_s", "epochs"),
    ("saves_s", "saves"),
    ("finish_s", "finish"),
    ("exit_s", "exit"),
    ("outside_s", "outside"),
)


def subset(n: int, folder: pathlib.Path) -> str:
    """The first ``n`` MNIST training images and n/6 test images as an IDX folder."""
    mnist = load_dataset("mnist")
    n_test = max(1, n // 6)
    if not 0 < n <= len(mnist.train_images):
        raise SystemExit(f"--samples: 1 to {len(mnist.train_images)}, got {n}")
    part = Dataset(
        f"mnist[:{n}]",
        mnist.train_images[:n],
        mnist.train_labels[:n],
        mnist.test_images[:n_test],
        mnist.test_labels[:n_test],
    )
    return write_idx_dir(folder, part)


def breakdown(out_dir: pathlib.Path, began: float, ended: float) -> dict:
    """The parts of one run's wall time (``began``/``ended``: time.time() around
    its process) from its history and its files' modification times."""
    history = rundir.read_history(out_dir)
    seconds = [row["seconds"] for row in history]
    first_saved = os.path.getmtime(out_dir / rundir.CONFIG)  # written at the 1st save
    last_saved = os.path.getmtime(out_dir / rundir.HISTORY)
    finished = os.path.getmtime(out_dir / rundir.SUMMARY)
    first_began = first_saved - seconds[0]
    steady = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
    return {
        "wall_s": ended - began,
        "start_s": first_began - began,
        "first_epoch_s": seconds[0],
        "compile_s": max(0.0, seconds[0] - steady),
        "epoch_s": steady,
        "epochs_s": sum(seconds),
        "saves_s": last_saved - first_began - sum(seconds),
        "finish_s": finished - last_saved,
        "exit_s": ended - finished,
        "outside_s": ended - began - sum(seconds),
    }


def run_one(framework: str, flags: list[str], out_dir: pathlib.Path, device: str):
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "train.py"),
        "--framework",
        framework,
        "--device",
        device,
        "--out",
        str(out_dir),
        "--quiet",
        *flags,
    ]
    began = time.time()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    ended = time.time()
    if done.returncode != 0:
        raise SystemExit(
            f"{framework}: train.py exited with {done.returncode}:\n{done.stderr[-3000:]}"
        )
    return breakdown(out_dir, began, ended)


def print_table(rows: list[dict]) -> None:
    width = max(len(r["framework"]) for r in rows)
    print(f"{'':{width}}  " + "  ".join(f"{title:>9}" for _, title in COLUMNS))
    for r in rows:
        cells = "  ".join(f"{r[key]:9.2f}" for key, _ in COLUMNS)
        print(f"{r['framework']:{width}}  {cells}")
    by = {r["framework"]: r for r in rows}
    if {"jax", "torch"} <= by.keys():
        jax, torch = by["jax"], by["torch"]
        print(
            f"wall time jax / torch: {jax['wall_s'] / torch['wall_s']:.2f}; "
            f"outside the epochs: {jax['outside_s']:.1f}s / {torch['outside_s']:.1f}s"
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entry", choices=sorted(ENTRIES), default="ivlabs-l1")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (train.py's)")
    parser.add_argument("--epochs", type=int, help="default: the entry's")
    parser.add_argument(
        "--samples", type=int, help="train on the first N MNIST images (default: all)"
    )
    parser.add_argument(
        "--frameworks", default="jax,torch", help="comma-separated, run in this order"
    )
    parser.add_argument("--keep", help="keep the runs in this new folder")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    entry = ENTRIES[args.entry]
    frameworks = [name for name in args.frameworks.split(",") if name]
    if not frameworks or set(frameworks) - {"jax", "torch"}:
        parser.error(f"--frameworks: jax and/or torch, got {args.frameworks!r}")
    if entry.needs_fashion:
        parser.error(f"{args.entry} trains on Fashion-MNIST: pick an MNIST entry")
    if args.keep and os.path.exists(args.keep):
        parser.error(f"--keep {args.keep}: exists; name a new folder")
    train = entry.run.train
    if args.epochs is not None:
        if args.epochs < 1:
            parser.error(f"--epochs: at least 1, got {args.epochs}")
        train = dataclasses.replace(train, epochs=args.epochs)
    work = pathlib.Path(args.keep or tempfile.mkdtemp(prefix="bench_e2e-"))
    try:
        work.mkdir(parents=True, exist_ok=True)
        if args.samples:
            train = dataclasses.replace(
                train, dataset=subset(args.samples, work / "data")
            )
        run = dataclasses.replace(entry.run, train=train)
        flags = run_flags(run)
        if reproduce.shared_init(entry, run, work) is not None:  # torch's seed draw
            flags += ["--init-from", str(work / reproduce.INIT)]
        samples = args.samples or "all"
        print(
            f"{args.entry}: {run.train.epochs} epochs of {samples} MNIST training "
            f"images, batch {run.train.batch_size}, device {args.device} "
            f"({platform.machine()}, {os.cpu_count()} CPUs), one train.py process each"
        )
        rows = []
        for framework in frameworks:
            parts = run_one(framework, flags, work / framework, args.device)
            rows.append(
                {
                    "bench": "e2e",
                    "entry": args.entry,
                    "framework": framework,
                    "device": args.device,
                    "epochs": run.train.epochs,
                    "samples": args.samples,
                    **parts,
                }
            )
            print(json.dumps(rows[-1]), flush=True)  # kept if a time limit cuts in
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print_table(rows)
    if args.json:
        pathlib.Path(args.json).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Reproduce a published result: train with its hyperparameters, evaluate, and print
published vs measured side by side (saecommon/reproduce.py lists the entries).

python scripts/reproduce.py mnist-topk                 # both frameworks
python scripts/reproduce.py ivlabs-l1 --framework jax
python scripts/reproduce.py fashion-l1-deep --data-dir ~/data/fashion-mnist
python scripts/reproduce.py --table                    # README table from the results
python scripts/reproduce.py --list

A run that already finished in --out is evaluated again, not retrained; an interrupted
one resumes. Results go to docs/reproduce/<entry>-<framework>.json (and the README
table), except those of runs with --seed or --epochs, which are printed only (unless
--results names another folder).
"""

import argparse
import dataclasses
import functools
import json
import os
import platform
import sys
import time

import numpy as np

from saecommon import reproduce, runs
from saecommon.checkpoint import CheckpointError, read_checkpoint, write_checkpoint
from saecommon.config import ConfigError
from saecommon.data import DataError
from saecommon.train_config import RunConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("entry", nargs="?", choices=sorted(reproduce.ENTRIES))
    parser.add_argument("--framework", choices=("jax", "torch", "both"), default="both")
    parser.add_argument("--out", default="runs/reproduce", help="where runs go")
    parser.add_argument(
        "--data-dir", help="Fashion-MNIST IDX folder (for fashion-l1-deep)"
    )
    parser.add_argument(
        "--epochs",
        type=int,
        help="override the published epochs (a quick check; marked in the result)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        help="override the published seed (another draw of init and shuffle; marked "
        "in the result)",
    )
    parser.add_argument(
        "--results", default=str(reproduce.RESULTS_DIR), help="results folder"
    )
    parser.add_argument("--device", help="torch device (default: cuda if present)")
    parser.add_argument(
        "--table", action="store_true", help="write the README table from the results"
    )
    parser.add_argument("--list", action="store_true", help="list the entries")
    parser.add_argument("--quiet", action="store_true")
    return parser


def machine(framework: str, device: str) -> str:
    if framework == "torch" and device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name()
    if framework == "jax":
        import jax

        dev = jax.devices()[0]
        if dev.platform != "cpu":
            return dev.device_kind
    return f"CPU, {os.cpu_count()} cores ({platform.machine()})"


INIT = "init.safetensors"


def shared_init(entry, run, out_dir):
    """The initial weights both frameworks start from (None: each draws its own),
    saved to ``out_dir/init.safetensors``; a run already in ``out_dir`` must have
    started from them."""
    if not entry.torch_init:
        return None
    try:
        from torchsae.training import init_state_dict
    except ImportError as err:
        raise ConfigError(
            f"{entry.name} starts from the initial weights torch draws with seed "
            f"{run.train.seed}, so it needs torch installed ({err})"
        ) from err
    init = init_state_dict(run.model, run.train.seed)
    path = os.path.join(out_dir, INIT)
    if os.path.exists(path):
        saved, _ = read_checkpoint(path)
        if saved.keys() != init.keys() or any(
            not np.array_equal(saved[k], init[k]) for k in init
        ):
            raise CheckpointError(
                f"{path} holds other initial weights than torch's seed-"
                f"{run.train.seed} draw; remove {out_dir} or give --out"
            )
    elif os.path.exists(os.path.join(out_dir, runs.TRAIN_STATE)):
        raise CheckpointError(
            f"{out_dir} holds a run without {INIT}, so not one from torch's seed-"
            f"{run.train.seed} initial weights; remove it or give --out"
        )
    else:
        os.makedirs(out_dir, exist_ok=True)
        write_checkpoint(path, init, run.model)
    return init


def run_entry(entry, framework, args) -> dict:
    changes, notes = {}, []
    if entry.needs_fashion:
        changes["dataset"], note = reproduce.fashion_dataset(args.data_dir)
        notes += [note] if note else []
    if args.epochs:
        changes["epochs"] = args.epochs
        notes.append(
            f"{args.epochs} epochs instead of the published {entry.run.train.epochs}"
        )
    if args.seed is not None:
        changes["seed"] = args.seed
        notes.append(f"seed {args.seed} instead of {entry.run.train.seed}")
    run = dataclasses.replace(
        entry.run, train=dataclasses.replace(entry.run.train, **changes)
    )
    variant = "".join(
        f"-{name}{value}"
        for name, value in (("seed", args.seed), ("epochs", args.epochs))
        if value is not None
    )
    out_dir = os.path.join(args.out, f"{entry.name}-{framework}{variant}")
    progress = not args.quiet
    resume = os.path.isfile(os.path.join(out_dir, runs.TRAIN_STATE))
    if resume:  # reuse or continue only the same experiment
        with open(os.path.join(out_dir, runs.CONFIG)) as f:
            saved = RunConfig.from_json(f.read())
        if not runs.same_but_epochs(saved, run):
            raise CheckpointError(
                f"{out_dir} holds a run with another config; remove it or give --out"
            )
    finished = os.path.isfile(os.path.join(out_dir, runs.SUMMARY)) and (
        len(runs.read_history(out_dir)) == run.train.epochs
    )
    data = runs.prepare_data(run)
    init = shared_init(entry, run, out_dir)
    device = "cpu"
    if framework == "jax":
        from jaxsae.evaluation import evaluate_checkpoint
        from jaxsae.training import train
    else:
        import torch

        from torchsae.evaluation import evaluate_checkpoint
        from torchsae.training import train

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        train = functools.partial(train, device=device)
        evaluate_checkpoint = functools.partial(evaluate_checkpoint, device=device)

    if not finished:
        print(f"{entry.name}: training with {framework} in {out_dir}", flush=True)
        train(run, out_dir, resume=resume, data=data, progress=progress, init=init)
    history = runs.read_history(out_dir)
    with open(os.path.join(out_dir, runs.SUMMARY)) as f:
        train_seconds = json.load(f)["train_seconds"]
    tic = time.perf_counter()
    evaluation, _, _ = evaluate_checkpoint(
        out_dir, os.path.join(out_dir, "eval"), progress=progress
    )
    eval_seconds = time.perf_counter() - tic
    result = {
        "entry": entry.name,
        "framework": framework,
        "dataset": run.train.dataset,
        "epochs": len(history),
        "measured": reproduce.measure(entry, history, evaluation, data),
        "published": dict(entry.published),
        "seconds": {"train": train_seconds, "evaluate": eval_seconds},
        "machine": machine(framework, device),
        "notes": notes,
        "run_dir": out_dir,
    }
    if not variant or not _default_results(args):
        # the default results (and the README table) hold the published setups only
        reproduce.write_result(result, args.results)
    return result


def _default_results(args) -> bool:
    return os.path.abspath(args.results) == str(reproduce.RESULTS_DIR)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        for name, entry in reproduce.ENTRIES.items():
            print(f"{name:16s} {entry.source}")
        return 0
    if args.table:
        table = reproduce.results_table(reproduce.read_results(args.results))
        reproduce.update_readme(table)
        print(table)
        return 0
    if args.entry is None:
        build_parser().error("name an entry (or --list, --table)")
    entry = reproduce.ENTRIES[args.entry]
    frameworks = ("jax", "torch") if args.framework == "both" else (args.framework,)
    results = {}
    try:
        for framework in frameworks:
            results[framework] = run_entry(entry, framework, args)
    except (ConfigError, DataError, CheckpointError, runs.TrainingDiverged) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(reproduce.format_comparison(entry, results))
    if _default_results(args):
        # the README's table always shows the stored results
        reproduce.update_readme(reproduce.results_table(reproduce.read_results()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Reproduce a published result: train with its hyperparameters, evaluate, and print
published vs measured side by side (saecommon/reproduction.py lists the entries).

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
import os
import pathlib
import platform
import re
import sys
import time

import numpy as np

from saecommon import frameworks, reproduction, rundir
from saecommon.checkpoint import CheckpointError, read_checkpoint, write_checkpoint
from saecommon.config import ConfigError
from saecommon.data import DataError, prepare_data
from saecommon.recorder import TrainingDiverged

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "docs" / "reproduce"
"""Where the published setups' results are kept; the README table is built from them."""
README = ROOT / "README.md"
TABLE_START = "<!-- reproduce:start (scripts/reproduce.py --table writes this) -->"
TABLE_END = "<!-- reproduce:end -->"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("entry", nargs="?", choices=sorted(reproduction.ENTRIES))
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
    parser.add_argument("--results", default=str(RESULTS_DIR), help="results folder")
    parser.add_argument("--device", help="torch device (default: cuda if present)")
    parser.add_argument(
        "--table", action="store_true", help="write the README table from the results"
    )
    parser.add_argument("--list", action="store_true", help="list the entries")
    parser.add_argument("--quiet", action="store_true")
    return parser


def machine(fw: frameworks.Framework) -> str:
    """The device ``fw`` runs on, in words."""
    if fw.name == "torch" and fw.device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(fw.device)
    if fw.name == "jax":
        import jax

        dev = jax.devices()[0]
        if dev.platform != "cpu":
            return dev.device_kind
    return f"CPU, {os.cpu_count()} cores ({platform.machine()})"


def update_readme(table: str, readme=README) -> None:
    """Replace the text between the README's reproduce markers with ``table``."""
    text = pathlib.Path(readme).read_text()
    pattern = re.compile(re.escape(TABLE_START) + ".*?" + re.escape(TABLE_END), re.S)
    if not pattern.search(text):
        raise ValueError(f"{readme} has no {TABLE_START} ... {TABLE_END} section")
    replacement = f"{TABLE_START}\n{table}\n{TABLE_END}"
    pathlib.Path(readme).write_text(pattern.sub(lambda _: replacement, text))


INIT = "init.safetensors"


def shared_init(entry, run, out_dir):
    """The initial weights both frameworks start from (None: each draws its own),
    saved to ``out_dir/init.safetensors``; a run already in ``out_dir`` must have
    started from them."""
    if not entry.torch_init:
        return None
    try:
        torch_fw = frameworks.load("torch", "cpu")
    except ImportError as err:
        raise ConfigError(
            f"{entry.name} starts from the initial weights torch draws with seed "
            f"{run.train.seed}, so it needs torch installed ({err})"
        ) from err
    init = torch_fw.init_state_dict(run.model, run.train.seed)
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
    elif os.path.exists(os.path.join(out_dir, rundir.TRAIN_STATE)):
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
        changes["dataset"], note = reproduction.fashion_dataset(args.data_dir)
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
    resume = os.path.isfile(os.path.join(out_dir, rundir.TRAIN_STATE))
    if resume:  # reuse or continue only the same experiment
        if not rundir.same_but_epochs(rundir.read_run_config(out_dir), run):
            raise CheckpointError(
                f"{out_dir} holds a run with another config; remove it or give --out"
            )
    finished = os.path.isfile(os.path.join(out_dir, rundir.SUMMARY)) and (
        len(rundir.read_history(out_dir)) == run.train.epochs
    )
    data = prepare_data(run)
    init = shared_init(entry, run, out_dir)
    fw = frameworks.load(framework, args.device)
    if not finished:
        print(f"{entry.name}: training with {framework} in {out_dir}", flush=True)
        fw.train(run, out_dir, resume=resume, data=data, progress=progress, init=init)
    history = rundir.read_history(out_dir)
    train_seconds = rundir.read_summary(out_dir)["train_seconds"]
    tic = time.perf_counter()
    evaluation, _, _ = fw.evaluate_checkpoint(
        out_dir, os.path.join(out_dir, "eval"), progress=progress
    )
    eval_seconds = time.perf_counter() - tic
    result = {
        "entry": entry.name,
        "framework": framework,
        "dataset": run.train.dataset,
        "epochs": len(history),
        "measured": reproduction.measure(entry, history, evaluation, data),
        "published": dict(entry.published),
        "seconds": {"train": train_seconds, "evaluate": eval_seconds},
        "machine": machine(fw),
        "notes": notes,
        "run_dir": out_dir,
    }
    if not variant or not _default_results(args):
        # the default results (and the README table) hold the published setups only
        reproduction.write_result(result, args.results)
    return result


def _default_results(args) -> bool:
    return os.path.abspath(args.results) == str(RESULTS_DIR)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        for name, entry in reproduction.ENTRIES.items():
            print(f"{name:16s} {entry.source}")
        return 0
    if args.table:
        table = reproduction.results_table(reproduction.read_results(args.results))
        update_readme(table)
        print(table)
        return 0
    if args.entry is None:
        build_parser().error("name an entry (or --list, --table)")
    entry = reproduction.ENTRIES[args.entry]
    frameworks = ("jax", "torch") if args.framework == "both" else (args.framework,)
    results = {}
    try:
        for framework in frameworks:
            results[framework] = run_entry(entry, framework, args)
    except (ConfigError, DataError, CheckpointError, TrainingDiverged) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(reproduction.format_comparison(entry, results))
    if _default_results(args):
        # the README's table always shows the stored results
        update_readme(
            reproduction.results_table(reproduction.read_results(RESULTS_DIR))
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

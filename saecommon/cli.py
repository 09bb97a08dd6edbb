"""Flags -> RunConfig for scripts/train.py: every SAEConfig and TrainConfig field is a
flag (``--hidden-dims 256,128,64``, ``--topk 16``, ``--lifetime-rate none``,
``--tied true``), applied on top of ``--preset`` (or the defaults)."""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any

from saecommon import rundir
from saecommon.config import ConfigError, SAEConfig
from saecommon.frameworks import FRAMEWORKS
from saecommon.presets import PRESETS
from saecommon.train_config import RunConfig, TrainConfig


def _parse_value(kind: str, text: str) -> Any:
    optional = kind.endswith("| None")
    base = kind.replace("| None", "").strip()
    if optional and text.lower() == "none":
        return None
    try:
        if base == "bool":
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if base == "int":
            return int(text)
        if base == "float":
            return float(text)
        if base.startswith("tuple[int"):
            return tuple(
                int(part) for part in text.replace("-", ",").split(",") if part
            )
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
    return text


def _field_flags(parser: argparse.ArgumentParser, cls, group_name: str) -> None:
    group = parser.add_argument_group(group_name)
    for field in dataclasses.fields(cls):
        kind = str(field.type)
        group.add_argument(
            "--" + field.name.replace("_", "-"),
            dest=f"{cls.__name__}.{field.name}",
            type=lambda text, kind=kind: _parse_value(kind, text),
            default=argparse.SUPPRESS,  # absent unless given, so "none" can override
            metavar=kind.replace(" ", ""),
            help=f"(default {field.default!r})",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train a sparse autoencoder with jaxsae or torchsae.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--framework", choices=FRAMEWORKS, default="jax")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="start from a preset")
    parser.add_argument(
        "--out", help="run directory (default runs/<preset or 'custom'>)"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint (only --epochs may change)",
    )
    parser.add_argument(
        "--device", default=None, help="torch device (default: cuda if present)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument(
        "--init-from",
        metavar="CHECKPOINT",
        help="start from these weights (a model.safetensors) instead of a random init; "
        "a tied checkpoint with --tied false is untied first (tied-then-untied "
        "fine-tuning)",
    )
    parser.add_argument(
        "--data-dir",
        dest="TrainConfig.dataset",
        default=argparse.SUPPRESS,
        help="a folder of the four standard IDX files (MNIST, Fashion-MNIST, KMNIST); "
        "the same as --dataset DIR",
    )
    _field_flags(parser, SAEConfig, "model (SAEConfig)")
    _field_flags(parser, TrainConfig, "training (TrainConfig)")
    return parser


def run_config_from_args(args: argparse.Namespace) -> RunConfig:
    """The preset (or defaults) with every given flag applied; on --resume, the run
    directory's own config with only --epochs applied."""
    overrides = {k: v for k, v in vars(args).items() if "." in k}
    if args.resume:
        if not os.path.isfile(os.path.join(args.out, rundir.CONFIG)):
            raise ConfigError(
                f"--resume: no run to continue in {args.out} (no {rundir.CONFIG})"
            )
        run = rundir.read_run_config(args.out)
        extra = sorted(k.split(".")[1] for k in overrides if k != "TrainConfig.epochs")
        if extra:
            raise ConfigError(
                f"--resume continues a run as configured; drop {', '.join(extra)}"
            )
        epochs = overrides.get("TrainConfig.epochs", run.train.epochs)
        return RunConfig(run.model, dataclasses.replace(run.train, epochs=epochs))
    base = PRESETS[args.preset] if args.preset else RunConfig()
    model = {
        k.split(".")[1]: v for k, v in overrides.items() if k.startswith("SAEConfig.")
    }
    train = {
        k.split(".")[1]: v for k, v in overrides.items() if k.startswith("TrainConfig.")
    }
    if model.get("architecture", "mlp") != "mlp" and "hidden_dims" not in model:
        model["hidden_dims"] = None  # the conv architectures fix their own code width
    return RunConfig(
        dataclasses.replace(base.model, **model),
        dataclasses.replace(base.train, **train),
    )


def default_run_dir(args: argparse.Namespace) -> str:
    """--out, or runs/<preset or 'custom'>-<framework>."""
    return args.out or os.path.join(
        "runs", f"{args.preset or 'custom'}-{args.framework}"
    )

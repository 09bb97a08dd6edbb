"""Flags -> RunConfig for scripts/train.py: every SAEConfig and TrainConfig field is a
flag (``--hidden-dims 256,128,64``, ``--topk 16``, ``--lifetime-rate none``,
``--tied true``), applied on top of ``--preset`` (or the defaults).

The help of each field's flag is the field's own docstring in config.py or
train_config.py (read from the source, so the schema documents itself once), with its
accepted values and its default: the preset's when ``--preset`` comes before
``--help``."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import os
import textwrap
from typing import Any

from saecommon import config as config_module
from saecommon import rundir
from saecommon import train_config as train_config_module
from saecommon.config import ConfigError, SAEConfig
from saecommon.frameworks import FRAMEWORKS
from saecommon.presets import PRESETS
from saecommon.recorder import check_epochs
from saecommon.train_config import RunConfig, TrainConfig

GROUPS = {
    "model": (
        "architecture",
        "input_dim",
        "hidden_dims",
        "activation",
        "code_activation",
        "output_activation",
        "negative_slope",
        "tied",
        "loss",
    ),
    "sparsity": (
        "topk",
        "lifetime_k",
        "lifetime_rate",
        "penalty",
        "penalty_weight",
        "l1_layers",
        "kl_rho",
        "kl_reduction",
        "kl_eps",
    ),
    "data": train_config_module.DATA_FIELDS,
}
"""Flag groups of --help; other SAEConfig fields show under "model", other
TrainConfig fields under "training"."""

CHOICES = {
    "architecture": config_module.ARCHITECTURES,
    "activation": config_module.ACTIVATIONS,
    "code_activation": config_module.ACTIVATIONS,
    "output_activation": config_module.OUTPUT_ACTIVATIONS,
    "penalty": config_module.PENALTIES,
    "l1_layers": config_module.L1_LAYERS,
    "kl_reduction": config_module.REDUCTIONS,
    "loss": config_module.LOSSES,
    "optimizer": train_config_module.OPTIMIZERS,
    "schedule": train_config_module.SCHEDULES,
    "noise": train_config_module.NOISES,
    "shuffle_source": train_config_module.SHUFFLE_SOURCES,
    "pixel_scale": train_config_module.PIXEL_SCALES,
    "precision": train_config_module.PRECISIONS,
}
"""The accepted values of the string fields (the tuples the configs check against)."""


@functools.cache
def field_docs(cls) -> dict[str, str]:
    """Each dataclass field's docstring (the string literal under it), by name."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


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
            return tuple(int(part) for part in text.split(",") if part.strip())
        if base.startswith("tuple[float"):
            return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {_metavar(kind)}, got {text!r}"
        ) from None
    return text


def _metavar(kind: str, choices=None) -> str:
    if choices:
        return "{" + ",".join(choices) + "}"
    base = kind.replace("| None", "").strip()
    words = {
        "bool": "{true,false}",
        "int": "INT",
        "float": "FLOAT",
        "str": "TEXT",
    }
    lists = {"tuple[int": "INT,INT,...", "tuple[float": "FLOAT,FLOAT"}
    text = words.get(
        base, next((v for k, v in lists.items() if base.startswith(k)), base)
    )
    return text + ("|none" if kind.endswith("| None") else "")


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "(empty)"
    return str(value)


def field_flags(
    groups: dict[str, argparse._ArgumentGroup],
    cls,
    fallback: str,
    preset,
    defaults,
    choices_of: dict[str, tuple[str, ...]] = CHOICES,
    grouping: dict[str, tuple[str, ...]] = GROUPS,
    skip: tuple[str, ...] = (),
) -> None:
    """A flag per field of the config dataclass ``cls`` (its docstring as help, its
    default from ``defaults``), into the argparse group ``grouping`` names or
    ``fallback``, but for the fields in ``skip``; the value lands in ``args`` as
    "<cls name>.<field>" when given."""
    docs = field_docs(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        kind = str(field.type)
        choices = choices_of.get(field.name)
        group = next(
            (name for name, names in grouping.items() if field.name in names), fallback
        )
        default = getattr(defaults, field.name)
        origin = f"preset {preset}" if preset else "default"
        help_text = docs.get(field.name, "").replace("%", "%%")
        groups[group].add_argument(
            "--" + field.name.replace("_", "-"),
            dest=f"{cls.__name__}.{field.name}",
            type=lambda text, kind=kind: _parse_value(kind, text),
            choices=choices,
            default=argparse.SUPPRESS,  # absent unless given, so "none" can override
            metavar=_metavar(kind, choices),
            help=f"{help_text} ({origin}: {_shown(default)})",
        )


def run_flags(run: RunConfig) -> list[str]:
    """``run`` as train.py's flags: every field of its model and training config, so
    that ``run_config_from_args`` gives ``run`` back whatever the defaults are (a
    script that starts train.py on a config it holds, such as bench_e2e.py)."""
    flags = []
    for part in (run.model, run.train):
        for field in dataclasses.fields(part):
            value = getattr(part, field.name)
            text = ",".join(map(str, value)) if isinstance(value, tuple) else value
            flags += ["--" + field.name.replace("_", "-"), _shown(text)]
    return flags


def given_fields(args: argparse.Namespace, cls) -> dict[str, Any]:
    """The fields of config class ``cls`` given as flags (``field_flags``'s), by
    field name."""
    prefix = f"{cls.__name__}."
    return {k[len(prefix) :]: v for k, v in vars(args).items() if k.startswith(prefix)}


def peek_preset(argv) -> str | None:
    """The --preset in ``argv`` (if any, and known), so --help shows its defaults."""
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--preset")
    known, _ = peek.parse_known_args(argv)
    return known.preset if known.preset in PRESETS else None


def build_parser(preset: str | None = None) -> argparse.ArgumentParser:
    """train.py's flags; ``preset``'s values are the defaults --help shows."""
    base = PRESETS[preset] if preset else RunConfig()
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Train a sparse autoencoder with jaxsae or torchsae. Every field\n"
        "of the model and training config is a flag; flags apply on top of --preset\n"
        "(or of the defaults). A folder that holds a run is never written into\n"
        "unless --resume or --overwrite says so.",
        epilog="examples:\n"
        "  train.py --preset mnist-topk\n"
        "  train.py --preset mnist-kl --framework torch --epochs 5\n"
        "  train.py --hidden-dims 256,64 --topk 20 --out runs/mine\n"
        "  train.py --out runs/mine --resume --epochs 30\n"
        "  train.py --preset mnist-topk --help   (shows the preset's values)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run = parser.add_argument_group("run")
    run.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        metavar="NAME",
        help="start from a published setup: " + ", ".join(sorted(PRESETS)),
    )
    run.add_argument(
        "--framework",
        choices=FRAMEWORKS,
        help="jax or torch (default: jax for a new run; on --resume, the run's own)",
    )
    run.add_argument(
        "--device",
        help="cpu, cuda (or gpu), cuda:N, tpu, mps; the same for both frameworks "
        "(default: a GPU when the framework sees one, else cpu)",
    )
    run.add_argument(
        "--devices",
        type=int,
        metavar="N",
        help="jax: data parallel over N devices (each minibatch split N ways; the "
        "batch size must divide by N; default: every local device, or every device "
        "of every process under jax.distributed; 1: one device). torch: run under "
        "torchrun instead",
    )
    run.add_argument(
        "--init-from",
        metavar="CHECKPOINT",
        help="start from these weights (a model.safetensors) instead of a random "
        "init; a tied checkpoint with --tied false is untied first",
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--out",
        metavar="DIR",
        help="the run folder (default: runs/<preset or custom>-<framework>, numbered "
        "-2, -3, ... when that one holds a run)",
    )
    out.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint (only --epochs may "
        "change, and only upwards)",
    )
    out.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in --out (without it, a folder that holds a run is "
        "refused); the old run stays until the new one's first epoch is saved",
    )
    out.add_argument("--quiet", action="store_true", help="no progress output")
    groups = {
        name: parser.add_argument_group(name)
        for name in ("model", "sparsity", "training", "data")
    }
    groups["data"].add_argument(
        "--data-dir",
        dest="TrainConfig.dataset",
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="a folder of the four standard IDX files (MNIST, Fashion-MNIST, KMNIST); "
        "the same as --dataset DIR",
    )
    field_flags(groups, SAEConfig, "model", preset, base.model)
    field_flags(groups, TrainConfig, "training", preset, base.train)
    return parser


def run_config_from_args(args: argparse.Namespace) -> RunConfig:
    """The preset (or defaults) with every given flag applied; on --resume, the run
    directory's own config with only --epochs applied (a --preset must be the run's)."""
    overrides = {k: v for k, v in vars(args).items() if "." in k}
    if args.resume:
        if not args.out:
            raise ConfigError(
                "--resume continues the run in --out: say which (--out DIR)"
            )
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
        if args.preset and not rundir.same_but_epochs(PRESETS[args.preset], run):
            raise ConfigError(
                f"--preset {args.preset} is not the run in {args.out} (it holds "
                f"{rundir.describe_run(args.out)}); drop --preset to continue that "
                "run, or start a new one elsewhere"
            )
        epochs = overrides.get("TrainConfig.epochs", run.train.epochs)
        try:
            check_epochs(args.out, len(rundir.read_history(args.out)), epochs)
        except ValueError as err:
            raise ConfigError(
                str(err).replace("give epochs", "give --epochs")
            ) from None
        return RunConfig(run.model, dataclasses.replace(run.train, epochs=epochs))
    base = PRESETS[args.preset] if args.preset else RunConfig()
    model = given_fields(args, SAEConfig)
    train = given_fields(args, TrainConfig)
    if model.get("architecture", "mlp") != "mlp" and "hidden_dims" not in model:
        model["hidden_dims"] = None  # the conv architectures fix their own code width
    return RunConfig(
        dataclasses.replace(base.model, **model),
        dataclasses.replace(base.train, **train),
    )


def resolve_framework(args: argparse.Namespace) -> str:
    """--framework, or on --resume the framework that wrote the run (a different
    one is refused later, by the train state's check)."""
    if args.framework or not args.resume:
        return args.framework or "jax"
    return rundir.run_framework(args.out) or "jax"


def default_run_dir(args: argparse.Namespace) -> str:
    """--out, or runs/<preset or 'custom'>-<framework>, numbered -2, -3, ... past the
    folders that hold a run (so repeating a command never lands on an earlier run)."""
    if args.out:
        return args.out
    base = os.path.join("runs", f"{args.preset or 'custom'}-{args.framework or 'jax'}")
    candidate, number = base, 1
    while os.path.exists(candidate) and (
        not os.path.isdir(candidate) or rundir.holds_run(candidate)
    ):
        number += 1
        candidate = f"{base}-{number}"
    return candidate

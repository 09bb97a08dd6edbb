"""Flags -> DictRun for scripts/train_sae.py: every DictConfig and DictTrainConfig
field is a flag (``--activation jumprelu``, ``--k 64``, ``--aux-k 256``,
``--matryoshka-widths 128,512``), with its docstring as help (saecommon/cli.py's
``field_flags``)."""

from __future__ import annotations

import argparse
import dataclasses
import os

from saecommon import dictionary_config as dc
from saecommon import rundir
from saecommon.cli import field_flags, given_fields
from saecommon.config import ConfigError
from saecommon.dict_run import DictRun, read_run
from saecommon.frameworks import FRAMEWORKS

CHOICES = {
    "activation": dc.DICT_ACTIVATIONS,
    "threshold_param": dc.THRESHOLD_PARAMS,
    "aux_normalization": dc.AUX_NORMALIZATIONS,
    "input_normalization": dc.INPUT_NORMALIZATIONS,
    "b_dec_init": dc.B_DEC_INITS,
    "precision": dc.DICT_PRECISIONS,
}
GROUPS = {
    "model": (
        "d_in",
        "d_sae",
        "activation",
        "k",
        "subtract_b_dec",
        "matryoshka_widths",
        "threshold_param",
    ),
    "sparsity": (
        "l1_coefficient",
        "l1_decoder_norm",
        "l0_coefficient",
        "sparsity_warmup_steps",
        "bandwidth",
        "threshold_init",
        "threshold_beta",
    ),
    "auxk": ("aux_k", "aux_coefficient", "dead_tokens", "aux_normalization"),
}
HIDDEN = ("input_scale",)
"""Fields measured by the run, not set by flags."""


def mesh_shape(text: str) -> tuple[int, int]:
    """ "4x2" -> (4, 2); "4" -> (4, 1)."""
    parts = text.lower().split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) == 1:
        shape = (shape[0], 1)
    if len(shape) != 2 or min(shape) < 1:
        raise argparse.ArgumentTypeError(
            f"expected DATAxMODEL with positive numbers (4x1, 2x2), got {text!r}"
        )
    return shape


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train_sae.py",
        description="Train a dictionary SAE on an activation cache "
        "(scripts/cache_activations.py) with jaxsae or torchsae.",
    )
    parser.add_argument("--cache", help="the activation cache's folder")
    parser.add_argument("--out", required=True, help="the run folder")
    parser.add_argument(
        "--framework", choices=FRAMEWORKS, help="jax (default) or torch"
    )
    parser.add_argument(
        "--device", help="cpu, cuda, cuda:N (default: the best there is)"
    )
    parser.add_argument(
        "--mesh",
        type=mesh_shape,
        metavar="DATAxMODEL",
        help="jax: train on DATA*MODEL devices, the batch split DATA ways and the "
        "latents MODEL ways (4x1: data parallel; 1x4: latents sharded; 2x2; 1x1: one "
        "device). Default: data parallel over every local device (every device of "
        "every process under jax.distributed)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last save (only --steps may change)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the run in --out"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--eval-tokens",
        type=int,
        default=4096,
        help="the cache's last tokens, held out for the evaluation",
    )
    parser.add_argument(
        "--log-every", type=int, default=50, help="steps per row of metrics.jsonl"
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=500,
        help="steps between saves (and at the end, and on Ctrl-C)",
    )
    groups = {
        name: parser.add_argument_group(name)
        for name in ("model", "sparsity", "auxk", "training")
    }
    model_defaults = dc.DictConfig()
    train_defaults = dc.DictTrainConfig()
    field_flags(
        groups,
        dc.DictConfig,
        "model",
        None,
        model_defaults,
        CHOICES,
        GROUPS,
        skip=HIDDEN,
    )
    field_flags(
        groups, dc.DictTrainConfig, "training", None, train_defaults, CHOICES, GROUPS
    )
    return parser


def run_from_args(args: argparse.Namespace, d_in: int | None = None) -> DictRun:
    """The DictRun the flags describe; on --resume, the run folder's own with only
    --steps applied. ``d_in`` (the cache's width) is the default of --d-in."""
    model = given_fields(args, dc.DictConfig)
    train = given_fields(args, dc.DictTrainConfig)
    if args.resume:
        if not os.path.isfile(os.path.join(args.out, rundir.CONFIG)):
            raise ConfigError(f"--resume: no run to continue in {args.out}")
        run = read_run(args.out)
        extra = sorted(set(model) | (set(train) - {"steps"}))
        if extra or args.cache not in (None, run.cache):
            raise ConfigError(
                "--resume continues a run as configured; drop "
                + ", ".join(["--" + e.replace("_", "-") for e in extra] or ["--cache"])
            )
        return dataclasses.replace(
            run, train=run.train.replace(steps=train.get("steps", run.train.steps))
        )
    if not args.cache:
        raise ConfigError("--cache is needed: the activation cache to train on")
    if d_in is not None:
        model.setdefault("d_in", d_in)
    if "k" not in model and model.get("activation") in ("relu", "jumprelu"):
        model["k"] = None
    return DictRun(
        model=dc.DictConfig(**model),
        train=dc.DictTrainConfig(**train),
        cache=os.path.abspath(args.cache),
        eval_tokens=args.eval_tokens,
        log_every=args.log_every,
        checkpoint_every=args.checkpoint_every,
    )

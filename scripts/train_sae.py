"""Train a dictionary SAE on cached transformer activations (jaxsae or torchsae).

python scripts/train_sae.py --cache cache/minilm-l3 --out runs/topk
python scripts/train_sae.py --cache cache/minilm-l3 --out runs/jr --activation jumprelu \\
    --l0-coefficient 0.002 --sparsity-warmup-steps 200
python scripts/train_sae.py --cache cache/minilm-l3 --out runs/mat --activation \\
    matryoshka --matryoshka-widths 256,1024 --aux-k 192 --framework torch
python scripts/train_sae.py --out runs/topk --resume --steps 4000
python scripts/train_sae.py --help      # every field of the model and training config

Errors are one line on stderr and exit 2; Ctrl-C saves where training stopped, says how
to continue, and exits 130.
"""

import sys

from saecommon import frameworks
from saecommon.activations import ActivationCache, ActivationCacheError
from saecommon.checkpoint import CheckpointError
from saecommon.config import ConfigError
from saecommon.dict_cli import build_parser, run_from_args
from saecommon.dict_run import DictTrainingDiverged, DictTrainingInterrupted
from saecommon.rundir import RunDirError, run_framework

INTERRUPTED = 130


def main(argv=None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        d_in = None
        if args.cache and not args.resume:
            d_in = ActivationCache(args.cache).d_in
        run = run_from_args(args, d_in)
        name = args.framework or (run_framework(args.out) if args.resume else None)
        options = {}
        if args.mesh is not None:
            if (name or "jax") != "jax" or args.device:
                raise ConfigError(
                    "--mesh is for jax on its devices (without --device); torch "
                    "trains data parallel under torchrun"
                )
        fw = frameworks.load(name or "jax", args.device)
        if fw.name == "jax":  # default: data parallel over every local device
            options["mesh"] = fw.default_mesh(args.mesh)
        summary = fw.train_dictionary(
            run,
            args.out,
            resume=args.resume,
            overwrite=args.overwrite,
            progress=not args.quiet,
            **options,
        )
    except (
        ConfigError,
        ActivationCacheError,
        CheckpointError,
        RunDirError,
        DictTrainingDiverged,
        ValueError,
        OSError,
    ) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    except DictTrainingInterrupted as err:
        print(
            f"{err}; continue with: python scripts/train_sae.py --out {args.out} "
            "--resume",
            file=sys.stderr,
        )
        return INTERRUPTED
    shown = (
        "fvu",
        "explained_variance",
        "l0",
        "cosine",
        "relative_bias",
        "eval_dead_fraction",
        "train_dead_fraction",
    )
    if fw.main_process:  # (one line for a run of several processes)
        print(" ".join(f"{k} {summary[k]:.4g}" for k in shown if k in summary))
        print(f"run directory: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

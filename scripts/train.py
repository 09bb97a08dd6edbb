"""Train a sparse autoencoder: flags -> RunConfig -> jaxsae or torchsae.

python scripts/train.py --preset mnist-topk
python scripts/train.py --preset mnist-kl --framework torch --epochs 5
python scripts/train.py --hidden-dims 256,64 --topk 20 --out runs/mine
python scripts/train.py --out runs/mine --resume --epochs 30
python scripts/train.py --out runs/mine --overwrite --preset mnist-kl
python scripts/train.py --preset mnist-topk --tied true --out runs/tied
python scripts/train.py --preset mnist-topk --init-from runs/tied/model.safetensors
python scripts/train.py --preset mnist-layerwise   # greedy layer-wise, then fine-tune
python scripts/train.py --hidden-dims 256,64,16 --layerwise-epochs 3,3,3 --epochs 5
python scripts/train.py --preset mnist-topk --help   # the flags, with the preset's values

Errors are one line on stderr and exit 2; Ctrl-C says where training stopped and how
to continue, and exits 130.
"""

import sys

from saecommon import frameworks, rundir
from saecommon.checkpoint import initial_state_dict
from saecommon.cli import (
    build_parser,
    default_run_dir,
    peek_preset,
    resolve_framework,
    run_config_from_args,
)
from saecommon.config import ConfigError
from saecommon.data import DataError
from saecommon.layerwise import pretraining_model
from saecommon.recorder import TrainingDiverged, TrainingInterrupted

INTERRUPTED = 130
"""The exit status of a run stopped by Ctrl-C (128 + SIGINT), as shells use."""


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(peek_preset(argv)).parse_args(argv)
    layerwise = False
    try:
        if args.init_from and args.resume:
            raise ValueError("--init-from starts a new run; --resume continues one")
        run = run_config_from_args(args)
        args.framework = resolve_framework(args)
        args.out = default_run_dir(args)
        layerwise = bool(run.train.layerwise_epochs)
        # Checked before anything is loaded: a bad --out fails at once.
        if args.resume:  # (a layer-wise run keeps its train states in its stages)
            rundir.check_writable(args.out)
        else:
            rundir.check_out_dir(args.out, overwrite=args.overwrite)
        # Layer-wise: --init-from gives the whole model's initial weights, as pretrained.
        target = pretraining_model(run) if layerwise else run.model
        init = initial_state_dict(args.init_from, target) if args.init_from else None
        options = {}
        if args.devices is not None:
            if args.framework != "jax" or args.device or args.devices < 1:
                raise ConfigError(
                    "--devices N is data parallel training with jax over its "
                    "devices (not with --device); torch trains data parallel under "
                    "torchrun"
                )
        fw = frameworks.load(args.framework, args.device)
        if fw.name == "jax":  # default: every local device (one: no mesh)
            given = None if args.devices is None else (args.devices, 1)
            options["mesh"] = fw.default_mesh(given)
        (fw.pretrain if layerwise else fw.train)(
            run,
            args.out,
            resume=args.resume,
            progress=not args.quiet,
            init=init,
            overwrite=args.overwrite,
            **options,
        )
    except (ConfigError, DataError, TrainingDiverged, ValueError, OSError) as err:
        print(f"error: {_one_line(err, args)}", file=sys.stderr)
        return 2
    except TrainingInterrupted as err:
        if err.resumable or layerwise:
            how = f"continue with: python scripts/train.py --out {args.out} --resume"
        else:
            how = "run the same command again to start over"
        print(f"{err}; {how}", file=sys.stderr)
        return INTERRUPTED
    except KeyboardInterrupt:
        print("interrupted before training began; nothing was written", file=sys.stderr)
        return INTERRUPTED
    if fw.main_process:  # (one line for a run of several processes)
        print(f"run directory: {args.out}")
    return 0


def _one_line(err: Exception, args) -> str:
    """The error's message, in the flags' words where the library says a keyword."""
    text = str(err).replace("\n", " ")
    if isinstance(err, rundir.RunDirError) and "already holds" in text:
        text = text.replace(
            "choose another output folder; to continue it, resume; to replace it, "
            "overwrite",
            "give another --out (or none: a new numbered folder); to continue it, add "
            "--resume; to replace it, add --overwrite",
        )
    if isinstance(err, OSError) and not isinstance(err, rundir.RunDirError):
        text = f"{err.strerror or text}: {err.filename}" if err.filename else text
    return text


if __name__ == "__main__":
    sys.exit(main())

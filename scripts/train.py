"""Train a sparse autoencoder: flags -> RunConfig -> jaxsae or torchsae.

python scripts/train.py --preset mnist-topk
python scripts/train.py --preset mnist-kl --framework torch --epochs 5
python scripts/train.py --hidden-dims 256,64 --topk 20 --out runs/mine
python scripts/train.py --out runs/mine --resume --epochs 30
python scripts/train.py --preset mnist-topk --tied true --out runs/tied
python scripts/train.py --preset mnist-topk --init-from runs/tied/model.safetensors
"""

import sys

from saecommon.checkpoint import initial_state_dict
from saecommon.cli import build_parser, default_out, run_config_from_args
from saecommon.config import ConfigError
from saecommon.data import DataError
from saecommon.runs import TrainingDiverged


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.out = default_out(args)
    try:
        run = run_config_from_args(args)
        if args.init_from and args.resume:
            raise ValueError("--init-from starts a new run; --resume continues one")
        init = initial_state_dict(args.init_from, run.model) if args.init_from else None
        if args.framework == "jax":
            from jaxsae.training import train

            train(run, args.out, resume=args.resume, progress=not args.quiet, init=init)
        else:
            import torch

            from torchsae.training import train

            device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
            train(
                run,
                args.out,
                resume=args.resume,
                progress=not args.quiet,
                device=device,
                init=init,
            )
    except (ConfigError, DataError, TrainingDiverged, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"run directory: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

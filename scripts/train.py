"""Train a sparse autoencoder: flags -> RunConfig -> jaxsae or torchsae.

python scripts/train.py --preset mnist-topk
python scripts/train.py --preset mnist-kl --framework torch --epochs 5
python scripts/train.py --hidden-dims 256,64 --topk 20 --out runs/mine
python scripts/train.py --out runs/mine --resume --epochs 30
python scripts/train.py --preset mnist-topk --tied true --out runs/tied
python scripts/train.py --preset mnist-topk --init-from runs/tied/model.safetensors
python scripts/train.py --preset mnist-layerwise   # greedy layer-wise, then fine-tune
python scripts/train.py --hidden-dims 256,64,16 --layerwise-epochs 3,3,3 --epochs 5
"""

import sys

from saecommon.checkpoint import initial_state_dict
from saecommon.cli import build_parser, default_out, run_config_from_args
from saecommon.config import ConfigError
from saecommon.data import DataError
from saecommon.layerwise import pretraining_model
from saecommon.runs import TrainingDiverged


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.out = default_out(args)
    try:
        run = run_config_from_args(args)
        if args.init_from and args.resume:
            raise ValueError("--init-from starts a new run; --resume continues one")
        layerwise = bool(run.train.layerwise_epochs)
        # Layer-wise: --init-from gives the whole model's initial weights, as pretrained.
        target = pretraining_model(run) if layerwise else run.model
        init = initial_state_dict(args.init_from, target) if args.init_from else None
        options = dict(resume=args.resume, progress=not args.quiet, init=init)
        if args.framework == "jax":
            from jaxsae.layerwise import pretrain
            from jaxsae.training import train
        else:
            import torch

            from torchsae.layerwise import pretrain
            from torchsae.training import train

            device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
            options["device"] = device
        (pretrain if layerwise else train)(run, args.out, **options)
    except (ConfigError, DataError, TrainingDiverged, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"run directory: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

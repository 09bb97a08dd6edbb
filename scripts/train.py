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

from saecommon import frameworks
from saecommon.checkpoint import initial_state_dict
from saecommon.cli import build_parser, default_run_dir, run_config_from_args
from saecommon.config import ConfigError
from saecommon.data import DataError
from saecommon.layerwise import pretraining_model
from saecommon.recorder import TrainingDiverged


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.out = default_run_dir(args)
    try:
        run = run_config_from_args(args)
        if args.init_from and args.resume:
            raise ValueError("--init-from starts a new run; --resume continues one")
        layerwise = bool(run.train.layerwise_epochs)
        # Layer-wise: --init-from gives the whole model's initial weights, as pretrained.
        target = pretraining_model(run) if layerwise else run.model
        init = initial_state_dict(args.init_from, target) if args.init_from else None
        fw = frameworks.load(args.framework, args.device)
        (fw.pretrain if layerwise else fw.train)(
            run, args.out, resume=args.resume, progress=not args.quiet, init=init
        )
    except (ConfigError, DataError, TrainingDiverged, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"run directory: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Evaluate a trained sparse autoencoder with jaxsae or torchsae: reconstruction (MSE,
BCE, PSNR), sparsity (L0, dead units, activation frequency), a linear probe on the
codes against one on raw pixels, denoising PSNR; metrics.json, pictures and a table.

python scripts/evaluate.py runs/mnist-topk-jax
python scripts/evaluate.py runs/mnist-topk-jax --framework torch --out /tmp/eval
python scripts/evaluate.py model.safetensors --dataset ./fashion --normalize true
python scripts/evaluate.py runs/mnist-denoise-jax --noise gaussian --noise-std 0.3
python scripts/evaluate.py runs/mnist-topk-jax --no-probe
"""

import argparse
import sys

from saecommon import frameworks
from saecommon.config import ConfigError
from saecommon.data import DataError
from saecommon.evaluation import EVAL_FIELDS
from saecommon.noise import NOISE_SEED
from saecommon.report import format_report
from saecommon.train_config import NOISES, PIXEL_SCALES


def _bool(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() in ("true", "1", "yes")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number, got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "path",
        help="a run directory (model.safetensors + config.json) or a checkpoint file",
    )
    parser.add_argument(
        "--framework", choices=frameworks.FRAMEWORKS, default="jax", help="default: jax"
    )
    parser.add_argument(
        "--out", help="output folder (default: eval-<framework> beside the checkpoint)"
    )
    parser.add_argument(
        "--no-probe",
        dest="probe",
        action="store_false",
        help="skip the linear probes (the slow part: about 10-30s on MNIST)",
    )
    parser.add_argument(
        "--noise-seed", type=int, default=NOISE_SEED, help="seed of the denoising noise"
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        help="evaluation batch (default: the run's eval_batch_size)",
    )
    parser.add_argument(
        "--device",
        help="cpu, cuda (or gpu), cuda:N, tpu, mps; the same for both frameworks "
        "(default: a GPU when the framework sees one, else cpu)",
    )
    parser.add_argument("--quiet", action="store_true", help="print the table only")
    group = parser.add_argument_group(
        "data (default: the run's config.json, or MNIST for a bare checkpoint)"
    )
    group.add_argument("--dataset", help="mnist, a folder of IDX files, or tfds:NAME")
    group.add_argument("--data-dir", dest="dataset", help="the same as --dataset DIR")
    group.add_argument(
        "--pixel-scale",
        choices=PIXEL_SCALES,
        help="the model was trained on pixels in [0, 1] (unit) or [-1, 1] (symmetric)",
    )
    group.add_argument(
        "--normalize",
        type=_bool,
        help="the model was trained on standardized pixels (true/false)",
    )
    group.add_argument("--val-fraction", type=float, help="the run's val_fraction")
    group.add_argument(
        "--noise",
        choices=NOISES,
        help="evaluate denoising with this noise (none: not even for a denoising run)",
    )
    group.add_argument("--noise-std", type=float, help="Gaussian noise std")
    group.add_argument("--mask-fraction", type=float, help="masking noise fraction")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    given = {k: getattr(args, k) for k in EVAL_FIELDS}  # each a flag of the same name
    overrides = {k: v for k, v in given.items() if v is not None}
    try:
        fw = frameworks.load(args.framework, args.device)
        result, source, out_dir = fw.evaluate_checkpoint(
            args.path,
            args.out,
            overrides=overrides,
            probe=args.probe,
            noise_seed=args.noise_seed,
            batch_size=args.batch_size,
            progress=not args.quiet,
        )
    except (ConfigError, DataError, ValueError) as err:  # CheckpointError included
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # one line, as train.py; the report comes at the end
        print(
            "interrupted before the report was complete; run it again", file=sys.stderr
        )
        return 130
    print(format_report(result, source))
    print(f"evaluation written to {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Evaluate a trained sparse autoencoder with jaxsae or torchsae: reconstruction (MSE,
BCE, PSNR), sparsity (L0, dead units, activation frequency), a linear probe on the
codes against one on raw pixels, denoising PSNR; metrics.json, pictures and a table.

python scripts/evaluate.py runs/mnist-topk-jax
python scripts/evaluate.py runs/mnist-topk-jax --framework torch --out /tmp/eval
python scripts/evaluate.py model.safetensors --dataset ./fashion --normalize true
python scripts/evaluate.py runs/mnist-denoise-jax --noise gaussian --noise-std 0.3
python scripts/evaluate.py runs/mnist-topk-jax --no-probe
python scripts/evaluate.py seed_ae.pt --preset fashion-l1-deep
python scripts/evaluate.py gemma-scope/params.npz --cache cache/minilm-l3

The model may be in any format scripts/convert.py reads (a bare state dict needs its
config: --preset, --config or --set). A dictionary SAE is evaluated on activations, as
scripts/evaluate_sae.py does (--cache).
"""

import argparse
import importlib.util
import os
import sys

from saecommon import foreign, frameworks
from saecommon.config import ConfigError
from saecommon.convert_cli import add_source_flags, source_fields
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
        help="a run directory (model.safetensors + config.json), a checkpoint file, "
        "or a model in another format (see scripts/convert.py)",
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
    parser.add_argument(
        "--cache", help="dictionary SAEs: the activation cache to evaluate on"
    )
    parser.add_argument(
        "--eval-tokens",
        type=_positive_int,
        help="dictionary SAEs: the cache's last tokens to evaluate on (default 4096)",
    )
    add_source_flags(parser)
    return parser


CLASSIC_ONLY = (
    "out",
    "noise",
    "noise_std",
    "mask_fraction",
    "dataset",
    "pixel_scale",
    "normalize",
    "val_fraction",
)


def evaluate_dictionary(args) -> int:
    """A dictionary SAE goes to scripts/evaluate_sae.py, with the flags it shares;
    the classic models' flags are refused, not ignored."""
    given = [name for name in CLASSIC_ONLY if getattr(args, name) is not None]
    given += [] if args.probe else ["no_probe"]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ConfigError(
            f"{args.path} is a dictionary SAE: {flags} apply to the classic "
            "autoencoders (a dictionary SAE is evaluated on --cache, --eval-tokens)"
        )
    spec = importlib.util.spec_from_file_location(
        "evaluate_sae", os.path.join(os.path.dirname(__file__), "evaluate_sae.py")
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    argv = ["--model", args.path, "--framework", args.framework]
    for flag, value in (
        ("--cache", args.cache),
        ("--eval-tokens", args.eval_tokens and str(args.eval_tokens)),
        ("--device", args.device),
        ("--from", args.source_format),
        ("--hookpoint", args.hookpoint),
        ("--config", args.config_file),
        ("--preset", args.preset),
    ):
        if value is not None:
            argv += [flag, value]
    for item in args.set_fields:
        argv += ["--set", item]
    if args.batch_size is not None:
        argv += ["--batch-size", str(args.batch_size)]
    return script.main(argv)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    given = {k: getattr(args, k) for k in EVAL_FIELDS}  # each a flag of the same name
    overrides = {k: v for k, v in given.items() if v is not None}
    try:
        options = {
            "format": args.source_format,
            "fields": source_fields(args),
            "hookpoint": args.hookpoint,
        }
        if (
            os.path.exists(args.path)
            and foreign.read(args.path, **options).kind == "dictionary"
        ):
            return evaluate_dictionary(args)
        foreign_source = options["format"] not in (None, "sae") or any(
            options[k] for k in ("fields", "hookpoint")
        )
        fw = frameworks.load(args.framework, args.device)
        result, source, out_dir = fw.evaluate_checkpoint(
            args.path,
            args.out,
            overrides=overrides,
            probe=args.probe,
            noise_seed=args.noise_seed,
            batch_size=args.batch_size,
            progress=not args.quiet,
            source_options=options if foreign_source else None,
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

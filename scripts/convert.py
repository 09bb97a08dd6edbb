"""Convert a sparse autoencoder between formats: SAELens, sparsify,
dictionary_learning, Gemma Scope, bare torch state dicts, Flax msgpack and this
project's checkpoint (the default target).

python scripts/convert.py gemma-scope/params.npz gemma.safetensors
python scripts/convert.py runs/topk/model.safetensors out/saelens --to saelens
python scripts/convert.py sparsify-run out/l6.safetensors --hookpoint layers.6
python scripts/convert.py ae.pt model.safetensors --preset fashion-l1-deep
python scripts/convert.py sae.pt model.safetensors --set activation=topk --set k=32 \\
    --set subtract_b_dec=true

The source format is detected from the files (--from to name it). What a format does
not carry (a bare state dict's activation, k, ...) is given with --preset, --config or
--set, never guessed. The written model is read back and compared with the source:
the largest relative difference of latents and reconstructions on random inputs
(dictionary SAEs), or of any tensor (classic autoencoders). Existing files are never
replaced without --overwrite. Errors are one line on stderr, exit 2.
"""

import argparse
import sys

from saecommon import foreign
from saecommon.config import ConfigError
from saecommon.convert_cli import add_source_flags, source_fields


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("src", help="the model: a file or a folder")
    parser.add_argument(
        "dst",
        help="where to write it: a file, or a folder for saelens, sparsify and "
        "dictionary_learning (and for flax a path without a suffix: an orbax "
        "checkpoint folder)",
    )
    parser.add_argument(
        "--to",
        dest="target_format",
        choices=foreign.FORMATS,
        default="sae",
        help="default: sae (this project's checkpoint)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace files that exist at DST"
    )
    parser.add_argument(
        "--no-verify", dest="verify", action="store_false", help="skip reading DST back"
    )
    add_source_flags(parser)
    return parser


def describe(model: foreign.Model) -> str:
    c = model.config
    if model.kind == "dictionary":
        k = f", k {c.k}" if c.activation in ("topk", "batchtopk", "matryoshka") else ""
        sub = "" if c.subtract_b_dec else ", no b_dec subtraction"
        return f"{c.activation} dictionary SAE {c.d_in} -> {c.d_sae}{k}{sub}"
    widths = "-".join(str(w) for w in (c.input_dim, *c.hidden_dims))
    return f"{c.architecture} autoencoder {widths}"


def main(argv=None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        fields = source_fields(args)
        model = foreign.read(
            args.src, args.source_format, fields=fields, hookpoint=args.hookpoint
        )
        print(f"read {args.src}: {describe(model)}")
        files, notes = foreign.write(
            model, args.dst, args.target_format, overwrite=args.overwrite
        )
        for note in notes:
            print(f"  {note}")
        print(f"wrote {args.target_format}: {', '.join(files)}")
        if args.verify:
            diffs = foreign.verify(model, args.dst, args.target_format)
            print(
                "read back: "
                + ", ".join(
                    f"{k} within {v:.1e} (relative)"
                    if k != "weights"
                    else f"weights within {v:.1e}"
                    for k, v in diffs.items()
                )
            )
    except (ConfigError, ValueError, OSError) as err:  # ForeignError included
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

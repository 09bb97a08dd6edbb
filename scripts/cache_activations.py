"""Cache a transformer's residual-stream activations on disk, for SAE training.

python scripts/cache_activations.py --out cache/minilm-l3
python scripts/cache_activations.py --out cache/minilm-l3 --max-tokens 200000
python scripts/cache_activations.py --out cache/notes --layer 5 --text 'notes/*.txt'
python scripts/cache_activations.py --out cache/wiki --text hf:wikitext@wikitext-2-raw-v1:train
python scripts/cache_activations.py --out cache/mine --model path/to/local/model

Rerunning the same command continues an interrupted run from its last complete shard
(or grows a finished cache to a larger --max-tokens). Models load offline only.
Errors are one line on stderr and exit 2; Ctrl-C exits 130, keeping complete shards.
"""

import argparse
import os
import sys

# Offline: a model name the hub would resolve fails at once instead of downloading.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from saecommon import transformer  # noqa: E402
from saecommon.activations import (  # noqa: E402
    DEFAULT_SHARD_TOKENS,
    DTYPES,
    ActivationCacheError,
)

INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", required=True, help="the cache directory")
    parser.add_argument(
        "--model",
        default=transformer.DEFAULT_MODEL,
        help="the bundled MiniLM's name, a local model directory, or a model in "
        "the Hugging Face cache",
    )
    parser.add_argument(
        "--layer",
        type=int,
        default=transformer.DEFAULT_LAYER,
        help="the residual stream after block LAYER (hidden_states[LAYER]; 0: the "
        "embeddings)",
    )
    parser.add_argument(
        "--text",
        action="append",
        help="python-docs, a text file path or glob, or hf:PATH[@CONFIG]:SPLIT[:COLUMN]"
        f"; repeat for several (default: {transformer.DEFAULT_TEXT})",
    )
    parser.add_argument(
        "--max-tokens", type=int, help="stop after this many tokens (default: all)"
    )
    parser.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=transformer.DEFAULT_BATCH_SIZE,
        help="texts per forward pass",
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=transformer.DEFAULT_MAX_LENGTH,
        help="tokens per text (longer ones are truncated)",
    )
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--device", default="cpu", help="torch device for the model")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    bar = None

    def progress(done: int, new: int) -> None:
        nonlocal bar
        if args.quiet:
            return
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=args.max_tokens, initial=done, unit="tok", unit_scale=True)
        bar.update(new)

    try:
        cache = transformer.cache_activations(
            args.out,
            model=args.model,
            layer=args.layer,
            text=args.text or transformer.DEFAULT_TEXT,
            max_tokens=args.max_tokens,
            shard_tokens=args.shard_tokens,
            batch_size=args.batch_size,
            max_length=args.max_length,
            dtype=args.dtype,
            device=args.device,
            progress=progress,
        )
    except (ActivationCacheError, transformer.TransformerError, OSError) as err:
        print(f"error: {err}".replace("\n", " "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"interrupted; the complete shards in {args.out} are kept: run the same "
            "command again to continue",
            file=sys.stderr,
        )
        return INTERRUPTED
    finally:
        if bar is not None:
            bar.close()
    m = cache.manifest
    print(
        f"{cache.path}: {cache.n_tokens} tokens in {len(m['shards'])} shards, "
        f"d_in {cache.d_in} ({cache.dtype}), {m['model']} layer {m['layer']}, "
        f"{m['texts_done']} texts of {m['source']}"
        + ("" if m["exhausted"] else " (stopped at --max-tokens)")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

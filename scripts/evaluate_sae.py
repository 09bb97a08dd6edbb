"""Evaluate a dictionary SAE on held-out activations, and downstream in its model.

python scripts/evaluate_sae.py --model runs/topk --cache cache/minilm-l3
python scripts/evaluate_sae.py --model runs/topk/model.safetensors --cache cache/minilm-l3 \\
    --splice-texts 64 --json runs/topk/eval.json

Reports, on the cache's last --eval-tokens tokens (by default the run's own held-out
tokens): fvu and explained variance, l0, the share of latents never active, the mean
cosine of x and x_hat and the relative reconstruction bias. With --splice-texts N > 0
and a cache made from a transformer (its manifest names the model and layer): the
reconstruction is spliced into the model at that layer for the last N texts of
--splice-text (past the texts the cache holds, where there are enough), and the cosine between the original and the spliced sentence embeddings
is reported (MiniLM's mean-pooled embedding). Errors are one line on stderr, exit 2.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from saecommon import frameworks  # noqa: E402
from saecommon.activations import ActivationCache, ActivationCacheError  # noqa: E402
from saecommon.checkpoint import CheckpointError, atomic_write  # noqa: E402
from saecommon.config import ConfigError  # noqa: E402
from saecommon.convert_cli import add_source_flags, source_fields  # noqa: E402
from saecommon.dict_run import evaluate_batches, read_run  # noqa: E402
from saecommon.foreign import read as read_model  # noqa: E402
from saecommon.frameworks import FRAMEWORKS  # noqa: E402
from saecommon.rundir import CONFIG, MODEL  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        required=True,
        help="a run folder or a checkpoint, or an SAE in another library's format "
        "(SAELens, sparsify, dictionary_learning, Gemma Scope, torch, flax: see "
        "scripts/convert.py)",
    )
    parser.add_argument("--cache", help="the activation cache (default: the run's)")
    parser.add_argument(
        "--eval-tokens",
        type=int,
        help="the cache's last tokens to evaluate on "
        "(default: the run's held-out count, else 4096)",
    )
    parser.add_argument("--framework", choices=FRAMEWORKS, default="jax")
    parser.add_argument("--device", help="cpu, cuda, ...")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument(
        "--splice-texts",
        type=int,
        default=0,
        help="texts for the downstream splice metric (0: skip it)",
    )
    parser.add_argument(
        "--splice-text",
        default="python-docs",
        help="the text source the splice texts come from (its last N)",
    )
    parser.add_argument("--json", help="also write the metrics here (a new file)")
    add_source_flags(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        metrics = evaluate(args)
    except (
        ConfigError,
        ActivationCacheError,
        CheckpointError,
        ValueError,
        OSError,
    ) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    print(
        " ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in metrics.items()
        )
    )
    return 0


def evaluate(args) -> dict:
    run = None
    path = args.model
    if os.path.isfile(os.path.join(path, CONFIG)) and os.path.isfile(
        os.path.join(path, MODEL)
    ):
        run = read_run(path)
        path = os.path.join(path, MODEL)
    model = read_model(
        path, args.source_format, fields=source_fields(args), hookpoint=args.hookpoint
    )
    if model.kind != "dictionary":
        raise ConfigError(
            f"{args.model} is a classic {model.config.architecture} autoencoder: "
            "evaluate it with scripts/evaluate.py"
        )
    state_dict, config = model.state_dict, model.config
    cache_dir = args.cache or (run.cache if run else None)
    if cache_dir is None:
        raise ConfigError("--cache is needed (the checkpoint names no run's cache)")
    eval_tokens = args.eval_tokens or (run.eval_tokens if run else 4096)
    if args.json and os.path.exists(args.json):
        raise ConfigError(f"{args.json} exists; give a new --json file")
    cache = ActivationCache(cache_dir, eval_tokens=eval_tokens)
    cache.check_width(config.d_in)
    backend = frameworks.load(args.framework, args.device).dictionary_backend()
    metrics = evaluate_batches(
        backend, state_dict, config, cache.eval_batches(args.batch_size)
    )
    if args.splice_texts:
        metrics.update(splice_metric(backend, state_dict, config, cache, args))
    if args.json:
        atomic_write(args.json, json.dumps(metrics, indent=1).encode())
    return metrics


def splice_metric(backend, state_dict, config, cache, args) -> dict:
    from saecommon import transformer

    manifest = cache.manifest
    lm = transformer.load_model(manifest["model"])
    every = list(transformer.text_source(args.splice_text).texts())
    # Texts past those the cache holds (unseen in training) where there are enough;
    # else the source's last ones (the cache's held-out tokens come from those).
    done = manifest.get("texts_done", len(every))
    texts = every[done : done + args.splice_texts]
    if len(texts) < args.splice_texts:
        texts = every[-args.splice_texts :]

    def reconstruct(x):
        return backend.forward_numpy(state_dict, config, x)[1]

    result = transformer.splice(lm, texts, manifest["layer"], reconstruct)
    zero = transformer.splice(lm, texts, manifest["layer"], lambda x: 0 * x)
    return {
        "splice_cosine": result.mean,
        "splice_cosine_zero_ablation": zero.mean,
        "splice_texts": len(texts),
    }


if __name__ == "__main__":
    sys.exit(main())

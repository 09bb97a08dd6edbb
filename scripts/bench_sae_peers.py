"""Worker side of scripts/bench_sae.py: one TopK SAE training run per process.

    .peers-venv/bin/python scripts/bench_sae_peers.py --impl saelens \\
        --activations acts.npy --steps 200

Run by scripts/bench_sae.py, not usually by hand. Imports only numpy, torch and the
peer being timed (SAELens or EleutherAI's sparsify), never jaxsae/torchsae, so it runs
in .peers-venv (scripts/peers_env.sh). The framework-neutral pieces every worker shares
(the flags, the batch order, the FVU, the memory readings, the result row) live here
once; bench_sae.py's own workers for jaxsae/torchsae import them from this file.

Each worker prints one JSON line (the last line of its stdout): impl, version, steps,
tokens_trained, timed_steps, train_s, tokens_per_s, rss_after_import_mib,
rss_before_train_mib, peak_rss_mib, fvu, notes.

Timing: the first ``--warmup-steps`` steps (default 2: allocator, lazy optimizer
state, any compilation) run untimed; ``train_s`` is the wall time of the remaining
steps, so ``tokens_per_s = timed_steps * batch / train_s``. Data load, imports and the
held-out evaluation are outside it. Batches are copied out of the memory-mapped .npy in
the same seeded order in every worker (``batch_indices``).

Peer setup (same model: d_in from the data, --d-sae latents, TopK --k, Adam at a fixed
--lr with no schedule, batch --batch tokens, float32, CPU):

- sparsify: ``SparseCoder`` with its own forward (FVU loss, fused TopK encoder, eager
  embedding-bag decoder on CPU) and the steps its ``Trainer`` runs around it
  (sparsify/trainer.py): b_dec set to the first batch's mean, the decoder rows set to
  unit norm before every forward, the gradient parallel to each decoder row removed
  before the optimizer step, ``torch.optim.Adam`` (as its Trainer falls back to without
  bitsandbytes). Not used: its Trainer's linear LR warm-up (1000 steps) and decay, its
  default LR (2e-4 / sqrt(num_latents / 2**14)) and its default optimizer (signum).
  AuxK is off at sparsify's own default (auxk_alpha=0); --auxk-alpha turns it on with
  its dead-latent bookkeeping (tokens since fired > --dead-tokens).
- saelens: ``TopKTrainingSAE`` trained through ``SAETrainer.step`` (its
  ``training_forward_pass``, Adam, dead-neuron bookkeeping, scheduler). Kept at
  SAELens's defaults, which differ from sparsify's and cannot be matched exactly:
  ``rescale_acts_by_decoder_norm=True`` (TopK on pre-acts times decoder row norms, acts
  divided by them in decode: a unit-norm decoder by parametrisation, not by
  projection), ``decoder_init_norm=0.1``, the MSE loss
  summed over d_in and averaged over tokens (not divided by the batch variance), and
  ``clip_grad_norm_(1.0)`` hard-coded in ``SAETrainer._train_step`` (Adam is nearly
  invariant to that uniform rescaling; only its eps sees it). No activation
  normalisation (``normalize_activations="none"``). SAELens 6 starts b_dec at zero
  and has no b_dec init from data; with a constant Adam LR of 2e-4 it cannot learn a
  mean offset of order 1 in a few hundred steps (FVU >> 1), so by default
  (``--b-dec-init mean``) the worker sets b_dec to the first batch's mean as sparsify's
  trainer does; ``--b-dec-init peer`` leaves it at zero. AuxK: ``aux_loss_coefficient`` =
  --auxk-alpha (0 by default), dead window --dead-tokens / --batch steps.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import time
from collections.abc import Callable, Iterator

import numpy as np

PEERS = ("saelens", "sparsify")
EVAL_BATCH = 4096  # tokens per held-out forward


# --- shared by every worker (also imported by bench_sae.py) -------------------------


def add_worker_args(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """The flags every worker takes; bench_sae.py passes them through unchanged."""
    parser.add_argument(
        "--activations", required=required, help="float32 .npy [tokens, d_in]"
    )
    parser.add_argument("--heldout", type=int, default=8192, help="last N tokens: FVU")
    parser.add_argument("--steps", type=int, default=200, help="steps incl. warm-up")
    parser.add_argument(
        "--warmup-steps", type=int, default=2, help="untimed first steps"
    )
    parser.add_argument("--batch", type=int, default=4096, help="tokens per step")
    parser.add_argument("--d-sae", type=int, default=3072)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-4, help="Adam, constant")
    parser.add_argument("--seed", type=int, default=0, help="init and batch order")
    parser.add_argument(
        "--b-dec-init",
        choices=("mean", "peer"),
        default="mean",
        help="mean: b_dec = the first batch's mean in every impl (sparsify's own "
        "init); peer: each peer's own (SAELens: zeros)",
    )
    parser.add_argument("--auxk-alpha", type=float, default=0.0, help="0: AuxK off")
    parser.add_argument(
        "--dead-tokens",
        type=int,
        default=10_000_000,
        help="a latent is dead after this many tokens without firing (AuxK only)",
    )


def load_activations(path: str) -> np.ndarray:
    """The activations as a read-only [tokens, d_in] float32 array, memory-mapped.

    Hook for the activation cache: a directory will be read here too (one memmap per
    shard, or a concatenating view), so every worker keeps loading data the same way.
    """
    if os.path.isdir(path):
        raise NotImplementedError(f"{path}: activation cache directories not read yet")
    data = np.load(path, mmap_mode="r")
    if data.ndim != 2 or data.dtype != np.float32:
        raise ValueError(
            f"{path}: want float32 [tokens, d_in], got {data.dtype} {data.shape}"
        )
    return data


def split(data: np.ndarray, heldout: int) -> tuple[np.ndarray, np.ndarray]:
    """(train memmap view [tokens - heldout, d_in], held-out copy [heldout, d_in])."""
    if not 0 < heldout < len(data):
        raise ValueError(f"--heldout {heldout} must be in (0, {len(data)})")
    return data[:-heldout], np.array(data[-heldout:])


def batch_indices(
    n_train: int, batch: int, steps: int, seed: int
) -> Iterator[np.ndarray]:
    """Token indices of each step's batch [batch]: consecutive slices of one seeded
    permutation of the training tokens, wrapping around at its end (the order of
    jaxsae/torchsae's ``dictionary_training.train_array``, so every impl sees the same
    tokens at every step). Sorted within a batch (the loss is a mean over it) so the
    memmap reads forward."""
    if batch > n_train:
        raise ValueError(f"batch {batch} > {n_train} training tokens")
    order = np.random.default_rng(seed).permutation(n_train)
    for step in range(steps):
        yield np.sort(order[np.arange(step * batch, (step + 1) * batch) % n_train])


def batches(train: np.ndarray, args: argparse.Namespace) -> Iterator[np.ndarray]:
    """Each step's batch [batch, d_in], copied out of the memmap."""
    for idx in batch_indices(len(train), args.batch, args.steps, args.seed):
        yield np.ascontiguousarray(train[idx])


def fvu(x: np.ndarray, x_hat: np.ndarray) -> float:
    """sum((x - x_hat)^2) / sum((x - mean_x)^2), mean_x per dimension over tokens."""
    x, x_hat = x.astype(np.float64), x_hat.astype(np.float64)
    return float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


def rss_mib() -> float:
    """This process's resident set now (MiB)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return peak_rss_mib()


def peak_rss_mib() -> float:
    """This process's peak resident set (MiB); ru_maxrss is KiB on Linux."""
    scale = 1024 * 1024 if platform.system() == "Darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def timed_steps(
    step: Callable[[np.ndarray], None], it: Iterator[np.ndarray], warmup: int
) -> float:
    """Run ``step`` on every batch; return the seconds of all but the first ``warmup``.
    ``step`` must finish its work before returning (torch on CPU does)."""
    for _, x in zip(range(warmup), it):
        step(x)
    start = time.perf_counter()
    for x in it:
        step(x)
    return time.perf_counter() - start


def result_row(
    impl: str, version: str, args, seconds: float, rss: dict, fvu_: float, notes: str
) -> dict:
    timed = args.steps - args.warmup_steps
    return {
        "impl": impl,
        "version": version,
        "steps": args.steps,
        "tokens_trained": args.steps * args.batch,
        "timed_steps": timed,
        "train_s": round(seconds, 3),
        "tokens_per_s": round(timed * args.batch / seconds, 1),
        **{key: round(val, 1) for key, val in rss.items()},
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "fvu": round(fvu_, 6),
        "notes": notes,
    }


def check_args(args: argparse.Namespace) -> None:
    if not 0 <= args.warmup_steps < args.steps:
        raise SystemExit(f"--warmup-steps {args.warmup_steps} must be in [0, --steps)")


def load_split(args: argparse.Namespace) -> tuple[dict, np.ndarray, np.ndarray]:
    """Called right after a worker's imports: (RSS readings so far, train, held-out)."""
    rss = {"rss_after_import_mib": rss_mib()}
    train, heldout = split(load_activations(args.activations), args.heldout)
    return rss, train, heldout


# --- peers ---------------------------------------------------------------------------


def _torch_fvu(forward, heldout: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        x_hat = np.concatenate(
            [
                forward(torch.from_numpy(heldout[i : i + EVAL_BATCH])).numpy()
                for i in range(0, len(heldout), EVAL_BATCH)
            ]
        )
    return fvu(heldout, x_hat)


def run_sparsify(args: argparse.Namespace) -> dict:
    """sparsify's SparseCoder, stepped as sparsify/trainer.py's fvu path steps it."""
    from importlib.metadata import version

    import torch

    with contextlib.redirect_stdout(io.StringIO()):  # "Triton not installed" notice
        from sparsify import SparseCoder, SparseCoderConfig

    rss, train, heldout = load_split(args)
    torch.manual_seed(args.seed)
    cfg = SparseCoderConfig(activation="topk", num_latents=args.d_sae, k=args.k)
    sae = SparseCoder(train.shape[1], cfg, device="cpu", dtype=torch.float32)
    opt = torch.optim.Adam(sae.parameters(), lr=args.lr)
    tokens_since_fired = torch.zeros(sae.num_latents, dtype=torch.long)
    first = [True]
    rss["rss_before_train_mib"] = rss_mib()

    def step(x_np: np.ndarray) -> None:
        x = torch.from_numpy(x_np)
        if first[0]:  # trainer.py: b_dec = the first batch's mean
            sae.b_dec.data = x.mean(0)
            first[0] = False
        sae.set_decoder_norm_to_unit_norm()  # trainer.py: before every forward
        dead = tokens_since_fired > args.dead_tokens if args.auxk_alpha > 0 else None
        out = sae(x, dead_mask=dead)
        (out.fvu + args.auxk_alpha * out.auxk_loss + out.multi_topk_fvu / 8).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            tokens_since_fired.add_(len(x))
            tokens_since_fired[out.latent_indices.flatten()] = 0

    seconds = timed_steps(step, batches(train, args), args.warmup_steps)
    sae.set_decoder_norm_to_unit_norm()  # as its trainer leaves it before saving
    fvu_ = _torch_fvu(lambda x: sae(x).sae_out, heldout)
    notes = "Adam const lr; b_dec=first-batch mean; unit-norm W_dec + grad projection"
    return result_row(
        "sparsify", version("eai-sparsify"), args, seconds, rss, fvu_, notes
    )


def run_saelens(args: argparse.Namespace) -> dict:
    """SAELens's TopKTrainingSAE, stepped by SAETrainer.step (its own train step)."""
    import sae_lens
    import torch
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    rss, train, heldout = load_split(args)
    torch.manual_seed(args.seed)
    cfg = TopKTrainingSAEConfig(
        d_in=train.shape[1],
        d_sae=args.d_sae,
        k=args.k,
        dtype="float32",
        device="cpu",
        aux_loss_coefficient=args.auxk_alpha,
    )
    sae = TopKTrainingSAE(cfg)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=args.steps * args.batch,
        train_batch_size_samples=args.batch,
        lr=args.lr,
        lr_end=args.lr,  # the runner config sets this; "constant" ignores it
        lr_scheduler_name="constant",
        device="cpu",
        # Steps without firing before a latent is dead; with AuxK off, never.
        dead_feature_window=(
            args.dead_tokens // args.batch if args.auxk_alpha > 0 else 2**62
        ),
    )
    # SAETrainer only calls next() on the data provider inside fit(); step() is fed here.
    trainer = SAETrainer(trainer_cfg, sae, data_provider=iter(()))
    rss["rss_before_train_mib"] = rss_mib()

    first = [args.b_dec_init == "mean"]

    def step(x_np: np.ndarray) -> None:
        x = torch.from_numpy(x_np)
        if first[0]:  # as sparsify's trainer; SAELens 6 starts b_dec at zero
            sae.b_dec.data = x.mean(0)
            first[0] = False
        trainer.step(x)
        trainer.n_training_steps += 1  # fit() does this after step()

    seconds = timed_steps(step, batches(train, args), args.warmup_steps)
    sae.eval()
    fvu_ = _torch_fvu(sae, heldout)
    notes = (
        f"SAETrainer.step: Adam const lr, clip_grad_norm 1.0; b_dec init "
        f"{'first-batch mean' if args.b_dec_init == 'mean' else 'zero'}; "
        "rescale_acts_by_decoder_norm; decoder_init_norm 0.1"
    )
    return result_row("saelens", sae_lens.__version__, args, seconds, rss, fvu_, notes)


RUNNERS = {"saelens": run_saelens, "sparsify": run_sparsify}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--impl", required=True, choices=PEERS)
    add_worker_args(parser)
    args = parser.parse_args()
    check_args(args)
    row = RUNNERS[args.impl](args)
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

"""Data parallel training over ``torch.distributed`` (``torchrun``): the global batch
split over the processes, gradients averaged by ``DistributedDataParallel``, and the
rules over the batch computed on the global batch, so that N processes train what one
process trains on the same global batches.

The split: with world size W, process r holds rows [r * b, (r + 1) * b) of every
global batch of B = W * b rows (``own_rows``). Each process's loss is the mean over its
own rows, and DDP averages the gradients, so the average is the global batch's
gradient.

The rules over the batch see the global batch inside ``batch_split()``:

- masks (lifetime top-k, BatchTopK): the values are gathered without gradient
  (``gather_rows``), the mask is chosen on the global batch by the one-process rule
  (ties to the lower global row), and each process keeps its rows of it;
- differentiable sums over the batch (KL's rho_hat): ``sum_rows``, an all-reduce
  whose backward all-reduces the gradient too. Every process then computes the same
  global term, and its rows' gradient arrives summed over the W processes, W times
  the term's own; DDP's average divides by W, so each parameter gets exactly the
  term's gradient. A ratio with a global denominator (AuxK's variance
  normalisations) is written as W * (own rows' sum) / global denominator for the
  same reason;
- statistics (dead-latent counts, metrics): all-reduced sums (``all_sum``).

Latent sharding is jaxsae's (a torch user with a dictionary too big for one GPU
shards it with FSDP, or trains one SAE per GPU as sparsify does); torch here is data
parallel only.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist

from saecommon.recorder import check_batch_splits


class Split(NamedTuple):
    """This process's place in the global batch: rank of size processes."""

    rank: int
    size: int


_SPLIT: contextvars.ContextVar[Split | None] = contextvars.ContextVar(
    "batch_split", default=None
)


def world() -> Split:
    """(rank, size) of the default process group; (0, 1) when there is none."""
    if dist.is_available() and dist.is_initialized():
        return Split(dist.get_rank(), dist.get_world_size())
    return Split(0, 1)


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher setting
    WORLD_SIZE) as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str) -> str:
    """Join the process group torchrun describes (gloo on the CPU, nccl on CUDA GPUs)
    unless joined already; returns the device this process trains on (for CUDA:
    cuda:LOCAL_RANK, one GPU per process)."""
    if not launched():
        return device
    cuda = device.startswith("cuda")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ValueError(
                f"this host's process {local} needs a GPU of its own, but torch sees "
                f"{torch.cuda.device_count()}: start at most that many processes per "
                "host (--nproc_per_node), or train on the CPU (--device cpu)"
            )
        device = f"cuda:{local}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return device


def check_batch_divides(batch_size: int, size: int) -> None:
    """ValueError unless a global batch splits evenly over ``size`` processes."""
    check_batch_splits(
        batch_size, size, "processes", "fewer processes (--nproc_per_node)"
    )


def own_rows(batch_size: int, split: Split | None = None) -> slice:
    """This process's rows of a global batch of ``batch_size`` rows."""
    rank, size = split or world()
    part = batch_size // size
    return slice(rank * part, (rank + 1) * part)


@contextlib.contextmanager
def batch_split(split: Split | None = None):
    """Inside, the rules over the batch treat each process's rows as its part of the
    global batch (``split``: the default group's ``world()``). Outside (or with one
    process) they see the local batch alone, at no cost."""
    split = split or world()
    token = _SPLIT.set(split if split.size > 1 else None)
    try:
        yield
    finally:
        _SPLIT.reset(token)


def current() -> Split | None:
    """The active split, or None when the batch is whole."""
    return _SPLIT.get()


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """The global batch of ``x`` (each process's rows, in rank order), without
    gradient."""
    split = current()
    if split is None:
        return x.detach()
    parts = [torch.empty_like(x) for _ in range(split.size)]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts)


def local_part(x: torch.Tensor, n: int) -> torch.Tensor:
    """This process's ``n`` rows of a global-batch tensor ``x``."""
    split = current()
    if split is None:
        return x
    return x[split.rank * n : (split.rank + 1) * n]


def sum_rows(x: torch.Tensor) -> torch.Tensor:
    """x.sum(0) over the global batch, differentiable (see the module docstring)."""
    total = x.sum(dim=0)
    if current() is None:
        return total
    return _SumOverProcesses.apply(total)


class _SumOverProcesses(torch.autograd.Function):
    """All-reduce (sum) whose backward all-reduces the gradient (as
    torch.distributed.nn's deprecated all_reduce does)."""

    @staticmethod
    def forward(ctx, x):
        total = x.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, g):
        total = g.clone()
        dist.all_reduce(total)
        return total


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """``x`` summed over the processes, without gradient."""
    if current() is None:
        return x
    total = x.detach().clone()
    dist.all_reduce(total)
    return total


def any_rows(mask: torch.Tensor) -> torch.Tensor:
    """Bool [columns]: true where some row of the global batch of ``mask`` is."""
    if current() is None:
        return mask.any(dim=0)
    return all_sum(mask.sum(dim=0)) > 0


def rows_total(n: int) -> int:
    """The global batch's rows when each process holds ``n``."""
    split = current()
    return n if split is None else n * split.size


def scale() -> int:
    """W inside a split (the factor of a global ratio's numerator, see above), else 1."""
    split = current()
    return 1 if split is None else split.size


def _device() -> torch.device:
    """Where this process's collectives run (nccl needs CUDA tensors)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def mean_over_processes(metrics: dict, split: Split) -> dict:
    """Per-step metrics (numpy arrays, this process's) averaged over the processes:
    each is a mean over a process's equal share of the global batch (or a global
    value, the same on every process), so the average is the global batch's."""
    if split.size == 1:
        return metrics
    keys = list(metrics)
    stacked = torch.from_numpy(np.stack([metrics[k] for k in keys])).to(_device())
    dist.all_reduce(stacked)
    values = (stacked / split.size).cpu().numpy()
    return {k: values[i] for i, k in enumerate(keys)}


def broadcast_float(value: float, split: Split) -> float:
    """Process 0's ``value`` on every process."""
    if split.size == 1:
        return value
    box = torch.tensor([value], dtype=torch.float64, device=_device())
    dist.broadcast(box, src=0)
    return float(box.item())


def any_process(flag: bool) -> bool:
    """Whether ``flag`` is set on some process (every process calls this)."""
    if not (dist.is_available() and dist.is_initialized()):
        return bool(flag)
    box = torch.tensor([int(bool(flag))], device=_device())
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return bool(box.item())


def barrier() -> None:
    """Wait until every process of the group gets here (nothing without one)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()

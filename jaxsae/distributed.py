"""Several processes (hosts) with ``jax.distributed``: one program on every process,
one global mesh over all their devices, and the trainers' sharded steps unchanged.

Launch: every process gets ``JAX_COORDINATOR_ADDRESS`` (host:port of process 0),
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``; under SLURM or Open MPI the coordinator
address alone is enough (JAX reads the rest from the cluster). ``init_from_env``
joins them (on CPUs, over gloo collectives) before any array is made;
saecommon.frameworks.load("jax") calls it.

What changes with several processes, and nothing else does:

- each process reads only its rows of every global batch (``batch_rows``: the rows
  its devices hold on the mesh's "data" axis) and hands them to
  ``jax.make_array_from_process_local_data``;
- arrays go to the mesh from numpy (``to_mesh``), and come back to numpy with
  ``fetch``, which gathers what another process holds (a collective: every process
  calls it, in the same order);
- process 0 alone writes the run directory (``is_writer``); every process computes
  the same metrics, so they agree on schedules and on when to stop.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.experimental import multihost_utils


def launched() -> bool:
    """Whether this process was started as one of several (JAX_COORDINATOR_ADDRESS
    set)."""
    return bool(os.environ.get("JAX_COORDINATOR_ADDRESS"))


def init_from_env() -> None:
    """Join the processes the environment describes, once (see the module
    docstring); nothing when the process runs alone."""
    if not launched() or jax.distributed.is_initialized():
        return
    count = os.environ.get("JAX_NUM_PROCESSES")
    index = os.environ.get("JAX_PROCESS_ID")
    # CPU devices of several processes reach each other over gloo (JAX's default
    # CPU collectives reach only the devices of one process)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        num_processes=None if count is None else int(count),
        process_id=None if index is None else int(index),
    )


def default_mesh(mesh: tuple[int, int] | None) -> tuple[int, int] | None:
    """``mesh``, or when there is none and this is one of several processes, data
    parallel over every device of every process (the trainers' default)."""
    if mesh is None and jax.process_count() > 1:
        return (jax.device_count(), 1)
    return mesh


def any_process(flag: bool) -> bool:
    """Whether ``flag`` is set on some process (every process calls this)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(np.any(multihost_utils.process_allgather(np.asarray(bool(flag)))))


def is_writer() -> bool:
    """Whether this process writes files (process 0)."""
    return jax.process_index() == 0


def to_mesh(tree, shardings):
    """``tree`` (numpy or single-device arrays; the same values on every process)
    placed as ``shardings`` say (a sharding, or a tree of them)."""
    return jax.device_put(jax.device_get(tree), shardings)


def fetch(tree):
    """``tree``'s arrays as numpy, whole on every process: what another process
    holds is gathered (a collective when some array is not fully addressable)."""

    def whole(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            if not leaf.is_fully_replicated:
                return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        return np.asarray(leaf)

    return jax.tree.map(whole, tree)


def batch_rows(sharding: jax.sharding.Sharding, batch_size: int):
    """(lo, hi): the rows of a global batch of ``batch_size`` rows that this
    process's devices hold under ``sharding`` (split on its first axis); None when
    they hold all of it."""
    rows = sorted(
        {
            (
                index[0].start or 0,
                batch_size if index[0].stop is None else index[0].stop,
            )
            for index in sharding.addressable_devices_indices_map(
                (batch_size, 1)
            ).values()
        }
    )
    lo, hi = rows[0][0], rows[-1][1]
    if any(a[1] != b[0] for a, b in zip(rows, rows[1:])):
        raise ValueError(
            "this process's devices hold rows of the batch that are not contiguous; "
            "build the mesh with each process's devices together"
        )
    return None if (lo, hi) == (0, batch_size) else (lo, hi)


def from_rows(rows: np.ndarray, sharding: jax.sharding.Sharding, batch_size: int):
    """The global batch whose rows ``batch_rows`` gave this process."""
    if jax.process_count() == 1:
        return jax.device_put(rows, sharding)
    return jax.make_array_from_process_local_data(
        sharding, rows, (batch_size, *rows.shape[1:])
    )


def barrier() -> None:
    """Wait until every process gets here (nothing with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("jaxsae barrier")

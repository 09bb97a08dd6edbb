"""TopK, BatchTopK and AuxK over latents split on a mesh's "model" axis (tokens on its
"data" axis): each shard selects locally and one small all-gather decides
(``jax.shard_map``); ``latent_sum`` adds the decoder's per-shard partial sums.

With sharding annotations alone (GSPMD) a selection over the global latent dimension
makes XLA all-gather the whole [tokens, d_sae] activations to every device, which
undoes the latent split. Here:

- ``top_k``: per token, each model shard's local top-k (values, global latent
  indices); the [tokens, k * model] candidates are gathered over "model" and their
  top-k taken. The TopK rule, and its AuxK over the dead latents.
- ``first_k_mask``: ``sparsity._first_k_mask`` per token (the batch rules' AuxK):
  the shards' local top-k values, gathered, give the k-th value; the counts of
  entries above it and equal to it, gathered, tell each shard which ties it keeps.
- ``flat_first_k_mask``: the same over the whole [tokens, d_sae] array in token-major
  order (BatchTopK): local top-n values and per (token, shard) counts, each gathered
  over both axes.

Each result is one device's, bit for bit, ties included: the global top-k is always
within the union of the local top-ks (whatever beats an entry in its shard beats it
globally), ``lax.top_k`` puts the lower index first among equal values, and the
gathered candidates are in shard order, which is global index order. The masks keep
``_first_k_mask``'s rule (strictly above the k-th value, then the first ``need``
entries equal to it), comparing with ``==`` as one device does.

Why shard_map, not annotations: annotations say where arrays live, not what
travels, and for a selection over a split dimension the partitioner gathers the
operand. shard_map states the collectives in a few lines, and only for these steps:
the rest of the step keeps its annotations (the selected latents' gather and its
scatter-add backward, and the dead-latent counters, stay in each latent's shard
under XLA's partitioning). The sparse decoder is the exception: partitioned by XLA it
all-reduces inside its loop, once per selected latent; ``latent_sum`` sums each
shard's rows and all-reduces once.

Why a context: the mesh step traces inside ``latents_sharded(mesh)`` and these
functions dispatch on it at trace time, so neither loss_terms nor make_train_step
takes a mesh argument, and one device traces exactly the code it traced before (no
new cost). A shape that does not split evenly over the mesh takes that one-device
code too, which GSPMD partitions as before. Inside shard_map ``lax.top_k`` has no
optimisation barrier (``sparsity.top_k``'s): XLA's CPU TopK decomposer aborts on one
there (jax 0.10.2).
"""

from __future__ import annotations

import contextlib
import contextvars

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxsae import sparsity

__all__ = [
    "first_k_mask",
    "flat_first_k_mask",
    "latent_sum",
    "latents_sharded",
    "relu_top_k",
    "top_k",
]

_MESH: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar(
    "latent_mesh", default=None
)
_BLOCKS = P("data", "model")  # [tokens, d_sae]: tokens on "data", latents on "model"
_ALL = ("data", "model")  # all_gather over both: device order data-major


@contextlib.contextmanager
def latents_sharded(mesh: Mesh):
    """Trace the selections below as shard-local selections over ``mesh``."""
    token = _MESH.set(mesh)
    try:
        yield
    finally:
        _MESH.reset(token)


def _mesh_for(tokens: int, latents: int) -> Mesh | None:
    """The active mesh if [tokens, latents] splits evenly over it, else None."""
    mesh = _MESH.get()
    if mesh is None or tokens % mesh.shape["data"] or latents % mesh.shape["model"]:
        return None
    return mesh


def top_k(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """``sparsity.top_k``: (values, indices) [tokens, k] of each row of x
    [tokens, d_sae], largest first, equal values by the lower index."""
    mesh = _mesh_for(*x.shape)
    if mesh is None:
        return sparsity.top_k(x, k)

    def local(block):  # [tokens / data, d_sae / model]
        width = block.shape[1]
        values, idx = jax.lax.top_k(block, min(k, width))
        idx = idx + jax.lax.axis_index("model") * width
        # [tokens / data, model * k], shard-major: equal values in global index order
        values, idx = jax.lax.all_gather(
            (values, idx), "model", axis=1, tiled=True, to="invarying"
        )
        values, pos = jax.lax.top_k(values, k)
        return values, jnp.take_along_axis(idx, pos, axis=1)

    spec = P("data", None)
    return jax.shard_map(local, mesh=mesh, in_specs=_BLOCKS, out_specs=(spec, spec))(x)


def relu_top_k(x: jax.Array, bias: jax.Array, k: int) -> jax.Array:
    """``sparsity.relu_top_k``: the indices [tokens, k] of the k largest entries of
    each row of relu(x + bias) (no gradient), as ``top_k`` orders them."""
    if _mesh_for(*x.shape) is None:
        return sparsity.relu_top_k(x, bias, k)
    return top_k(jax.nn.relu(jax.lax.stop_gradient(x + bias)), k)[1]


def first_k_mask(x: jax.Array, k: int) -> jax.Array:
    """``sparsity._first_k_mask``: bool [tokens, d_sae], the k largest entries of each
    row of x, ties to the lower index."""
    mesh = _mesh_for(*x.shape)
    if mesh is None:
        return sparsity._first_k_mask(x, k)

    def local(block):
        width = block.shape[1]
        candidates = jax.lax.top_k(block, min(k, width))[0]
        candidates = jax.lax.all_gather(candidates, "model", axis=1, tiled=True)
        kth = jax.lax.top_k(candidates, k)[0][:, k - 1 : k]
        above, tied = block > kth, block == kth
        # [model, tokens / data]: each shard's count of the row's entries
        counts = jax.lax.all_gather(jnp.stack([above.sum(1), tied.sum(1)]), "model")
        shards = jnp.arange(counts.shape[0])[:, None]
        earlier = jnp.sum(
            jnp.where(shards < jax.lax.axis_index("model"), counts[:, 1], 0), axis=0
        )
        need = k - counts[:, 0].sum(0)
        total = counts[:, 1].sum(0)
        return _keep_ties(above, tied, earlier[:, None], need[:, None], total[:, None])

    return jax.shard_map(local, mesh=mesh, in_specs=_BLOCKS, out_specs=_BLOCKS)(x)


def flat_first_k_mask(x: jax.Array, n: int) -> jax.Array:
    """Bool [tokens, d_sae]: the n largest entries of all of x, ties to the lower
    token-major flat index (``_first_k_mask`` of x flattened to one row)."""
    mesh = _mesh_for(*x.shape)
    if mesh is None:
        return sparsity._first_k_mask(x.reshape(1, -1), n).reshape(x.shape)

    def local(block):  # [rows, width] = [tokens / data, d_sae / model]
        rows, width = block.shape
        candidates = jax.lax.top_k(block.reshape(1, -1), min(n, rows * width))[0]
        candidates = jax.lax.all_gather(candidates, _ALL, axis=1, tiled=True)
        kth = jax.lax.top_k(candidates, n)[0][0, n - 1]
        above, tied = block > kth, block == kth
        # per (token, shard) counts, [data, model, rows, 2]
        counts = jax.lax.all_gather(jnp.stack([above.sum(1), tied.sum(1)], -1), _ALL)
        counts = counts.reshape(mesh.shape["data"], mesh.shape["model"], rows, 2)
        need = n - counts[..., 0].sum()
        ties = counts[..., 1].transpose(0, 2, 1)  # [data, rows, model]: flat order
        earlier = jnp.cumsum(ties).reshape(ties.shape) - ties
        me = earlier[jax.lax.axis_index("data"), :, jax.lax.axis_index("model")]
        return _keep_ties(above, tied, me[:, None], need, ties.sum())

    return jax.shard_map(local, mesh=mesh, in_specs=_BLOCKS, out_specs=_BLOCKS)(x)


def latent_sum(fn, weights: jax.Array, idx: jax.Array, table: jax.Array) -> jax.Array:
    """fn(weights, idx, table) [tokens, d] for an ``fn`` that sums weights[t, j] times
    row idx[t, j] of table [d_sae, d] (``dictionary.sparse_decode``; weights and idx
    [tokens, m]). On a mesh, with table's rows split on "model", each shard sums its
    own rows (the others weigh 0) and the shards' partial sums are added by one
    all-reduce after the loop, not one per selected latent inside it."""
    mesh = _mesh_for(idx.shape[0], table.shape[0])
    if mesh is None:
        return fn(weights, idx, table)

    def local(weights, idx, rows):  # rows [d_sae / model, d] -> [tokens / data, d]
        start = jax.lax.axis_index("model") * rows.shape[0]
        mine = (idx >= start) & (idx < start + rows.shape[0])
        return fn(jnp.where(mine, weights, 0), jnp.where(mine, idx - start, 0), rows)

    tokens = P("data", None)
    # The partial sums side by side, [tokens, model * d], summed outside: no
    # collective inside, so check_vma (which would reject fn's loops, whose carries
    # start as fresh, mesh-invariant zeros) can be off without changing a gradient.
    parts = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(tokens, tokens, P("model", None)),
        out_specs=_BLOCKS,
        check_vma=False,
    )(weights, idx, table)
    return parts.reshape(idx.shape[0], mesh.shape["model"], -1).sum(1)


def _keep_ties(above, tied, earlier, need, total_tied) -> jax.Array:
    """above | the tied entries whose rank among their group's ties (``earlier`` of
    them on earlier shards, then this block's in row order) is at most ``need``. As in
    ``_first_k_mask``, the running count is skipped when every tie is needed (the
    test is on gathered counts, so every device takes the same branch)."""
    return jax.lax.cond(
        jnp.all(total_tied == need),
        lambda: above | tied,
        lambda: above | (tied & (earlier + jnp.cumsum(tied, axis=-1) <= need)),
    )

"""Shard-local selections (jaxsae.mesh_select) on 1x4, 2x2 and 4x1 meshes of forced CPU
devices: TopK, AuxK and BatchTopK pick exactly what one device picks on inputs built
with ties (equal values at the k-th place across shards, exact zeros, -0.0, -inf); the
decoder's per-shard partial sums and their gradients match one device; a few training
steps with TopK + AuxK and BatchTopK + AuxK end where one device ends, and the mesh
step no longer all-gathers the [batch, d_sae] activations.

Each check runs in a subprocess with 4 forced CPU devices (tests/test_mesh.py's
``run_on_four_devices``), so the rest of the suite keeps one device.
"""

from __future__ import annotations

from test_mesh import run_on_four_devices

MESHES = ("1x4", "2x2", "4x1")


def test_selections_are_one_devices_bit_for_bit_on_ties():
    """Every index and mask equal to one device's, for k below, at and above a
    shard's width (8 latents on a 1x4 mesh), and each call under the mesh traced a
    shard_map (the sharded path, not the one-device fallback)."""
    result = run_on_four_devices(
        """
        import json
        import jax, jax.numpy as jnp
        import numpy as np
        from jax.sharding import NamedSharding, PartitionSpec
        from jaxsae import dictionary, mesh_select
        from jaxsae.training import make_mesh

        rng = np.random.default_rng(0)
        tokens, d_sae = 8, 32
        levels = np.maximum(rng.integers(-3, 4, (tokens, d_sae)), 0).astype(np.float32)
        cross = np.zeros((tokens, d_sae), np.float32)
        cross[:, ::5] = 1.0  # the same value in every shard: the k-th place is a tie
        cross[:, 7] = 2.0
        signed = np.where(rng.random((tokens, d_sae)) < 0.5, -0.0, 0.0)
        signed[::2, 3::4] = 1.0
        inputs = {"levels": levels, "cross": cross, "zeros": np.zeros_like(levels),
                  "signed_zeros": signed.astype(np.float32)}
        dead_sets = {"all": np.ones(d_sae, bool), "some": rng.random(d_sae) < 0.4,
                     "two": np.isin(np.arange(d_sae), [5, 30])}

        def selections(x, k, dead):
            masked = jnp.where(dead[None, :], x, -jnp.inf)
            return {
                "topk": tuple(mesh_select.top_k(x, k)),
                "auxk_topk": tuple(mesh_select.top_k(masked, k)),
                "auxk_mask": dictionary.aux_mask(x, dead, k),
                "row_mask": mesh_select.first_k_mask(x, k),
                "batchtopk": dictionary.batchtopk_mask(x, k),
            }

        one_device = jax.jit(selections, static_argnums=1)
        out = {}
        for mesh_name in ("1x4", "2x2", "4x1"):
            mesh = make_mesh(tuple(int(v) for v in mesh_name.split("x")))
            blocks = NamedSharding(mesh, PartitionSpec("data", "model"))
            # a fresh function per mesh: jit's cache does not know the context
            on_mesh = jax.jit(lambda *a: selections(*a), static_argnums=1)
            for name, x in inputs.items():
                xs = jax.device_put(x, blocks)
                for dead_name, dead in dead_sets.items():
                    for k in (1, 3, 8, 9, 20):
                        want = one_device(x, k, dead)
                        with mesh_select.latents_sharded(mesh):
                            got = on_mesh(xs, k, dead)
                            traced = jax.make_jaxpr(selections, static_argnums=1)(
                                xs, k, dead)
                        same = jax.tree.map(
                            lambda a, b: bool(np.array_equal(a, b)), want, got)
                        bad = [key for key, v in same.items()
                               if not all(jax.tree.leaves(v))]
                        key = f"{mesh_name}/{name}/dead={dead_name}/k={k}"
                        out[key] = {
                            "differ": bad,
                            "shard_maps": sum(e.primitive.name == "shard_map"
                                              for e in traced.jaxpr.eqns),
                        }
        print(json.dumps(out))
        """
    )
    assert len(result) == 3 * 4 * 3 * 5
    for key, case in result.items():
        assert case["differ"] == [], (key, case["differ"])
        assert case["shard_maps"] == 5, (key, case["shard_maps"])


def test_latent_sum_and_its_gradients_match_one_device():
    """sparse_decode over row-split W_dec (each shard's rows, one all-reduce): the
    sum and the gradients of weights and table within 1e-6 of one device's."""
    result = run_on_four_devices(
        """
        import json
        import jax, jax.numpy as jnp
        import numpy as np
        from jax.sharding import NamedSharding, PartitionSpec
        from jaxsae import mesh_select
        from jaxsae.dictionary import sparse_decode
        from jaxsae.training import make_mesh

        rng = np.random.default_rng(1)
        tokens, d_sae, d, m = 8, 32, 6, 5
        weights = rng.standard_normal((tokens, m)).astype(np.float32)
        idx = np.stack([rng.permutation(d_sae)[:m] for _ in range(tokens)])
        idx = idx.astype(np.int32)
        table = rng.standard_normal((d_sae, d)).astype(np.float32)
        probe = rng.standard_normal((tokens, d)).astype(np.float32)

        def loss(weights, table, idx):
            out = mesh_select.latent_sum(sparse_decode, weights, idx, table)
            return jnp.sum(out * probe), out

        f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
        (_, want), want_grads = f(weights, table, idx)
        out = {}
        for name in ("1x4", "2x2", "4x1"):
            mesh = make_mesh(tuple(int(v) for v in name.split("x")))
            rows = NamedSharding(mesh, PartitionSpec("model", None))
            toks = NamedSharding(mesh, PartitionSpec("data", None))
            with mesh_select.latents_sharded(mesh):
                g = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
                (_, got), got_grads = g(jax.device_put(weights, toks),
                                        jax.device_put(table, rows),
                                        jax.device_put(idx, toks))
            pairs = {"sum": (want, got), "d_weights": (want_grads[0], got_grads[0]),
                     "d_table": (want_grads[1], got_grads[1])}
            out[name] = {k: float(np.max(np.abs(a - b)) / np.max(np.abs(a)))
                         for k, (a, b) in pairs.items()}
        print(json.dumps(out))
        """
    )
    for mesh in MESHES:
        for name, worst in result[mesh].items():
            assert worst < 1e-6, (mesh, name, worst)


def test_mesh_steps_with_shard_local_selection_end_where_one_device_ends():
    """6 steps of TopK + AuxK and BatchTopK + AuxK (AuxK busy from the third step): the
    weights within 1e-5 of one device's, L0 and dead-latent counters identical, the
    mesh step traced the shard-local selections, and the 1x4 step's compiled HLO
    all-gathers only candidates, nothing as large as the activations."""
    result = run_on_four_devices(
        """
        import json, re
        import jax, numpy as np
        from jax.sharding import NamedSharding, PartitionSpec
        from jaxsae import dictionary_training as dt, mesh_select
        from jaxsae.dictionary import make_train_step
        from jaxsae.cpu_kernels import for_partitioner
        from saecommon.dictionary import array_batch, array_start
        from saecommon.dictionary_config import DictConfig, DictTrainConfig
        from saecommon.schedules import coefficients

        data = np.random.default_rng(0).standard_normal((512, 16)).astype(np.float32)
        sharded = []  # whether mesh_select found a mesh, for each traced selection
        mesh_for = mesh_select._mesh_for

        def spy(*shape):
            mesh = mesh_for(*shape)
            sharded.append(mesh is not None)
            return mesh

        mesh_select._mesh_for = spy

        def setup(activation):
            # 64 of 256 latents fire per step at most: many are dead from step 3
            config = DictConfig(d_in=16, d_sae=256, activation=activation, k=2)
            train = DictTrainConfig(batch_size=32, aux_k=8, dead_tokens=64,
                                    b_dec_init="mean", init_sample_tokens=256)
            return config, train

        def run(mesh, activation):
            config, train = setup(activation)
            backend = dt.backend(mesh)
            order, sd = array_start(config, train, data)
            state = backend.init_state(sd, config, train)
            step = backend.make_train_step(config, train)
            l0, aux = [], []
            sharded.clear()
            for s in range(6):
                x = backend.put(array_batch(data, order, s, train.batch_size))
                coefs = backend.Coefficients(*coefficients(config, train, s))
                state, metrics = step(state, x, coefs)
                l0.append(float(metrics["l0"]))
                aux.append(float(metrics["aux"]))
            return (backend.state_dict(state, config), np.asarray(state.since_fired),
                    l0, aux, any(sharded))

        def gathers(activation):
            # the mesh step's jit (dictionary_training.mesh_backend), lowered
            config, train = setup(activation)
            backend = dt.mesh_backend((1, 4))
            order, sd = array_start(config, train, data)
            state = backend.init_state(sd, config, train)
            layout = (dt.state_sharding(state, backend.mesh),
                      NamedSharding(backend.mesh, PartitionSpec()))
            fn = jax.jit(make_train_step(config, train).__wrapped__,
                         out_shardings=layout)
            x = backend.put(array_batch(data, order, 0, train.batch_size))
            coefs = backend.Coefficients(*coefficients(config, train, 0))
            with for_partitioner(), mesh_select.latents_sharded(backend.mesh):
                text = fn.lower(state, x, coefs).compile().as_text()
            shapes = re.findall(r"= \\w+\\[([\\d,]*)\\]\\S* all-gather(?:-start)?\\(", text)
            return [int(np.prod([int(d) for d in s.split(",")])) for s in shapes]

        out = {}
        for activation in ("topk", "batchtopk"):
            ref, since, l0, aux, ref_sharded = run(None, activation)
            out[activation] = {"aux": aux, "one_device_sharded": ref_sharded,
                               "gathers": gathers(activation)}
            for mesh in ((1, 4), (2, 2), (4, 1)):
                got, since_m, l0_m, _, was_sharded = run(mesh, activation)
                worst = max(
                    float(np.max(np.abs(ref[k] - got[k]))
                          / max(np.max(np.abs(ref[k])), 1e-12))
                    for k in ref
                )
                out[f"{activation}-{mesh[0]}x{mesh[1]}"] = {
                    "worst": worst,
                    "since_equal": bool(np.array_equal(since, since_m)),
                    "l0_equal": l0 == l0_m,
                    "sharded": was_sharded,
                }
        print(json.dumps(out))
        """
    )
    for activation in ("topk", "batchtopk"):
        summary = result[activation]
        assert not summary["one_device_sharded"]
        assert summary["aux"][0] == 0 and summary["aux"][-1] > 0, summary["aux"]
        # candidates only; GSPMD alone gathers the 32 x 256 activations
        assert summary["gathers"] and max(summary["gathers"]) < 32 * 256, summary
        for mesh in MESHES:
            case = result[f"{activation}-{mesh}"]
            assert case["worst"] < 1e-5, (activation, mesh, case["worst"])
            assert case["since_equal"] and case["l0_equal"], (activation, mesh)
            assert case["sharded"], (activation, mesh)

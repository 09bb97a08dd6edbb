"""Dictionary SAEs on several devices (jaxsae on a (data, model) mesh): a few steps on
4x1, 1x4 and 2x2 meshes of forced CPU devices end where one device ends, and a run
stopped on one mesh resumes on another to the weights of an uninterrupted run.

Each check runs in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=4,
so the rest of the suite keeps one device. Tolerance: every tensor within 1e-5 of its
largest |value| (float32 sums in another order); the per-step L0 and the dead-latent
counters (which latents fired on every step) are identical, so every mask was.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def run_on_four_devices(code: str) -> dict:
    """Run ``code`` on 4 forced CPU devices; it prints one JSON line last."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    env["JAX_PLATFORMS"] = "cpu"
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_meshes_end_where_one_device_ends():
    result = run_on_four_devices(
        """
        import json
        import jax, numpy as np
        from jaxsae import dictionary_training as dt
        from saecommon.dictionary import array_batch, array_start
        from saecommon.dictionary_config import DictConfig, DictTrainConfig
        from saecommon.schedules import coefficients

        assert len(jax.devices()) == 4
        data = np.random.default_rng(0).standard_normal((512, 16)).astype(np.float32)

        def run(mesh, activation):
            config = DictConfig(d_in=16, d_sae=64, activation=activation, k=4)
            train = DictTrainConfig(batch_size=64, aux_k=8, dead_tokens=128,
                                    b_dec_init="mean", init_sample_tokens=256,
                                    l0_coefficient=0.1)
            backend = dt.backend(mesh)
            order, sd = array_start(config, train, data)
            state = backend.init_state(sd, config, train)
            step = backend.make_train_step(config, train)
            l0 = []
            for s in range(6):
                x = backend.put(array_batch(data, order, s, train.batch_size))
                coefs = backend.Coefficients(*coefficients(config, train, s))
                state, metrics = step(state, x, coefs)
                l0.append(float(metrics["l0"]))
            def spec(a):
                return str(getattr(a.sharding, "spec", "one device"))

            specs = {k: spec(v) for k, v in state.params.items()}
            specs["since_fired"] = spec(state.since_fired)
            return backend.state_dict(state, config), np.asarray(state.since_fired), l0, specs

        out = {}
        for activation in ("topk", "batchtopk", "jumprelu"):
            ref, since, l0, _ = run(None, activation)
            for mesh in ((4, 1), (1, 4), (2, 2)):
                got, since_m, l0_m, specs = run(mesh, activation)
                worst = max(
                    float(np.max(np.abs(ref[k] - got[k])) / max(np.max(np.abs(ref[k])), 1e-12))
                    for k in ref
                )
                out[f"{activation}-{mesh[0]}x{mesh[1]}"] = {
                    "worst": worst,
                    "since_equal": bool(np.array_equal(since, since_m)),
                    "l0_equal": l0 == l0_m,
                    "specs": specs,
                }
        try:
            dt.backend((3, 1)).check_batch(64)
            out["bad_batch"] = ""
        except ValueError as err:
            out["bad_batch"] = str(err)
        try:
            dt.make_mesh((4, 2))
            out["too_many"] = ""
        except ValueError as err:
            out["too_many"] = str(err)
        print(json.dumps(out))
        """
    )
    for activation in ("topk", "batchtopk", "jumprelu"):
        for mesh in ("4x1", "1x4", "2x2"):
            case = result[f"{activation}-{mesh}"]
            assert case["worst"] < 1e-5, (activation, mesh, case["worst"])
            assert case["since_equal"] and case["l0_equal"], (activation, mesh)
            specs = case["specs"]
            assert specs["W_enc"] == "P(None, 'model')", specs
            assert specs["W_dec"] == "P('model', None)", specs
            assert specs["b_enc"] == specs["since_fired"] == "P('model',)"
            assert specs["b_dec"] == "P()"
            if activation == "jumprelu":
                assert specs["threshold"] == "P('model',)"
    assert "batch_size 64 does not divide by the 3 devices" in result["bad_batch"]
    assert "a 4x2 mesh needs 8 devices; JAX sees 4" in result["too_many"]


def test_a_run_stopped_on_one_mesh_resumes_on_another(tmp_path):
    result = run_on_four_devices(
        f"""
        import json, sys
        import numpy as np
        sys.path.insert(0, "scripts")
        sys.path.insert(0, "tests")
        import train_sae
        from saecommon.dictionary import load_dictionary
        from test_dict_run import make_cache

        root = {str(tmp_path)!r}
        make_cache(root + "/acts")
        flags = ["--cache", root + "/acts", "--d-sae", "48", "--k", "4",
                 "--batch-size", "64", "--eval-tokens", "128", "--log-every", "4",
                 "--checkpoint-every", "4", "--learning-rate", "0.003",
                 "--aux-k", "8", "--dead-tokens", "256", "--warmup-steps", "0",
                 "--decay-steps", "0", "--activation", "batchtopk", "--quiet"]
        codes = [
            train_sae.main([*flags, "--out", root + "/whole", "--steps", "12",
                            "--mesh", "1x1"]),
            train_sae.main([*flags, "--out", root + "/cut", "--steps", "6",
                            "--mesh", "2x2"]),
            train_sae.main(["--out", root + "/cut", "--resume", "--steps", "12",
                            "--mesh", "4x1", "--quiet"]),
            train_sae.main([*flags, "--out", root + "/torch", "--steps", "2",
                            "--mesh", "2x2", "--framework", "torch"]),
        ]
        a, _ = load_dictionary(root + "/whole/model.safetensors")
        b, _ = load_dictionary(root + "/cut/model.safetensors")
        worst = max(float(np.max(np.abs(a[k] - b[k])) / max(np.max(np.abs(a[k])), 1e-12))
                    for k in a)
        summary = json.load(open(root + "/cut/summary.json"))
        print(json.dumps({{"codes": codes, "worst": worst, "steps": summary["steps"]}}))
        """
    )
    assert result["codes"] == [0, 0, 0, 2]  # torch has no --mesh: one error
    assert result["steps"] == 12
    assert result["worst"] < 1e-5, result["worst"]


def test_the_devices_benchmark_prints_a_row_per_mesh(capsys):
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import bench_devices

    tiny = [
        "--steps",
        "1",
        "--d-in",
        "16",
        "--d-sae",
        "64",
        "--k",
        "4",
        "--batch",
        "64",
    ]
    assert bench_devices.main(tiny) == 0
    rows = [
        json.loads(line)
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("{")
    ]
    assert [(r["devices"], r["mesh"]) for r in rows] == [
        (1, "-"), (1, "1x1"), (2, "2x1"), (2, "1x2"), (4, "4x1"), (4, "1x4"), (4, "2x2"),
    ]  # fmt: skip
    assert all(r["tokens_per_s"] > 0 for r in rows) and rows[0]["vs_one_device"] == 1


def test_classic_models_train_data_parallel_to_one_devices_weights(tmp_path):
    """An MLP with top-k, lifetime top-k (over the global batch) and KL trained by
    ``train.py --devices 4`` for 2 epochs, and 3 steps of the fullconv model's
    step on its minibatch split 4 ways, end at the weights of one device."""
    result = run_on_four_devices(
        f"""
        import json, pathlib, sys
        import jax, jax.numpy as jnp
        import numpy as np
        from jax.sharding import NamedSharding, PartitionSpec
        from jaxsae.cpu_kernels import for_partitioner
        from jaxsae.training import (TrainState, init_params, make_mesh,
                                     make_optimizer, make_train_step, train)
        from saecommon.checkpoint import read_checkpoint
        from saecommon.config import SAEConfig
        from saecommon.data import PreparedData
        from saecommon.train_config import RunConfig, TrainConfig

        rng = np.random.default_rng(0)

        def data(n, dim):
            x = rng.random((n, dim)).astype(np.float32)
            y = rng.integers(0, 3, n)
            return PreparedData(x, y, x[:32], y[:32], x[:32], y[:32], (0.0, 1.0),
                                (1, dim), None, True)

        def worst(a, b):
            return max(float(np.max(np.abs(a[k] - b[k])) / max(np.max(np.abs(a[k])), 1e-12))
                       for k in a)

        out = {{}}
        root = {str(tmp_path)!r}
        sys.path[:0] = ["scripts", "tests"]
        import train as train_script
        from test_evaluation import write_idx_dataset

        write_idx_dataset(pathlib.Path(root) / "data")  # 4x4 images
        flags = ["--dataset", root + "/data", "--input-dim", "16", "--hidden-dims",
                 "12", "--activation", "relu", "--code-activation", "sigmoid",
                 "--topk", "4", "--lifetime-k", "6", "--penalty", "kl",
                 "--penalty-weight", "0.1", "--epochs", "2", "--batch-size", "16",
                 "--seed", "3", "--quiet"]
        codes = [train_script.main([*flags, "--out", root + "/one", "--devices", "1"]),
                 train_script.main([*flags, "--out", root + "/all"]),
                 train_script.main([*flags, "--out", root + "/four", "--devices", "4"]),
                 train_script.main([*flags, "--out", root + "/t", "--devices", "2",
                                    "--framework", "torch"])]
        one, _ = read_checkpoint(root + "/one/model.safetensors")
        four, _ = read_checkpoint(root + "/four/model.safetensors")
        every, _ = read_checkpoint(root + "/all/model.safetensors")
        out["mlp"] = {{"4x1": worst(one, four)}}
        out["all_is_four"] = worst(four, every) == 0
        out["codes"] = codes
        mlp = SAEConfig(input_dim=16, hidden_dims=(12,), activation="relu",
                        code_activation="sigmoid", topk=4, lifetime_k=6, penalty="kl",
                        penalty_weight=0.1)
        prepared = data(128, 16)

        conv = SAEConfig(architecture="fullconv", penalty="l1", penalty_weight=1e-3,
                         l1_layers="hidden", loss="bce")
        tcfg = TrainConfig(batch_size=16)
        optimizer = make_optimizer(tcfg, 3)
        step = make_train_step(conv, tcfg, optimizer)
        x = rng.random((3, 16, 784)).astype(np.float32)
        grid = make_mesh((4, 1))
        split = NamedSharding(grid, PartitionSpec("data", None))
        ends = {{}}
        for sharded in (False, True):
            params = init_params(conv, jax.random.key(0))
            state = TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))
            if sharded:
                state = jax.device_put(state, NamedSharding(grid, PartitionSpec()))
            fn = jax.jit(step)
            with for_partitioner():
                for s in range(3):
                    batch = jax.device_put(x[s], split) if sharded else jnp.asarray(x[s])
                    state, _ = fn(state, batch, jax.random.key(s))
            ends[sharded] = jax.tree.map(np.asarray, state.params)
        flat = {{f"{{m}}/{{leaf}}": ends[False][m][leaf] for m in ends[False]
                 for leaf in ends[False][m]}}
        flat_mesh = {{f"{{m}}/{{leaf}}": ends[True][m][leaf] for m in ends[True]
                      for leaf in ends[True][m]}}
        out["fullconv"] = {{"4x1": worst(flat, flat_mesh)}}
        for batch, mesh, key in ((18, (4, 1), "bad"), (16, (2, 2), "bad2")):
            try:
                train(RunConfig(mlp, TrainConfig(batch_size=batch)),
                      {str(tmp_path)!r} + "/" + key, data=prepared, mesh=mesh)
            except ValueError as err:
                out[key] = str(err)
        print(json.dumps(out))
        """
    )
    assert set(result["mlp"]) == set(result["fullconv"]) == {"4x1"}
    for name in ("mlp", "fullconv"):
        for mesh, worst in result[name].items():
            assert worst < 1e-5, (name, mesh, worst)
    assert "batch_size 18 does not divide by the 4 devices" in result["bad"]
    assert "the classic autoencoders train data parallel only" in result["bad2"]
    assert result["codes"] == [0, 0, 0, 2]  # train.py --devices: jax only
    assert result["all_is_four"]  # the default: every local device

"""Dictionary SAEs against numbers worked out by hand or in numpy, in both packages
(``dfw`` runs each test against jaxsae's and torchsae's dictionary module)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxsae import dictionary as jd
from saecommon.checkpoint import CheckpointError
from saecommon.config import ConfigError
from saecommon.dictionary import (
    geometric_median,
    init_state_dict,
    input_scale,
    load_dictionary,
    save_dictionary,
)
from saecommon.dictionary_config import DictConfig, DictTrainConfig
from saecommon.metrics import ReconStats
from saecommon.schedules import learning_rate, sparsity_coefficient
from torchsae import dictionary as td


@dataclasses.dataclass(frozen=True)
class DFw:
    name: str
    mod: object
    asarray: object
    numpy: object

    def grads(self, f, *args):
        """Gradients of scalar f(*args) w.r.t. every arg (numpy in, numpy out)."""
        if self.name == "jax":
            g = jax.grad(f, argnums=tuple(range(len(args))))(
                *(jnp.asarray(a) for a in args)
            )
            return [np.asarray(v) for v in g]
        ts = [torch.tensor(np.asarray(a)).requires_grad_() for a in args]
        f(*ts).backward()
        return [t.grad.numpy() for t in ts]


@pytest.fixture(params=["jax", "torch"])
def dfw(request):
    if request.param == "jax":
        with jax.enable_x64(True):
            yield DFw("jax", jd, jnp.asarray, np.asarray)
    else:
        yield DFw(
            "torch",
            td,
            lambda a: torch.tensor(np.asarray(a)),
            lambda t: t.detach().numpy(),
        )


# --------------------------------------------------------------------------- JumpReLU


PRE = np.array([[0.5, 0.1015, 0.2, -0.3], [0.0996, 0.3, 0.1, 0.6]])
THETA = np.array([0.1, 0.1, 0.2, 0.4])
EPS = 0.01
G = np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])


def test_jumprelu_forward_and_pseudo_gradients_by_hand(dfw):
    out = dfw.numpy(dfw.mod.jumprelu(dfw.asarray(PRE), dfw.asarray(THETA), EPS))
    # strictly above theta: 0.2 == theta[2] is dropped
    np.testing.assert_array_equal(out, [[0.5, 0.1015, 0, 0], [0, 0.3, 0, 0.6]])
    d_pre, d_theta = dfw.grads(
        lambda p, t: (dfw.mod.jumprelu(p, t, EPS) * dfw.asarray(G)).sum(), PRE, THETA
    )
    np.testing.assert_array_equal(d_pre, [[1, 2, 0, 0], [0, 6, 0, 8]])
    # |pre - theta| < eps / 2 = 0.005: (0,1) 0.0015 yes, (1,0) -0.0004 yes, (0,2) 0 yes,
    # (1,2) -0.1 no. d theta_j = sum_t -(theta_j / eps) * g_tj over the window.
    np.testing.assert_allclose(
        d_theta, [-(0.1 / EPS) * 5, -(0.1 / EPS) * 2, -(0.2 / EPS) * 3, 0], rtol=1e-12
    )


def test_l0_step_pseudo_gradient_is_taken_on_the_pre_activation(dfw):
    out = dfw.numpy(dfw.mod.step(dfw.asarray(PRE), dfw.asarray(THETA), EPS))
    np.testing.assert_array_equal(out, [[1, 1, 0, 0], [0, 1, 0, 1]])
    d_pre, d_theta = dfw.grads(
        lambda p, t: (dfw.mod.step(p, t, EPS) * dfw.asarray(G)).sum(), PRE, THETA
    )
    np.testing.assert_array_equal(d_pre, np.zeros_like(PRE))
    # (1,0) = 0.0996 is below theta: a step on the JumpReLU output (0 there) would miss
    # it; on the pre-activation it is inside the window.
    np.testing.assert_allclose(d_theta, [-5 / EPS, -2 / EPS, -3 / EPS, 0], rtol=1e-12)


# --------------------------------------------------------------------------- BatchTopK


def test_batchtopk_keeps_k_times_tokens_over_the_batch_ties_to_lower_flat_index(dfw):
    acts = np.array(
        [
            [0.9, 0.0, 0.5, 0.5],
            [0.1, 0.7, 0.5, 0.0],
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    # k=2, 3 tokens: 6 kept. Above 0.5: 0.9, 0.7; the four 0.5s... there are three 0.5s
    # at flat 2, 3, 6 and then 0.1: 0.9, 0.7, 0.5, 0.5, 0.5, 0.1 -> exactly 6 kept.
    mask = dfw.numpy(dfw.mod.batchtopk_mask(dfw.asarray(acts), 2))
    expected = np.array([[1, 0, 1, 1], [1, 1, 1, 0], [0, 0, 0, 0]], bool)
    np.testing.assert_array_equal(mask, expected)
    # k=1: 3 kept, 0.9, 0.7, then the first 0.5 (flat index 2)
    mask = dfw.numpy(dfw.mod.batchtopk_mask(dfw.asarray(acts), 1))
    expected = np.zeros_like(acts, bool)
    expected[0, 0] = expected[1, 1] = expected[0, 2] = True
    np.testing.assert_array_equal(mask, expected)


def test_batch_threshold_estimate_by_hand(dfw):
    t = dfw.asarray(np.float64(0.0))
    t = dfw.mod.update_threshold(t, dfw.asarray(np.float64(0.4)), 0.9)
    assert float(t) == 0.4  # the first estimate sets it
    t = dfw.mod.update_threshold(t, dfw.asarray(np.float64(0.2)), 0.9)
    assert float(t) == pytest.approx(0.9 * 0.4 + 0.1 * 0.2, abs=1e-15)
    t2 = dfw.mod.update_threshold(t, dfw.asarray(np.float64(np.inf)), 0.9)
    assert float(t2) == float(t)  # nothing kept: unchanged


def test_batchtopk_min_kept_and_inference_threshold(dfw):
    config = DictConfig(
        d_in=3, d_sae=4, activation="batchtopk", k=1, subtract_b_dec=False
    )
    train = DictTrainConfig(b_dec_init="zeros")
    sd = {
        "W_enc": np.eye(3, 4),
        "b_enc": np.zeros(4),
        "W_dec": np.eye(4, 3),
        "b_dec": np.zeros(3),
        "threshold": np.array(0.25),
    }
    params, threshold = dfw.mod.params_from_state_dict(sd, config)
    x = np.array([[0.3, 0.2, 0.0], [0.1, 0.0, 0.0]])
    _, terms = dfw.mod.loss_terms(
        params, dfw.asarray(x), dfw.asarray(np.zeros(4, bool)), 0.0, config, train
    )
    # 2 tokens x k=1: keeps 0.3 and 0.2 (both on token 0); the smallest kept is 0.2
    assert float(dfw.numpy(terms["min_kept"])) == pytest.approx(0.2)
    np.testing.assert_array_equal(
        dfw.numpy(terms["mask"]), [[1, 1, 0, 0], [0, 0, 0, 0]]
    )
    # inference: each token on its own against the threshold 0.25 (strictly above)
    z = dfw.numpy(dfw.mod.encode(params, dfw.asarray(x), config, threshold))
    np.testing.assert_array_equal(z, [[0.3, 0, 0, 0], [0, 0, 0, 0]])


# --------------------------------------------------------------------------- Matryoshka


def test_matryoshka_loss_sums_the_prefix_reconstructions(dfw):
    rng = np.random.default_rng(0)
    config = DictConfig(
        d_in=5, d_sae=8, activation="matryoshka", k=3, matryoshka_widths=(2, 5)
    )
    assert config.matryoshka_widths == (2, 5, 8)
    train = DictTrainConfig(b_dec_init="zeros")
    sd = init_state_dict(config, train)
    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    sd["b_dec"] = rng.normal(size=5)
    x = rng.normal(size=(6, 5))
    params, _ = dfw.mod.params_from_state_dict(sd, config)
    _, terms = dfw.mod.loss_terms(
        params, dfw.asarray(x), dfw.asarray(np.zeros(8, bool)), 0.0, config, train
    )
    # numpy: batchtopk over relu(pre), then one reconstruction per prefix
    acts = np.maximum((x - sd["b_dec"]) @ sd["W_enc"] + sd["b_enc"], 0)
    kth = np.sort(acts.ravel())[::-1][3 * 6 - 1]
    z = np.where(acts >= kth, acts, 0)  # no ties in this random case
    assert (z != 0).sum() == 18
    expected = sum(
        np.sum((z[:, :m] @ sd["W_dec"][:m] + sd["b_dec"] - x) ** 2) / 6
        for m in (2, 5, 8)
    )
    assert float(dfw.numpy(terms["recon"])) == pytest.approx(expected, rel=1e-12)


# --------------------------------------------------------------------------- AuxK


def test_auxk_selects_the_largest_dead_latents_and_its_loss_by_hand(dfw):
    acts = np.array([[0.5, 0.9, 0.3, 0.3, 0.0], [0.2, 0.1, 0.0, 0.8, 0.4]])
    dead = np.array([True, False, True, True, False])
    mask = dfw.numpy(dfw.mod.aux_mask(dfw.asarray(acts), dfw.asarray(dead), 2))
    # token 0: dead values 0.5, 0.3, 0.3 -> 0.5 and the first 0.3 (latent 2)
    # token 1: dead values 0.2, 0.0, 0.8 -> 0.8 and 0.2
    np.testing.assert_array_equal(mask, [[1, 0, 1, 0, 0], [1, 0, 0, 1, 0]])
    mask = dfw.numpy(dfw.mod.aux_mask(dfw.asarray(acts), dfw.asarray(dead), 4))
    np.testing.assert_array_equal(mask[0], dead)  # k_aux > dead: all dead latents


def test_auxk_loss_value_by_hand(dfw):
    rng = np.random.default_rng(1)
    config = DictConfig(d_in=4, d_sae=6, activation="topk", k=2, subtract_b_dec=False)
    sd = {
        "W_enc": rng.normal(size=(4, 6)),
        "b_enc": rng.normal(size=6) * 0.1,
        "W_dec": rng.normal(size=(6, 4)),
        "b_dec": rng.normal(size=4) * 0.1,
    }
    x = rng.normal(size=(5, 4))
    dead = np.array([True, False, True, False, True, True])
    acts = np.maximum(x @ sd["W_enc"] + sd["b_enc"], 0)
    order = np.argsort(-acts, axis=1, kind="stable")
    z = np.zeros_like(acts)
    np.put_along_axis(z, order[:, :2], np.take_along_axis(acts, order[:, :2], 1), 1)
    x_hat = z @ sd["W_dec"] + sd["b_dec"]
    masked = np.where(dead, acts, -np.inf)
    aux_order = np.argsort(-masked, axis=1, kind="stable")[:, :3]
    za = np.zeros_like(acts)
    np.put_along_axis(za, aux_order, np.take_along_axis(acts, aux_order, 1), 1)
    e = x - x_hat
    err = np.sum((za @ sd["W_dec"] - e) ** 2)
    for norm, denom in [
        ("x_variance", np.sum((x - x.mean(0)) ** 2)),
        ("residual_variance", np.sum((e - e.mean(0)) ** 2)),
        ("none", 5.0),
    ]:
        train = DictTrainConfig(aux_k=3, aux_normalization=norm, b_dec_init="zeros")
        params, _ = dfw.mod.params_from_state_dict(sd, config)
        _, terms = dfw.mod.loss_terms(
            params, dfw.asarray(x), dfw.asarray(dead), 0.0, config, train
        )
        # scale min(4 dead / 3, 1) = 1
        assert float(dfw.numpy(terms["aux"])) == pytest.approx(
            err / denom, rel=1e-10
        ), norm
    # 2 dead of k_aux 3: scaled by 2/3
    dead2 = np.array([True, False, False, False, True, False])
    train = DictTrainConfig(aux_k=3, aux_normalization="none", b_dec_init="zeros")
    _, terms = dfw.mod.loss_terms(
        params, dfw.asarray(x), dfw.asarray(dead2), 0.0, config, train
    )
    za2 = np.where(dead2, acts, 0)  # both dead latents, whatever their value
    err2 = np.sum((za2 @ sd["W_dec"] - e) ** 2) / 5
    assert float(dfw.numpy(terms["aux"])) == pytest.approx(2 / 3 * err2, rel=1e-10)


# --------------------------------------------------------------------------- TopK's sparse path


def test_topk_sparse_backward_equals_dense_autodiff(dfw):
    rng = np.random.default_rng(2)
    config = DictConfig(d_in=6, d_sae=20, activation="topk", k=3)
    train = DictTrainConfig(b_dec_init="zeros")
    names = ("W_enc", "b_enc", "W_dec", "b_dec")
    sd = {
        "W_enc": rng.normal(size=(6, 20)),
        "b_enc": rng.normal(size=20) * 0.1,
        "W_dec": rng.normal(size=(20, 6)),
        "b_dec": rng.normal(size=6),
    }
    x = rng.normal(size=(9, 6))
    dead = np.zeros(20, bool)

    def sparse(we, be, wd, bd):
        p = dict(zip(names, (we, be, wd, bd)))
        return dfw.mod.loss_terms(
            p, dfw.asarray(x), dfw.asarray(dead), 0.0, config, train
        )[0]

    acts = np.maximum((x - sd["b_dec"]) @ sd["W_enc"] + sd["b_enc"], 0)
    keep = np.argsort(-acts, axis=1)[:, :3]
    mask = np.zeros_like(acts, bool)
    np.put_along_axis(mask, keep, True, 1)

    def dense(we, be, wd, bd):
        pre = (dfw.asarray(x) - bd) @ we + be
        z = pre * dfw.asarray(mask.astype(np.float64))
        return (((z @ wd + bd) - dfw.asarray(x)) ** 2).sum() / 9

    got = dfw.grads(sparse, *(sd[k] for k in names))
    want = dfw.grads(dense, *(sd[k] for k in names))
    for name, a, b in zip(names, got, want):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=name)


def test_relu_l1_gradients_match_finite_differences(dfw):
    rng = np.random.default_rng(4)
    config = DictConfig(d_in=3, d_sae=5, activation="relu")
    train = DictTrainConfig(l1_decoder_norm=True, normalize_decoder=False)
    sd = {
        "W_enc": rng.normal(size=(3, 5)),
        "b_enc": rng.normal(size=5) * 0.1,
        "W_dec": rng.normal(size=(5, 3)),
        "b_dec": rng.normal(size=3),
    }
    x = rng.normal(size=(4, 3))
    names = list(sd)

    def loss(*vals):
        p = dict(zip(names, vals))
        return dfw.mod.loss_terms(
            p, dfw.asarray(x), dfw.asarray(np.zeros(5, bool)), 0.3, config, train
        )[0]

    grads = dfw.grads(loss, *sd.values())
    h = 1e-6
    for name, g in zip(names, grads):
        for i in np.ndindex(sd[name].shape):
            up = {k: v.copy() for k, v in sd.items()}
            down = {k: v.copy() for k, v in sd.items()}
            up[name][i] += h
            down[name][i] -= h
            fd = (
                float(loss(*map(dfw.asarray, up.values())))
                - float(loss(*map(dfw.asarray, down.values())))
            ) / (2 * h)
            assert g[i] == pytest.approx(fd, rel=1e-5, abs=1e-7), (name, i)


# --------------------------------------------------------------------------- decoder rule


def test_decoder_rows_stay_unit_and_the_parallel_gradient_is_removed(dfw):
    rng = np.random.default_rng(5)
    w = rng.normal(size=(7, 4))
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    g = rng.normal(size=(7, 4))
    out = dfw.numpy(dfw.mod.remove_parallel_component(dfw.asarray(g), dfw.asarray(w)))
    np.testing.assert_allclose(np.sum(out * w, axis=1), 0, atol=1e-14)
    np.testing.assert_allclose(out, g - np.sum(g * w, 1, keepdims=True) * w, rtol=1e-12)
    config = DictConfig(d_in=4, d_sae=7, activation="topk", k=2)
    train = DictTrainConfig(batch_size=5, learning_rate=0.1, b_dec_init="zeros")
    sd = init_state_dict(config, train)
    state = dfw.mod.init_state(sd, config, train)
    stepper = dfw.mod.make_train_step(config, train)
    x = rng.normal(size=(5, 4)).astype(np.float32)
    state, metrics = stepper(state, dfw.asarray(x), dfw.mod.Coefficients(0.1, 0.0))
    w_dec = dfw.mod.to_state_dict(state.params, state.threshold, config)["W_dec"]
    np.testing.assert_allclose(np.linalg.norm(w_dec, axis=1), 1, rtol=1e-6)
    assert not np.allclose(w_dec, sd["W_dec"])


# --------------------------------------------------------------------------- framework-neutral


def test_geometric_median():
    # 1-D: the median; a far outlier does not move it
    pts = np.array([[0.0], [1.0], [2.0], [3.0], [100.0]])
    assert geometric_median(pts, max_iter=2000, tol=1e-12)[0] == pytest.approx(
        2, abs=1e-4
    )
    # equilateral triangle: its centre (the Fermat point)
    tri = np.array([[0, 0], [1, 0], [0.5, np.sqrt(3) / 2]])
    np.testing.assert_allclose(
        geometric_median(tri, tol=1e-12), [0.5, np.sqrt(3) / 6], atol=1e-6
    )
    # it minimises the sum of distances: no nearby point does better
    rng = np.random.default_rng(0)
    cloud = rng.standard_cauchy((200, 3))
    m = geometric_median(cloud, tol=1e-12, max_iter=1000)
    cost = lambda y: np.linalg.norm(cloud - y, axis=1).sum()  # noqa: E731
    for d in np.eye(3):
        assert cost(m) <= cost(m + 1e-3 * d) and cost(m) <= cost(m - 1e-3 * d)


def test_input_scale_and_initialisation():
    rng = np.random.default_rng(0)
    sample = rng.normal(size=(100, 8)) * 3
    s = input_scale(sample, "d_in")
    assert np.mean(np.sum((s * sample) ** 2, axis=1)) == pytest.approx(8)
    s = input_scale(sample, "unit")
    assert np.mean(np.sum((s * sample) ** 2, axis=1)) == pytest.approx(1)
    assert input_scale(sample, "none") == 1.0
    config = DictConfig(d_in=8, d_sae=16, activation="jumprelu")
    sd = init_state_dict(config, DictTrainConfig(threshold_init=0.01, seed=3), sample)
    np.testing.assert_allclose(np.linalg.norm(sd["W_dec"], axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(sd["W_enc"], 0.577 * sd["W_dec"].T, rtol=1e-6)
    np.testing.assert_allclose(sd["b_dec"], geometric_median(sample), rtol=1e-6)
    np.testing.assert_array_equal(sd["threshold"], np.full(16, 0.01, np.float32))
    again = init_state_dict(
        config, DictTrainConfig(threshold_init=0.01, seed=3), sample
    )
    np.testing.assert_array_equal(again["W_dec"], sd["W_dec"])


def test_schedules_by_hand():
    train = DictTrainConfig(steps=10, learning_rate=1.0, warmup_steps=2, decay_steps=4)
    lrs = [learning_rate(train, s) for s in range(10)]
    assert lrs == pytest.approx([0.5, 1, 1, 1, 1, 1, 1.0, 0.75, 0.5, 0.25])
    assert [sparsity_coefficient(2.0, s, 4) for s in range(5)] == [0.5, 1, 1.5, 2, 2]


def test_recon_stats_merge_and_formulas():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 4)) + 1
    x_hat = x + rng.normal(size=(50, 4)) * 0.1
    whole = ReconStats.of(x, x_hat)
    merged = ReconStats.of(x[:20], x_hat[:20]).merge(ReconStats.of(x[20:], x_hat[20:]))
    fvu = np.sum((x - x_hat) ** 2) / np.sum((x - x.mean(0)) ** 2)
    assert whole.fvu == pytest.approx(fvu) and merged.fvu == pytest.approx(fvu)
    cos = np.mean(
        np.sum(x * x_hat, 1) / np.linalg.norm(x, axis=1) / np.linalg.norm(x_hat, axis=1)
    )
    assert merged.cosine == pytest.approx(cos)
    assert merged.relative_bias == pytest.approx(np.sum(x_hat**2) / np.sum(x * x_hat))
    assert ReconStats.of(x, 0.5 * x).relative_bias == pytest.approx(0.5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(activation="topk", k=0), "k must be >= 1"),
        (dict(activation="topk", k=65, d_sae=64), "k=65 is larger than the dictionary"),
        (dict(activation="topk", k=None), "needs k"),
        (
            dict(activation="matryoshka", k=2, matryoshka_widths=(8, 8)),
            "must increase strictly",
        ),
        (
            dict(activation="matryoshka", k=2, d_sae=16, matryoshka_widths=(8, 32)),
            "exceed the dictionary",
        ),
        (dict(activation="relu", matryoshka_widths=(4,)), "matryoshka only"),
        (dict(activation="gated"), "unknown activation"),
    ],
)
def test_bad_model_configs_get_one_clear_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        DictConfig(**kwargs)


def test_bad_training_configs_get_one_clear_error():
    with pytest.raises(ConfigError, match="aux_k needs a top-k rule"):
        DictTrainConfig(aux_k=4).check_model(DictConfig(activation="relu"))
    with pytest.raises(ConfigError, match="aux_k=5000 is larger"):
        DictTrainConfig(aux_k=5000).check_model(DictConfig())
    with pytest.raises(ConfigError, match="exceed steps"):
        DictTrainConfig(steps=10, warmup_steps=8, decay_steps=4)
    with pytest.raises(ConfigError, match="unknown aux_normalization"):
        DictTrainConfig(aux_normalization="openai")


def test_checkpoint_round_trip_and_bad_thresholds(tmp_path):
    config = DictConfig(d_in=4, d_sae=6, activation="jumprelu")
    sd = init_state_dict(config, DictTrainConfig(b_dec_init="zeros"))
    path = tmp_path / "sae.safetensors"
    save_dictionary(path, sd, config)
    got, cfg = load_dictionary(path)
    assert cfg == config
    for k in sd:
        np.testing.assert_array_equal(got[k], sd[k])
    from safetensors.numpy import save_file

    for bad, what in [(np.nan, "NaN or negative"), (-0.5, "NaN or negative")]:
        broken = dict(sd, threshold=sd["threshold"].copy())
        broken["threshold"][2] = bad
        meta = {
            "format": "sae-checkpoint",
            "format_version": "1",
            "kind": "dictionary",
            "config": config.to_json(),
        }
        save_file(broken, str(path), metadata=meta)
        with pytest.raises(CheckpointError, match=f"{what}.*first at latent 2"):
            load_dictionary(path)
    wrong = dict(sd)
    del wrong["threshold"]
    save_file(wrong, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match=r"missing threshold \(6,\)"):
        load_dictionary(path)


BF16_TOLERANCE = 2e-2
"""Relative difference allowed between a bfloat16 step's loss and float32's (bfloat16
keeps 8 bits of mantissa: ~4e-3 per rounding, a few roundings per product)."""


@pytest.mark.parametrize("activation", ["jumprelu", "topk", "batchtopk"])
def test_bfloat16_compute_keeps_float32_weights_loss_and_threshold(activation):
    from jaxsae import dictionary_training as jt
    from torchsae import dictionary_training as tt

    rng = np.random.default_rng(0)
    data = (rng.exponential(1, (512, 24)) @ rng.normal(size=(24, 16))).astype(
        np.float32
    )
    config = DictConfig(d_in=16, d_sae=32, activation=activation, k=4)
    train = DictTrainConfig(
        batch_size=64, learning_rate=1e-3, b_dec_init="mean", threshold_init=0.5,
        bandwidth=0.5, precision="bfloat16", input_normalization="d_in",
    )  # fmt: skip
    f32 = train.replace(precision="float32")
    sd = init_state_dict(config, train, data[:64])
    x = data[:64]
    dead = np.zeros(32, bool)
    with jax.enable_x64(False):
        for mod, asarray in ((jd, jnp.asarray), (td, torch.from_numpy)):
            losses = {}
            for t in (train, f32):
                params, _ = mod.params_from_state_dict(sd, config)
                loss, terms = mod.loss_terms(
                    params, asarray(x), asarray(dead), 0.01, config, t
                )
                losses[t.precision] = float(
                    np.asarray(loss.detach() if hasattr(loss, "detach") else loss)
                )
                assert str(terms["recon"].dtype).endswith("float32")
            assert losses["bfloat16"] == pytest.approx(
                losses["float32"], rel=BF16_TOLERANCE
            )
        results = {}
        for name, mod in (("jax", jt), ("torch", tt)):
            out, _ = mod.train_array(config, train, data, steps=8, state_dict_init=sd)
            for key, value in out.items():
                assert value.dtype == np.float32, (name, key)
                assert np.isfinite(value).all(), (name, key)
            results[name] = out
    if activation == "jumprelu":
        moved = np.abs(results["jax"]["threshold"] - sd["threshold"]).max()
        assert moved > 0  # theta trains (float32) under bfloat16 compute
    for key in results["jax"]:
        a, b = results["jax"][key], results["torch"][key]
        assert np.abs(a - b).max() <= BF16_TOLERANCE * max(1.0, np.abs(b).max()), key


def test_a_raw_threshold_is_clamped_at_zero_after_each_step(dfw):
    """A raw theta that the L0 penalty's pull and a large step would take below 0 stays
    at 0 (a negative threshold cannot be saved); log theta cannot go below 0."""
    config = DictConfig(d_in=4, d_sae=6, activation="jumprelu", threshold_param="raw")
    train = DictTrainConfig(
        batch_size=8, b_dec_init="zeros", threshold_init=0.01, bandwidth=1.0,
        learning_rate=1.0,
    )  # fmt: skip
    sd = {k: v.astype(np.float64) for k, v in init_state_dict(config, train).items()}
    state = dfw.mod.init_state(sd, config, train)
    stepper = dfw.mod.make_train_step(config, train)
    x = np.random.default_rng(0).normal(size=(8, 4))
    # a negative L0 coefficient pulls theta down: a step of lr 1 overshoots 0
    state, _ = stepper(state, dfw.asarray(x), dfw.mod.Coefficients(1.0, -1.0))
    theta = dfw.mod.to_state_dict(state.params, state.threshold, config)["threshold"]
    assert theta.min() == 0.0 and (theta >= 0).all()

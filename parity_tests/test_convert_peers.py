"""Conversions against the peers' own code: SAELens 6, EleutherAI's sparsify and
dictionary_learning load what saecommon.foreign writes, and jaxsae/torchsae load what
the peers save, and both sides compute the same latents z and reconstructions x_hat
on the same activations.

1. Ours -> theirs: a dictionary SAE of every architecture each format holds (both
   b_dec conventions, and an input scale != 1 per peer) is written (saecommon.foreign.
   write, or jaxsae's/torchsae's save_foreign) and loaded with the peer's own loader;
   the peer's encode/decode is compared with jaxsae's and torchsae's forward_numpy on
   the original model.
2. Theirs -> ours: a randomly initialised peer model, its biases and thresholds
   perturbed, is saved with the peer's own save function and loaded with
   jaxsae.convert.load_foreign and torchsae.convert.load_foreign (format detected);
   their forward passes are compared with the peer's encode/decode.
3. Round trips ours -> theirs -> ours where no fold applies are bit-exact
   (np.array_equal and equal dtypes on every tensor, equal configs).

Tolerances (float32 weights and activations): every z and x_hat agrees within
RTOL = 1e-5 of the largest |value| of the tensor compared against (the measure of
saecommon.foreign.verify). The sets of active latents (z != 0) are identical: each
case first checks, in float64, that no pre-activation lies within MARGIN = 1e-5 of a
boundary (0 for ReLU and TopK, the threshold, the gap between a token's k-th and
(k+1)-th value), so rounding cannot move a latent across one.

Sizes are small (d_in 16, d_sae 64, k 4, 48 tokens); thresholds sit between two
neighbouring positive pre-activations near their median, so they cut about half of
the latents that a ReLU would keep. Each peer's tests are skipped, with the reason,
where that peer is not installed.
"""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxsae.convert
import jaxsae.dictionary
import jaxsae.dictionary_training
import torchsae.convert
import torchsae.dictionary
import torchsae.dictionary_training
from saecommon import foreign
from saecommon.dictionary import init_state_dict
from saecommon.dictionary_config import DictConfig, DictTrainConfig
from saecommon.foreign import ForeignError

D_IN, D_SAE, K, TOKENS = 16, 64, 4, 48
WIDTHS = (16, D_SAE)  # matryoshka prefixes
RTOL = 1e-5
MARGIN = 1e-5


# --------------------------------------------------------------------------- peers


def _peer(name: str, what: str):
    return pytest.importorskip(
        name, reason=f"{what} is not installed (the peers extra); its tests are skipped"
    )


@pytest.fixture(scope="module")
def sae_lens():
    return _peer("sae_lens", "SAELens (sae-lens)")


@pytest.fixture(scope="module")
def sparsify():
    return _peer("sparsify", "EleutherAI's sparsify (eai-sparsify)")


@pytest.fixture(scope="module")
def dictionary_learning():
    _peer("dictionary_learning", "dictionary_learning (dictionary-learning)")
    import dictionary_learning.dictionary
    import dictionary_learning.trainers.batch_top_k
    import dictionary_learning.trainers.matryoshka_batch_top_k
    import dictionary_learning.trainers.top_k
    import dictionary_learning.utils

    return dictionary_learning


PEERS = {
    "saelens": "sae_lens",
    "sparsify": "sparsify",
    "dictionary_learning": "dictionary_learning",
}


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy()


def saelens_forward(sae, x):
    with torch.no_grad():
        z = sae.encode(torch.from_numpy(x))
        return _np(z), _np(sae.decode(z))


def sparsify_forward(coder, x):
    with torch.no_grad():
        out = coder.encode(torch.from_numpy(x))
        z = torch.zeros(x.shape[0], coder.num_latents, dtype=out.top_acts.dtype)
        z.scatter_(-1, out.top_indices, out.top_acts)
        x_hat = coder.decode(out.top_acts, out.top_indices)
        return _np(z), _np(x_hat)


def dl_forward(ae, x):
    with torch.no_grad():
        z = ae.encode(torch.from_numpy(x))
        return _np(z), _np(ae.decode(z))


def dl_save(ae, folder, dict_class: str, **trainer):
    """dictionary_learning's own saving: the state dict as ae.pt, the trainer's
    config (dict_class, k) as config.json."""
    os.makedirs(folder, exist_ok=True)
    torch.save(ae.state_dict(), os.path.join(folder, "ae.pt"))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"trainer": {"dict_class": dict_class, **trainer}}, f)


# ----------------------------------------------------------------- checks and data


def assert_close(got, want, what: str) -> None:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    scale = max(float(np.max(np.abs(want))), 1e-12)
    err = float(np.max(np.abs(got - want))) / scale
    assert err <= RTOL, f"{what}: max |diff| is {err:.3g} of the largest |value|"


def assert_same_latents(got, want, what: str) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    differ = int(np.sum((got != 0) != (want != 0)))
    assert differ == 0, f"{what}: {differ} latents active on one side only"
    assert_close(got, want, what)


def pre_activations(state_dict, config: DictConfig, x) -> np.ndarray:
    sd = {k: np.asarray(v, np.float64) for k, v in state_dict.items()}
    xs = np.asarray(x, np.float64) * config.input_scale
    if config.subtract_b_dec:
        xs = xs - sd["b_dec"]
    return xs @ sd["W_enc"] + sd["b_enc"]


def check_margin(state_dict, config: DictConfig, x) -> None:
    """The test's precondition: no value within MARGIN of a boundary of the rule (in
    float64), so both sides must agree on every latent's activity."""
    pre = pre_activations(state_dict, config, x)
    acts = np.maximum(pre, 0)
    if config.activation == "relu":
        gaps = [np.abs(pre)]
    elif config.activation == "topk":
        top = -np.sort(-acts, axis=1)[:, : config.k + 1]
        kth, nxt = top[:, config.k - 1], top[:, config.k]
        gaps = [
            np.where(kth > 0, kth - nxt, np.inf),
            top[:, : config.k][top[:, : config.k] > 0],
        ]
    else:
        t = np.asarray(state_dict["threshold"], np.float64)
        gaps = [np.abs(pre - t)] if np.all(t > 0) else [np.abs(pre - t), np.abs(pre)]
    margin = min(float(np.min(g, initial=np.inf)) for g in gaps)
    assert margin > MARGIN, (
        f"test data: a value lies {margin:.3g} from a boundary of {config.activation}; "
        "choose another seed"
    )


def midpoint_near_median(values: np.ndarray) -> float:
    """A threshold halfway between two neighbouring positive values near their
    median: it keeps about half of them, far from every one."""
    pos = np.sort(values[values > 0])
    if pos.size < 2:
        return 0.05
    m = pos.size // 2
    return float((pos[m - 1] + pos[m]) / 2)


def per_latent_thresholds(pre: np.ndarray) -> np.ndarray:
    return np.array([midpoint_near_median(pre[:, j]) for j in range(pre.shape[1])])


def activations(seed: int, scale: float = 1.0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((TOKENS, D_IN)) / scale
    return x.astype(np.float32)


def our_model(
    activation: str, subtract_b_dec: bool, input_scale: float, x, seed: int
) -> foreign.Model:
    """Random float32 weights: decoder rows of norms in [0.5, 2], an encoder that is
    not the decoder's transpose, non-zero b_enc and b_dec, thresholds near the median
    positive pre-activation on ``x`` (per latent for jumprelu)."""
    # k only where the rule uses it (the readers leave the default elsewhere)
    uses_k = activation in ("topk", "batchtopk", "matryoshka")
    config = DictConfig(
        d_in=D_IN,
        d_sae=D_SAE,
        activation=activation,
        **({"k": K} if uses_k else {}),
        subtract_b_dec=subtract_b_dec,
        matryoshka_widths=WIDTHS if activation == "matryoshka" else (),
        input_scale=input_scale,
    )
    sd = init_state_dict(config, DictTrainConfig(seed=seed, b_dec_init="zeros"))
    rng = np.random.default_rng(seed + 1)
    sd["W_dec"] = sd["W_dec"] * rng.uniform(0.5, 2.0, (D_SAE, 1))
    sd["W_enc"] = 2 * sd["W_enc"] + 0.3 * rng.standard_normal((D_IN, D_SAE))
    sd["b_enc"] = 0.2 * rng.standard_normal(D_SAE)
    sd["b_dec"] = 0.5 * rng.standard_normal(D_IN)
    sd = {k: np.asarray(v, np.float32) for k, v in sd.items()}
    pre = pre_activations(sd, config, x)
    if activation == "jumprelu":
        sd["threshold"] = per_latent_thresholds(pre).astype(np.float32)
    elif config.has_threshold:
        sd["threshold"] = np.array(midpoint_near_median(pre), np.float32)
    check_margin(sd, config, x)
    return foreign.Model(sd, config)


def our_forwards(state_dict, config, x):
    """{package: (z, x_hat)} of jaxsae's and torchsae's forward_numpy."""
    return {
        "jaxsae": jaxsae.dictionary_training.forward_numpy(state_dict, config, x),
        "torchsae": torchsae.dictionary_training.forward_numpy(state_dict, config, x),
    }


def loaded_forwards(path, x, **kwargs):
    """{package: (z, x_hat)} of the model each package's load_foreign reads from
    ``path`` (format detected), and the config both read."""
    (params, threshold), config = jaxsae.convert.load_foreign(path, **kwargs)
    z, x_hat = jaxsae.dictionary.forward(params, jnp.asarray(x), config, threshold)
    out = {"jaxsae": (np.asarray(z), np.asarray(x_hat))}
    (tparams, tthreshold), tconfig = torchsae.convert.load_foreign(path, **kwargs)
    assert tconfig == config
    with torch.no_grad():
        z, x_hat = torchsae.dictionary.forward(
            tparams, torch.from_numpy(x), tconfig, tthreshold
        )
    out["torchsae"] = (_np(z), _np(x_hat))
    read = foreign.read(path, **kwargs)
    check_margin(read.state_dict, read.config, x)
    return out, config


def write_ours(model: foreign.Model, path, fmt: str, via: str):
    """Write ``model`` through saecommon.foreign or a package's save_foreign."""
    sd, config = model.state_dict, model.config
    if via == "foreign":
        return foreign.write(model, path, fmt)
    pkg = {"jaxsae": jaxsae, "torchsae": torchsae}[via]
    params = pkg.dictionary.params_from_state_dict(sd, config)
    return pkg.convert.save_foreign(params, config, path, fmt)


# ------------------------------------------------------------ 1. ours -> theirs

SAELENS_CLASS = {"relu": "StandardSAE", "topk": "TopKSAE"}
DL_CLASS = {
    "relu": "AutoEncoder",
    "topk": "AutoEncoderTopK",
    "batchtopk": "BatchTopKSAE",
    "matryoshka": "MatryoshkaBatchTopKSAE",
    "jumprelu": "JumpReluAutoEncoder",
}

OURS_TO_THEIRS = [
    *[
        (fmt, act, sub, 1.0)
        for fmt, acts in (
            ("saelens", ("relu", "topk", "batchtopk", "jumprelu", "matryoshka")),
            ("sparsify", ("topk",)),
            (
                "dictionary_learning",
                ("relu", "topk", "batchtopk", "matryoshka", "jumprelu"),
            ),
        )
        for act in acts
        for sub in (True, False)
    ],
    ("saelens", "jumprelu", True, 0.37),
    ("saelens", "topk", False, 2.5),
    ("sparsify", "topk", False, 2.5),
    ("dictionary_learning", "relu", False, 0.37),
    ("dictionary_learning", "matryoshka", True, 2.5),
]
WRITERS = ("foreign", "jaxsae", "torchsae")


@pytest.mark.parametrize(
    "case",
    [(*c, WRITERS[i % 3]) for i, c in enumerate(OURS_TO_THEIRS)],
    ids=[
        f"{fmt}-{act}-{'sub' if sub else 'nosub'}-scale{s:g}-{WRITERS[i % 3]}"
        for i, (fmt, act, sub, s) in enumerate(OURS_TO_THEIRS)
    ],
)
def test_ours_to_theirs(case, request, tmp_path):
    fmt, activation, subtract_b_dec, scale, via = case
    peer = request.getfixturevalue(PEERS[fmt])
    seed = 11 + OURS_TO_THEIRS.index(case[:4])
    x = activations(seed, scale)
    model = our_model(activation, subtract_b_dec, scale, x, seed)
    folder = tmp_path / fmt
    files, notes = write_ours(model, folder, fmt, via)
    assert files and all(os.path.isfile(f) for f in files)
    if scale != 1.0:
        assert any("input scale" in n for n in notes), notes

    if fmt == "saelens":
        sae = peer.SAE.load_from_disk(str(folder))
        assert type(sae).__name__ == SAELENS_CLASS.get(activation, "JumpReLUSAE")
        z_peer, x_hat_peer = saelens_forward(sae, x)
    elif fmt == "sparsify":
        coder = peer.SparseCoder.load_from_disk(folder)
        assert coder.cfg.k == K and not coder.cfg.transcode
        z_peer, x_hat_peer = sparsify_forward(coder, x)
    else:
        ae, _ = peer.utils.load_dictionary(str(folder), device="cpu")
        assert type(ae).__name__ == DL_CLASS[activation]
        z_peer, x_hat_peer = dl_forward(ae, x)

    if model.config.has_threshold:  # the threshold cuts some latents, not all
        pre = pre_activations(model.state_dict, model.config, x)
        assert 0 < np.count_nonzero(z_peer) < np.count_nonzero(pre > 0)

    expect_scale = np.ones(D_SAE)
    if fmt == "dictionary_learning" and activation == "relu":
        # AutoEncoder.from_pretrained scales decoder columns to unit norm: x_hat is
        # unchanged, each latent is multiplied by its (unscaled) decoder row's norm
        assert any("decoder rows scaled" in n for n in notes), notes
        w_dec = model.state_dict["W_dec"].astype(np.float64) / scale
        expect_scale = np.linalg.norm(w_dec, axis=1)

    for pkg, (z, x_hat) in our_forwards(model.state_dict, model.config, x).items():
        assert_same_latents(z_peer, z * expect_scale, f"z: {fmt} vs {pkg}")
        assert_close(x_hat_peer, x_hat, f"x_hat: {fmt} vs {pkg}")


# ------------------------------------------------------------ 2. theirs -> ours


def _perturbed(rng, shape, scale):
    return torch.from_numpy((scale * rng.standard_normal(shape)).astype(np.float32))


def compare_with_peer(path, x, z_peer, x_hat_peer, what, **kwargs):
    outs, config = loaded_forwards(path, x, **kwargs)
    for pkg, (z, x_hat) in outs.items():
        assert_same_latents(z, z_peer, f"z: {pkg} vs {what}")
        assert_close(x_hat, x_hat_peer, f"x_hat: {pkg} vs {what}")
    return config


@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_saelens_standard_to_ours(sae_lens, tmp_path, apply_b_dec):
    torch.manual_seed(1)
    rng = np.random.default_rng(1)
    sae = sae_lens.StandardSAE(
        sae_lens.StandardSAEConfig(
            d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=apply_b_dec
        )
    )
    with torch.no_grad():
        sae.b_enc.copy_(_perturbed(rng, D_SAE, 0.2))
        sae.b_dec.copy_(_perturbed(rng, D_IN, 0.5))
    sae.save_model(tmp_path)
    x = activations(2)
    config = compare_with_peer(
        tmp_path, x, *saelens_forward(sae, x), "SAELens standard"
    )
    assert config.activation == "relu" and config.subtract_b_dec == apply_b_dec


@pytest.mark.parametrize("rescale", [False, True])
def test_saelens_topk_to_ours(sae_lens, tmp_path, rescale):
    """With rescale_acts_by_decoder_norm SAELens selects on pre * ||W_dec|| and
    decodes z / ||W_dec||; the reader folds the norms into the encoder."""
    torch.manual_seed(3)
    rng = np.random.default_rng(3)
    sae = sae_lens.TopKSAE(
        sae_lens.TopKSAEConfig(
            d_in=D_IN,
            d_sae=D_SAE,
            k=K,
            apply_b_dec_to_input=True,
            rescale_acts_by_decoder_norm=rescale,
        )
    )
    with torch.no_grad():
        sae.b_enc.copy_(_perturbed(rng, D_SAE, 0.2))
        sae.b_dec.copy_(_perturbed(rng, D_IN, 0.5))
        norms = torch.from_numpy(rng.uniform(0.3, 3.0, (D_SAE, 1)).astype(np.float32))
        sae.W_dec.mul_(norms / sae.W_dec.norm(dim=-1, keepdim=True))
    assert not np.allclose(_np(sae.W_dec.norm(dim=-1)), 1, atol=0.1)
    sae.save_model(tmp_path)
    x = activations(4)
    # the peer's own loader too: it must read back what it saved
    peer = sae_lens.SAE.load_from_disk(str(tmp_path))
    z_peer, x_hat_peer = saelens_forward(peer, x)
    assert_same_latents(z_peer, saelens_forward(sae, x)[0], "SAELens reload")
    config = compare_with_peer(tmp_path, x, z_peer, x_hat_peer, "SAELens topk")
    assert config.activation == "topk" and config.k == K
    notes = foreign.read(tmp_path).notes
    assert any("decoder norms folded" in n for n in notes) == rescale, notes


def test_saelens_jumprelu_to_ours(sae_lens, tmp_path):
    torch.manual_seed(5)
    rng = np.random.default_rng(5)
    sae = sae_lens.JumpReLUSAE(
        sae_lens.JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=False)
    )
    with torch.no_grad():
        sae.W_enc.copy_(_perturbed(rng, (D_IN, D_SAE), 0.5))
        sae.b_enc.copy_(_perturbed(rng, D_SAE, 0.2))
        sae.b_dec.copy_(_perturbed(rng, D_IN, 0.5))
        x = activations(6)
        pre = _np(sae.process_sae_in(torch.from_numpy(x)) @ sae.W_enc + sae.b_enc)
        theta = per_latent_thresholds(pre)
        theta[:4] = -0.5  # negative: as 0 here (relu(pre) * (pre > theta) = relu(pre))
        sae.threshold.copy_(torch.from_numpy(theta))
    sae.save_model(tmp_path)
    z_peer, x_hat_peer = saelens_forward(sae, x)
    assert 0 < np.count_nonzero(z_peer) < np.count_nonzero(pre > 0)
    config = compare_with_peer(tmp_path, x, z_peer, x_hat_peer, "SAELens jumprelu")
    assert config.activation == "jumprelu" and not config.subtract_b_dec


@pytest.mark.parametrize(
    "matryoshka,k,rescale",
    [(False, K, True), (True, K, True), (False, K, False), (False, float(K), True)],
    ids=["batchtopk", "matryoshka", "batchtopk-no-rescale", "batchtopk-float-k"],
)
def test_saelens_batchtopk_training_to_ours(sae_lens, tmp_path, matryoshka, k, rescale):
    """save_model of a BatchTopK training SAE keeps architecture batchtopk (or
    matryoshka_batchtopk) and the estimated ``topk_threshold``, in units of
    pre * ||W_dec|| with rescale_acts_by_decoder_norm (the training default), of pre
    without. The peer's reference is its own inference model: save_inference_model
    (JumpReLU, norms folded) loaded with SAE.load_from_disk; both folders are read
    here. SAELens types the batch rules' k as a float (an average per token), so
    cfg.json may say 4.0."""
    torch.manual_seed(7)
    rng = np.random.default_rng(7)
    fields = dict(d_in=D_IN, d_sae=D_SAE, k=k, rescale_acts_by_decoder_norm=rescale)
    if matryoshka:
        cfg = sae_lens.MatryoshkaBatchTopKTrainingSAEConfig(
            **fields, matryoshka_widths=list(WIDTHS)
        )
        sae = sae_lens.MatryoshkaBatchTopKTrainingSAE(cfg)
    else:
        cfg = sae_lens.BatchTopKTrainingSAEConfig(**fields)
        sae = sae_lens.BatchTopKTrainingSAE(cfg)
    x = activations(8)
    with torch.no_grad():
        sae.W_enc.copy_(_perturbed(rng, (D_IN, D_SAE), 0.5))
        sae.b_enc.copy_(_perturbed(rng, D_SAE, 0.2))
        sae.b_dec.copy_(_perturbed(rng, D_IN, 0.5))
        norms = torch.from_numpy(rng.uniform(0.3, 3.0, (D_SAE, 1)).astype(np.float32))
        sae.W_dec.mul_(norms / sae.W_dec.norm(dim=-1, keepdim=True))
        _, hidden_pre = sae.encode_with_hidden_pre(torch.from_numpy(x))
        sae.topk_threshold.fill_(midpoint_near_median(_np(hidden_pre)))
    training, inference = tmp_path / "training", tmp_path / "inference"
    sae.save_model(training)
    sae.save_inference_model(inference)
    arch = "matryoshka_batchtopk" if matryoshka else "batchtopk"
    assert json.loads((training / "cfg.json").read_text())["architecture"] == arch
    peer = sae_lens.SAE.load_from_disk(str(inference))
    assert type(peer).__name__ == "JumpReLUSAE"
    z_peer, x_hat_peer = saelens_forward(peer, x)
    assert 0 < np.count_nonzero(z_peer) < np.count_nonzero(_np(hidden_pre) > 0)

    config = compare_with_peer(training, x, z_peer, x_hat_peer, f"SAELens {arch}")
    assert config.activation == ("matryoshka" if matryoshka else "batchtopk")
    assert config.k == K
    if matryoshka:
        assert config.matryoshka_widths == WIDTHS
    config = compare_with_peer(inference, x, z_peer, x_hat_peer, "SAELens inference")
    assert config.activation == "jumprelu"


def _sparsify_coder(sparsify, seed: int, transcode: bool = False):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    coder = sparsify.SparseCoder(
        D_IN, sparsify.SparseCoderConfig(num_latents=D_SAE, k=K, transcode=transcode)
    )
    with torch.no_grad():
        coder.encoder.bias.copy_(_perturbed(rng, D_SAE, 0.2))
        coder.b_dec.copy_(_perturbed(rng, D_IN, 0.5))
        coder.W_dec.copy_(_perturbed(rng, (D_SAE, D_IN), 0.3))
    return coder


@pytest.mark.parametrize("transcode", [False, True])
def test_sparsify_to_ours(sparsify, tmp_path, transcode):
    """A sparsify SAE folder (a transcoder skips the b_dec subtraction)."""
    coder = _sparsify_coder(sparsify, 9, transcode)
    coder.save_to_disk(tmp_path)
    x = activations(10)
    peer = sparsify.SparseCoder.load_from_disk(tmp_path)
    z_peer, x_hat_peer = sparsify_forward(peer, x)
    config = compare_with_peer(tmp_path, x, z_peer, x_hat_peer, "sparsify")
    assert config.activation == "topk" and config.k == K
    assert config.subtract_b_dec == (not transcode)


def test_sparsify_run_folder_to_ours(sparsify, tmp_path):
    """A run folder holds one SAE per hookpoint: hookpoint= picks one; without it
    the reader refuses, naming both."""
    names = ("layers.0.mlp", "layers.1.mlp")
    coders = {name: _sparsify_coder(sparsify, 12 + i) for i, name in enumerate(names)}
    for name, coder in coders.items():
        coder.save_to_disk(tmp_path / name)
    x = activations(14)
    for name in names:
        peer = sparsify.SparseCoder.load_many(str(tmp_path), local=True)[name]
        z_peer, x_hat_peer = sparsify_forward(peer, x)
        compare_with_peer(tmp_path, x, z_peer, x_hat_peer, name, hookpoint=name)
    for load in (jaxsae.convert.load_foreign, torchsae.convert.load_foreign):
        with pytest.raises(ForeignError) as err:
            load(tmp_path)
        assert all(name in str(err.value) for name in names), str(err.value)


def test_dictionary_learning_autoencoder_to_ours(dictionary_learning, tmp_path):
    """AutoEncoder (ReLU) with decoder columns of norms far from 1: load_dictionary
    (from_pretrained) scales them to 1 and the latents up; the reader here does the
    same. x_hat equals the unnormalised model's too."""
    dl = dictionary_learning
    torch.manual_seed(15)
    rng = np.random.default_rng(15)
    ae = dl.dictionary.AutoEncoder(D_IN, D_SAE)
    with torch.no_grad():
        ae.encoder.bias.copy_(_perturbed(rng, D_SAE, 0.05))
        ae.bias.copy_(_perturbed(rng, D_IN, 0.5))
        norms = torch.from_numpy(rng.uniform(0.05, 3.0, D_SAE).astype(np.float32))
        ae.decoder.weight.mul_(norms / ae.decoder.weight.norm(dim=0))
    dl_save(ae, tmp_path, "AutoEncoder")
    x = activations(16)
    loaded, _ = dl.utils.load_dictionary(str(tmp_path), device="cpu")
    z_peer, x_hat_peer = dl_forward(loaded, x)
    z_raw, x_hat_raw = dl_forward(ae, x)
    assert_same_latents(z_peer, z_raw * _np(norms), "from_pretrained vs saved")
    config = compare_with_peer(tmp_path, x, z_peer, x_hat_peer, "AutoEncoder")
    assert config.activation == "relu" and config.subtract_b_dec
    outs, _ = loaded_forwards(tmp_path, x)
    for pkg, (_, x_hat) in outs.items():
        assert_close(x_hat, x_hat_raw, f"x_hat: {pkg} vs unnormalised AutoEncoder")


@pytest.mark.parametrize(
    "dict_class,threshold",
    [
        ("AutoEncoderTopK", 0.3),  # the default encode ignores its threshold
        ("BatchTopKSAE", "median"),
        ("BatchTopKSAE", -1.0),  # never estimated: every positive latent is kept
        ("MatryoshkaBatchTopKSAE", "median"),
    ],
)
def test_dictionary_learning_topk_to_ours(
    dictionary_learning, tmp_path, dict_class, threshold
):
    dl = dictionary_learning
    torch.manual_seed(17)
    rng = np.random.default_rng(17)
    if dict_class == "AutoEncoderTopK":
        ae = dl.trainers.top_k.AutoEncoderTopK(D_IN, D_SAE, K)
    elif dict_class == "BatchTopKSAE":
        ae = dl.trainers.batch_top_k.BatchTopKSAE(D_IN, D_SAE, K)
    else:
        ae = dl.trainers.matryoshka_batch_top_k.MatryoshkaBatchTopKSAE(
            D_IN, D_SAE, K, group_sizes=list(np.diff((0, *WIDTHS)))
        )
    x = activations(18)
    with torch.no_grad():
        if dict_class == "MatryoshkaBatchTopKSAE":
            ae.W_enc.copy_(_perturbed(rng, (D_IN, D_SAE), 0.5))
            ae.b_enc.copy_(_perturbed(rng, D_SAE, 0.2))
        else:
            ae.encoder.weight.copy_(_perturbed(rng, (D_SAE, D_IN), 0.5))
            ae.encoder.bias.copy_(_perturbed(rng, D_SAE, 0.2))
        ae.b_dec.copy_(_perturbed(rng, D_IN, 0.5))
        acts = _np(ae.encode(torch.from_numpy(x), use_threshold=True))  # t = -1: relu
        if threshold == "median":
            threshold = midpoint_near_median(acts)
        ae.threshold.fill_(threshold)
    dl_save(ae, tmp_path, dict_class, k=K)
    loaded, _ = dl.utils.load_dictionary(str(tmp_path), device="cpu")
    z_peer, x_hat_peer = dl_forward(loaded, x)
    if dict_class == "AutoEncoderTopK":
        assert np.count_nonzero(z_peer) <= K * TOKENS
    elif threshold > 0:
        assert 0 < np.count_nonzero(z_peer) < np.count_nonzero(acts)
    else:
        assert np.count_nonzero(z_peer) == np.count_nonzero(acts)
    config = compare_with_peer(tmp_path, x, z_peer, x_hat_peer, dict_class)
    assert config.activation == foreign.dictionary_learning.CLASSES[dict_class]
    assert config.k == K
    if dict_class == "MatryoshkaBatchTopKSAE":
        assert config.matryoshka_widths == WIDTHS


def test_dictionary_learning_jumprelu_to_ours(dictionary_learning, tmp_path):
    torch.manual_seed(19)
    rng = np.random.default_rng(19)
    ae = dictionary_learning.dictionary.JumpReluAutoEncoder(D_IN, D_SAE)
    x = activations(20)
    with torch.no_grad():
        ae.W_enc.copy_(_perturbed(rng, (D_IN, D_SAE), 0.5))
        ae.b_enc.copy_(_perturbed(rng, D_SAE, 0.2))
        ae.b_dec.copy_(_perturbed(rng, D_IN, 0.5))
        pre = _np(torch.from_numpy(x) @ ae.W_enc + ae.b_enc)
        theta = per_latent_thresholds(pre)
        theta[:4] = -0.5  # negative: as 0 here
        ae.threshold.copy_(torch.from_numpy(theta))
    dl_save(ae, tmp_path, "JumpReluAutoEncoder")
    loaded, _ = dictionary_learning.utils.load_dictionary(str(tmp_path), device="cpu")
    z_peer, x_hat_peer = dl_forward(loaded, x)
    assert 0 < np.count_nonzero(z_peer) < np.count_nonzero(pre > 0)
    config = compare_with_peer(tmp_path, x, z_peer, x_hat_peer, "JumpReluAutoEncoder")
    assert config.activation == "jumprelu" and not config.subtract_b_dec


# ------------------------------------------------- 3. ours -> theirs -> ours exactly

ROUND_TRIPS = [
    ("saelens", "relu", True),
    ("saelens", "relu", False),
    ("saelens", "topk", True),
    ("saelens", "topk", False),
    ("saelens", "jumprelu", True),
    ("saelens", "jumprelu", False),
    ("sparsify", "topk", True),
    ("dictionary_learning", "topk", True),
    ("dictionary_learning", "batchtopk", True),
    ("dictionary_learning", "matryoshka", True),
    ("dictionary_learning", "jumprelu", False),
]


def peer_resave(peer, fmt: str, src, dst) -> None:
    """Load ``src`` with the peer's loader and save it with its own save function."""
    if fmt == "saelens":
        peer.SAE.load_from_disk(str(src)).save_model(dst)
    elif fmt == "sparsify":
        peer.SparseCoder.load_from_disk(src).save_to_disk(dst)
    else:
        ae, cfg = peer.utils.load_dictionary(str(src), device="cpu")
        kept = {k: v for k, v in cfg["trainer"].items() if k in ("dict_class", "k")}
        dl_save(ae, dst, **kept)


def assert_identical(got: dict, want: dict, what: str) -> None:
    assert sorted(got) == sorted(want), f"{what}: {sorted(got)} != {sorted(want)}"
    for name in want:
        a, b = np.asarray(got[name]), np.asarray(want[name])
        assert a.dtype == b.dtype and a.shape == b.shape, (
            f"{what}: {name} is {a.dtype}{a.shape}, was {b.dtype}{b.shape}"
        )
        assert np.array_equal(a, b), f"{what}: {name} changed"


@pytest.mark.parametrize(
    "fmt,activation,subtract_b_dec",
    ROUND_TRIPS,
    ids=[f"{f}-{a}-{'sub' if s else 'nosub'}" for f, a, s in ROUND_TRIPS],
)
def test_round_trip_is_exact(request, tmp_path, fmt, activation, subtract_b_dec):
    """No fold applies, so nothing may change: written by saecommon.foreign, loaded
    and saved again by the peer's own code, read back; and from each package's
    save_foreign into the other's load_foreign."""
    peer = request.getfixturevalue(PEERS[fmt])
    seed = 40 + ROUND_TRIPS.index((fmt, activation, subtract_b_dec))
    model = our_model(activation, subtract_b_dec, 1.0, activations(seed), seed)
    sd, config = model.state_dict, model.config

    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    _, notes = foreign.write(model, ours, fmt)
    assert notes == [], notes
    peer_resave(peer, fmt, ours, theirs)
    for folder in (ours, theirs):
        back = foreign.read(folder)
        assert back.config == config
        assert back.notes == (), back.notes
        assert_identical(back.state_dict, sd, f"{fmt}: {folder.name}")

    for src, dst in ((torchsae, jaxsae), (jaxsae, torchsae)):
        folder = tmp_path / src.__name__
        params = src.dictionary.params_from_state_dict(sd, config)
        _, notes = src.convert.save_foreign(params, config, folder, fmt)
        assert notes == [], notes
        (params, threshold), got_config = dst.convert.load_foreign(folder)
        assert got_config == config
        got = dst.dictionary.to_state_dict(params, threshold, got_config)
        assert_identical(got, sd, f"{fmt}: {src.__name__} -> {dst.__name__}")

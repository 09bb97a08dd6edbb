import json

import pytest

from saecommon.config import ConfigError, SAEConfig, resolve_lifetime_k


def test_json_round_trip_is_identity():
    cfg = SAEConfig(
        input_dim=20,
        hidden_dims=(16, 8),
        activation="leaky_relu",
        negative_slope=0.2,
        code_activation="sigmoid",
        tied=True,
        topk=3,
        lifetime_rate=0.25,
        penalty="kl",
        penalty_weight=0.1,
        kl_rho=0.05,
        kl_reduction="mean",
        loss="bce",
    )
    text = cfg.to_json()
    back = SAEConfig.from_json(text)
    assert back == cfg
    assert back.to_json() == text
    assert json.loads(text)["hidden_dims"] == [16, 8]
    assert json.loads(text)["version"] == 1


def test_hidden_dims_default_per_architecture():
    assert SAEConfig().hidden_dims == (64,)
    assert SAEConfig(architecture="conv").hidden_dims == (128,)
    assert SAEConfig(architecture="fullconv").code_dim == 512
    cfg = SAEConfig(architecture="fullconv", topk=20)
    assert SAEConfig.from_json(cfg.to_json()) == cfg


def test_derived_layer_dims():
    cfg = SAEConfig(input_dim=784, hidden_dims=(256, 128, 16))
    assert cfg.code_dim == 16
    assert cfg.encoder_dims == ((784, 256), (256, 128), (128, 16))
    assert cfg.decoder_dims == ((16, 128), (128, 256), (256, 784))


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(topk=0), "topk must be >= 1, got 0"),
        (dict(topk=-3), "topk must be >= 1"),
        (dict(topk=65), "topk=65 is larger than the code (64 units)"),
        (dict(topk=2.5), "topk must be an integer"),
        (dict(lifetime_rate=0.0), "lifetime rate must be in (0, 1], got 0.0"),
        (dict(lifetime_rate=1.5), "lifetime rate must be in (0, 1], got 1.5"),
        (dict(lifetime_k=0), "lifetime_k must be >= 1"),
        (
            dict(lifetime_k=3, lifetime_rate=0.5),
            "set lifetime_k or lifetime_rate, not both",
        ),
        (dict(kl_rho=0.0), "rho must be in (0, 1), got 0.0"),
        (dict(kl_rho=1.0), "rho must be in (0, 1), got 1.0"),
        (dict(activation="gelu"), "unknown activation 'gelu'"),
        (dict(code_activation="gelu"), "unknown code_activation 'gelu'"),
        (dict(output_activation="softplus"), "unknown output_activation"),
        (dict(architecture="resnet"), "unknown architecture 'resnet'"),
        (dict(architecture="conv", hidden_dims=(64,)), "code is 8x4x4 = 128 units"),
        (dict(architecture="fullconv", input_dim=1024), "takes 1x28x28 images"),
        (dict(architecture="conv", tied=True), "tied weights are defined for the mlp"),
        (dict(architecture="conv", topk=129), "topk=129 is larger than the code (128"),
        (dict(penalty="kl", penalty_weight=0.1), "set code_activation='sigmoid'"),
        (
            dict(loss="bce", output_activation="identity"),
            "set output_activation='sigmoid'",
        ),
        (
            dict(loss="bce", output_activation="tanh"),
            "bce needs a sigmoid output (probabilities): set "
            "output_activation='sigmoid' (got 'tanh')",
        ),
        (dict(loss="huber"), "unknown loss 'huber'"),
        (dict(hidden_dims=()), "hidden_dims must name at least one layer"),
        (dict(hidden_dims=(64, 0)), "hidden_dims[1] must be >= 1, got 0"),
        (dict(penalty_weight=-1.0), "penalty_weight must be >= 0"),
        (dict(penalty_weight=float("nan")), "penalty_weight must be finite"),
        (dict(tied="yes"), "tied must be true or false"),
    ],
)
def test_bad_config_is_one_readable_error(changes, message):
    with pytest.raises(ConfigError) as err:
        SAEConfig(**changes)
    assert message in str(err.value)


def test_from_dict_rejects_unknown_fields_and_versions():
    with pytest.raises(ConfigError, match="unknown config fields: hiden_dims"):
        SAEConfig.from_dict({"hiden_dims": [3]})
    with pytest.raises(ConfigError, match="config version 7"):
        SAEConfig.from_dict({"version": 7})
    with pytest.raises(ConfigError, match="not valid JSON"):
        SAEConfig.from_json("{")


@pytest.mark.parametrize(
    "batch, k, rate, expected",
    [
        (512, None, 0.25, 128),  # ceil(128.0)
        (10, None, 0.25, 3),  # ceil(2.5)
        (10, None, 0.01, 1),  # ceil(0.1), never 0
        (10, None, 1.0, 10),
        (8, 3, None, 3),
        (8, 20, None, 8),  # clamped to the batch
    ],
)
def test_resolve_lifetime_k(batch, k, rate, expected):
    assert resolve_lifetime_k(batch, k, rate) == expected


def test_resolve_lifetime_k_needs_exactly_one():
    with pytest.raises(ConfigError, match="exactly one of k or rate"):
        resolve_lifetime_k(8)
    with pytest.raises(ConfigError, match="exactly one of k or rate"):
        resolve_lifetime_k(8, 2, 0.5)


# --------------------------------------------------------------------------- pixel scale


def test_pixel_scale_is_validated_with_normalize_and_bce():
    from saecommon.train_config import RunConfig, TrainConfig

    assert TrainConfig().pixel_scale == "unit"
    with pytest.raises(ConfigError, match="unknown pixel_scale 'signed'; expected one"):
        TrainConfig(pixel_scale="signed")
    with pytest.raises(ConfigError) as err:
        TrainConfig(pixel_scale="symmetric", normalize=True)
    assert "pixel_scale 'symmetric' with normalize: standardizing undoes" in str(
        err.value
    )
    bce = SAEConfig(loss="bce", output_activation="sigmoid")
    with pytest.raises(ConfigError) as err:
        RunConfig(bce, TrainConfig(pixel_scale="symmetric"))
    assert "bce needs targets in [0, 1] (and a sigmoid output): set pixel_scale" in str(
        err.value
    )
    tanh = SAEConfig(output_activation="tanh", loss="mse")
    assert RunConfig(tanh, TrainConfig(pixel_scale="symmetric")).model == tanh


def test_a_run_config_from_before_pixel_scale_still_loads():
    """config.json files written before the field existed read as unit scaling, and
    the field round-trips."""
    from saecommon.train_config import RunConfig, TrainConfig

    data = json.loads(RunConfig().to_json())
    del data["train"]["pixel_scale"]
    old = RunConfig.from_json(json.dumps(data))
    assert old.train.pixel_scale == "unit" and old == RunConfig()
    run = RunConfig(
        SAEConfig(output_activation="tanh"), TrainConfig(pixel_scale="symmetric")
    )
    assert RunConfig.from_json(run.to_json()) == run
    assert json.loads(run.to_json())["train"]["pixel_scale"] == "symmetric"

"""The parity matrix: for each configuration, the same weights and batch give the same
reconstruction, code, hidden activations, masks, loss terms and parameter gradients in
jaxsae and torchsae, in float64 and float32, on the CPU (and the GPU when present)."""

import itertools

import numpy as np
import pytest

from parity_tests.harness import run_case
from saecommon.config import SAEConfig

ACTIVATIONS = ["relu", "leaky_relu", "sigmoid", "identity"]
SPARSITY = {
    "dense": {},
    "topk": dict(topk=4),
    "lifetime": dict(lifetime_rate=0.25),  # ceil(0.25 * 16) = 4 per unit
    "both": dict(topk=5, lifetime_k=3),
}
PENALTIES = {
    "nopen": {},
    "l1code": dict(penalty="l1", penalty_weight=0.05),
    "l1all": dict(penalty="l1", penalty_weight=0.05, l1_layers="hidden"),
    "kl": dict(
        penalty="kl", penalty_weight=0.1, kl_rho=0.05, code_activation="sigmoid"
    ),
}
OUTPUT_FOR_MSE = {
    "relu": "relu",
    "leaky_relu": "identity",
    "sigmoid": "sigmoid",
    "identity": "identity",
}


def make_config(activation, sparsity, penalty, tied, loss) -> SAEConfig:
    fields = dict(
        input_dim=20,
        hidden_dims=(16, 12),
        activation=activation,
        code_activation=activation,
        negative_slope=0.1,
        tied=tied,
        loss=loss,
        output_activation="sigmoid" if loss == "bce" else OUTPUT_FOR_MSE[activation],
    )
    fields.update(SPARSITY[sparsity])
    fields.update(PENALTIES[penalty])
    return SAEConfig(**fields)


CASES = [
    pytest.param(
        i,
        make_config(a, s, p, t, lo),
        id=f"{a}-{s}-{p}-{'tied' if t else 'untied'}-{lo}",
    )
    for i, (a, s, p, t, lo) in enumerate(
        itertools.product(
            ACTIVATIONS, SPARSITY, PENALTIES, [False, True], ["mse", "bce"]
        )
    )
]


def tie_batch(seed: int) -> np.ndarray:
    """[16, 20] in [0, 1], built to tie: rows 8-11 repeat rows 0-3, rows 12-13 are all
    zero, rows 14-15 all 0.5, and a quarter of the pixels are exact zeros."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(16, 20))
    x[rng.uniform(size=x.shape) < 0.25] = 0.0
    x[8:12] = x[0:4]
    x[12:14] = 0.0
    x[14:16] = 0.5
    return x


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("index, config", CASES)
def test_parity(index, config, dtype, device, request):
    got = run_case(
        index, config, tie_batch(index), dtype, device, request.node.callspec.id
    )
    if config.topk is not None:
        assert (got["mask"].sum(1) == config.topk).all()


# tanh, for pixels scaled to [-1, 1] (pixel_scale symmetric), outside the product so
# the matrix does not double: the seed tutorial's sigmoid code + KL + tanh output
# (initialised in JAX), and tanh throughout with top-k and L1 on every layer, tied
# (initialised in torch). Both on the tie batch mapped to [-1, 1].
TANH_CASES = [
    pytest.param(
        len(CASES),
        SAEConfig(
            input_dim=20,
            hidden_dims=(16, 12),
            activation="sigmoid",
            output_activation="tanh",
            **PENALTIES["kl"],
        ),
        id="tutorial-sigmoid-kl-tanh-untied-mse",
    ),
    pytest.param(
        len(CASES) + 1,
        SAEConfig(
            input_dim=20,
            hidden_dims=(16, 12),
            activation="tanh",
            code_activation="tanh",
            output_activation="tanh",
            tied=True,
            **SPARSITY["topk"],
            **PENALTIES["l1all"],
        ),
        id="tanh-topk-l1all-tied-mse",
    ),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("index, config", TANH_CASES)
def test_tanh_parity(index, config, dtype, device, request):
    x = (tie_batch(index) - 0.5) / 0.5  # [-1, 1], as prepare_data scales it
    got = run_case(index, config, x, dtype, device, request.node.callspec.id)
    assert np.abs(got["reconstruction"]).max() < 1  # tanh's range, not sigmoid's
    assert got["reconstruction"].min() < 0


def test_the_matrix_is_large_enough():
    assert len(CASES) == 256
    assert sum(c.values[1].tied for c in CASES) == 128

"""The parity matrix for the convolutional architectures: same weights and batch give
the same reconstruction, code, hidden activations (NCHW), masks, loss terms and every
parameter gradient (conv, transposed-conv and linear) in jaxsae and torchsae."""

import itertools

import numpy as np
import pytest

from parity_tests.harness import run_case
from parity_tests.test_matrix import PENALTIES
from saecommon.config import SAEConfig

SPARSITY = {
    "dense": {},
    "topk": dict(topk=16),
    "lifetime": dict(lifetime_rate=0.25),  # ceil(0.25 * 8) = 2 per unit
    "both": dict(topk=20, lifetime_k=3),
}
# The activations: conv = LeakyReLU throughout (decoder too, for MSE);
# fullconv = ReLU with a sigmoid output.
ACTIVATION = {"conv": "leaky_relu", "fullconv": "relu"}


def make_config(architecture, sparsity, penalty, loss) -> SAEConfig:
    act = ACTIVATION[architecture]
    output = "sigmoid" if loss == "bce" or architecture == "fullconv" else act
    fields = dict(
        architecture=architecture,
        activation=act,
        code_activation=act,
        output_activation=output,
        negative_slope=0.1,
        loss=loss,
    )
    return SAEConfig(**{**fields, **SPARSITY[sparsity], **PENALTIES[penalty]})


CASES = [
    pytest.param(i, make_config(a, s, p, lo), id=f"{a}-{s}-{p}-{lo}")
    for i, (a, s, p, lo) in enumerate(
        itertools.product(["conv", "fullconv"], SPARSITY, PENALTIES, ["mse", "bce"])
    )
]


def image_batch(seed: int) -> np.ndarray:
    """[8, 784] in [0, 1], built to tie: a third of the pixels exact zeros and rows 4-7
    repeating rows 0-3 (exact ties for lifetime top-k); ReLU codes and top-k add exact
    zeros.

    No constant image, not even an all-zero one: past the first layer a convolution
    over a constant map gives values that are equal only mathematically (each framework
    sums its terms in its own order, so they differ by an ulp), and no tie rule can
    make two packages agree on those. The tie rule holds for exactly equal values."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(8, 784))
    x[rng.uniform(size=x.shape) < 0.33] = 0.0
    x[4:8] = x[0:4]
    return x


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("index, config", CASES)
def test_conv_parity(index, config, dtype, device, request):
    run_case(index, config, image_batch(index), dtype, device, request.node.callspec.id)


def test_the_conv_matrix_covers_both_architectures():
    assert len(CASES) == 64
    assert {c.values[1].code_dim for c in CASES} == {128, 512}

"""Both packages pick the same units on tie-heavy codes, on every device, and the units
the written rule names (lower index wins)."""

import jax
import numpy as np
import pytest
import torch

import jaxsae
import torchsae
from conftest import reference_mask
from parity_tests.harness import on_device


def tied_codes(seed: int, dtype) -> np.ndarray:
    """[64, 48] ReLU-like codes: most entries exact zeros, the rest on a coarse grid,
    rows 32-63 repeating rows 0-31, and -0.0 mixed in with +0.0."""
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.integers(-6, 3, size=(64, 48)), 0).astype(dtype) / 4
    x[32:] = x[:32]
    x[rng.uniform(size=x.shape) < 0.1] = -0.0
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("seed", range(3))
def test_masks_match_the_rule_in_both_packages(seed, dtype, device):
    x = tied_codes(seed, dtype)
    with jax.enable_x64(dtype == np.float64), on_device(device) as torch_device:
        xj, xt = jax.numpy.asarray(x), torch.from_numpy(x).to(torch_device)
        for k in (1, 8, 47):
            want = reference_mask(x, k)
            np.testing.assert_array_equal(np.asarray(jaxsae.topk_mask(xj, k)), want)
            np.testing.assert_array_equal(torchsae.topk_mask(xt, k).cpu().numpy(), want)
        for k in (1, 16, 63):
            want = reference_mask(x.T, k).T
            np.testing.assert_array_equal(
                np.asarray(jaxsae.lifetime_topk_mask(xj, k)), want
            )
            np.testing.assert_array_equal(
                torchsae.lifetime_topk_mask(xt, k).cpu().numpy(), want
            )

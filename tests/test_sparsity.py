"""Top-k and lifetime top-k, checked against hand-written masks in both packages."""

import jax
import jax.test_util
import numpy as np
import pytest
import torch

from conftest import reference_mask
from saecommon.config import ConfigError

# Rows built to tie: equal values at the k-th place, exact zeros, -0.0 beside +0.0.
TIES = np.array(
    [
        [0.0, 3.0, 1.0, 1.0, 1.0, 0.0],  # k=2: 3 and the first 1
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # all tied: the first k
        [-0.0, 0.0, -1.0, 0.0, -0.0, 2.0],  # zeros tie whatever their sign
        [5.0, 5.0, 5.0, 4.0, 4.0, 4.0],  # k=2: the first two fives
    ]
)
TOPK2 = np.array(
    [
        [0, 1, 1, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 0, 0, 0, 0, 1],
        [1, 1, 0, 0, 0, 0],
    ],
    dtype=bool,
)
# Per column, the 2 largest over the 4 samples, lower sample index on ties.
LIFETIME2 = np.array(
    [
        [1, 1, 1, 1, 1, 0],  # col 0 [0, 0, -0, 5]: 5 and the first zero (sample 0)
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 1],  # col 5 [0, 0, 2, 4]: 4 and 2
        [1, 1, 1, 1, 1, 1],
    ],
    dtype=bool,
)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_topk_mask_ties_to_lower_index(fw, dtype):
    mask = fw.numpy(fw.pkg.topk_mask(fw.asarray(TIES.astype(dtype)), 2))
    np.testing.assert_array_equal(mask, TOPK2)
    np.testing.assert_array_equal(TOPK2, reference_mask(TIES, 2))


def test_lifetime_mask_ties_to_lower_sample(fw):
    mask = fw.numpy(fw.pkg.lifetime_topk_mask(fw.asarray(TIES), k=2))
    np.testing.assert_array_equal(mask, LIFETIME2)
    np.testing.assert_array_equal(LIFETIME2, reference_mask(TIES.T, 2).T)
    rate_mask = fw.numpy(fw.pkg.lifetime_topk_mask(fw.asarray(TIES), rate=0.5))
    np.testing.assert_array_equal(rate_mask, LIFETIME2)  # ceil(0.5 * 4) = 2


@pytest.mark.parametrize("seed", range(5))
def test_masks_keep_exactly_k_on_random_tied_batches(fw, seed):
    rng = np.random.default_rng(seed)
    # ReLU-like codes: half exact zeros, values on a coarse grid so ties are common,
    # and duplicated rows.
    x = np.maximum(rng.integers(-4, 4, size=(32, 24)), 0).astype(np.float64)
    x[16:] = x[:16]
    for k in (1, 5, 24):
        mask = fw.numpy(fw.pkg.topk_mask(fw.asarray(x), k))
        assert (mask.sum(1) == k).all()
        np.testing.assert_array_equal(mask, reference_mask(x, k))
    for k in (1, 7, 32):
        mask = fw.numpy(fw.pkg.lifetime_topk_mask(fw.asarray(x), k=k))
        assert (mask.sum(0) == k).all()
        np.testing.assert_array_equal(mask, reference_mask(x.T, k).T)


def test_lifetime_k_is_clamped_to_the_batch(fw):
    mask = fw.numpy(fw.pkg.lifetime_topk_mask(fw.asarray(TIES), k=50))
    assert mask.all()


def test_topk_values_and_gradient(fw):
    x = np.array([[0.5, -1.0, 2.0, 0.25], [3.0, 1.0, -2.0, 1.5]])
    out = fw.numpy(fw.pkg.topk(fw.asarray(x), 2))
    np.testing.assert_array_equal(out, [[0.5, 0, 2.0, 0], [3.0, 0, 0, 1.5]])
    w = np.arange(1.0, 9.0).reshape(2, 4)
    grad = fw.grad(lambda t: (fw.pkg.topk(t, 2) * fw.asarray(w)).sum(), x)
    np.testing.assert_array_equal(grad, [[1, 0, 3, 0], [5, 0, 0, 8]])


def test_lifetime_gradient_flows_through_kept_only(fw):
    x = np.array([[0.5, -1.0], [3.0, 1.0], [2.0, 0.0]])
    w = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    grad = fw.grad(lambda t: (fw.pkg.lifetime_topk(t, k=1) * fw.asarray(w)).sum(), x)
    np.testing.assert_array_equal(grad, [[0, 0], [3, 4], [0, 0]])


# Finite differences of the custom backward (float64; inputs spaced well apart so the
# mask is constant within the finite-difference step).
def _spaced_input(seed):
    rng = np.random.default_rng(seed)
    return rng.permutation(np.arange(48.0)).reshape(6, 8) * 0.1 - 2.0


def test_jax_custom_vjp_matches_finite_differences():
    import jaxsae

    with jax.enable_x64(True):
        x = jax.numpy.asarray(_spaced_input(0))
        for f in (
            lambda t: jaxsae.topk(t, 3),
            lambda t: jaxsae.lifetime_topk(t, k=2),
            lambda t: jaxsae.lifetime_topk(jaxsae.topk(t, 5), rate=0.5),
        ):
            jax.test_util.check_grads(f, (x,), order=1, modes=["rev"], eps=1e-4)


def test_torch_autograd_function_matches_finite_differences():
    import torchsae

    x = torch.from_numpy(_spaced_input(1)).requires_grad_(True)
    for f in (
        lambda t: torchsae.topk(t, 3),
        lambda t: torchsae.lifetime_topk(t, k=2),
        lambda t: torchsae.lifetime_topk(torchsae.topk(t, 5), rate=0.5),
    ):
        assert torch.autograd.gradcheck(f, (x,), eps=1e-4, atol=1e-8)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p, x: p.topk(x, 0), "k must be >= 1, got 0"),
        (lambda p, x: p.topk(x, 7), "k=7 is larger than the code (6 units)"),
        (lambda p, x: p.topk_mask(x, -1), "k must be >= 1"),
        (lambda p, x: p.lifetime_topk(x, rate=0.0), "lifetime rate must be in (0, 1]"),
        (lambda p, x: p.lifetime_topk(x, rate=1.01), "lifetime rate must be in (0, 1]"),
        (lambda p, x: p.lifetime_topk(x, k=0), "lifetime k must be >= 1"),
        (lambda p, x: p.lifetime_topk(x), "exactly one of k or rate"),
    ],
)
def test_bad_k_is_one_readable_error(fw, call, message):
    with pytest.raises(ConfigError) as err:
        call(fw.pkg, fw.asarray(TIES))
    assert message in str(err.value)


def test_sparsity_needs_a_2d_code(fw):
    with pytest.raises(ValueError, match=r"code \[batch, code\]"):
        fw.pkg.topk(fw.asarray(np.zeros((2, 3, 4))), 1)

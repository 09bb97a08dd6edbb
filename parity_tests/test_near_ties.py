"""The parity harness tells a near-tie from a real mask disagreement.

A near-tie: two values equal up to rounding straddle the k-th place, so the packages may
keep different entries; the harness counts them, reruns torch with JAX's mask and holds
everything else to the usual tolerances. A real disagreement (the tie rule broken in
one package, or an entry far from the k-th value) still fails, naming the entry."""

import json

import jax
import numpy as np
import pytest
import torch

import jaxsae
import torchsae
from parity_tests import harness
from parity_tests.harness import mask_near_ties, run_case, run_pair
from parity_tests.test_matrix import CASES, tie_batch
from saecommon.config import SAEConfig

DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])


def up(x, dtype):
    """The next representable value above x: a one-ulp rounding difference."""
    return np.nextafter(dtype(x), dtype(np.inf))


def masks(pre_jax, pre_torch, config, train):
    """Each package's own sparsity mask of its own pre-mask code."""
    with jax.enable_x64(pre_jax.dtype == np.float64):
        jm = np.asarray(jaxsae.sparsity_mask(jax.numpy.asarray(pre_jax), config, train))
    tm = torchsae.sparsity_mask(torch.from_numpy(pre_torch), config, train).numpy()
    return jm, tm


def higher_index_ties(code, config, train):
    """The tie rule broken: ties go to the higher unit and the higher sample (the rule
    run on the code flipped in both axes, its mask flipped back)."""
    return torchsae.sparsity.sparsity_mask(code.flip((0, 1)), config, train).flip(
        (0, 1)
    )


# -- the check on its own, on hand-built codes ---------------------------------------


@DTYPES
def test_a_one_ulp_topk_tie_is_a_near_tie(dtype):
    # k = 2: units 1 and 2 tie for second place in JAX (lower index 1 wins); in torch
    # unit 2 is one ulp larger and wins.
    config = SAEConfig(input_dim=4, hidden_dims=(4,), topk=2)
    pre_jax = np.array([[3, 2, 2, 1], [4, 3, 2, 1]], dtype)
    pre_torch = pre_jax.copy()
    pre_torch[0, 2] = up(2, dtype)
    jm, tm = masks(pre_jax, pre_torch, config, train=False)
    np.testing.assert_array_equal(jm[0], [True, True, False, False])
    np.testing.assert_array_equal(tm[0], [True, False, True, False])

    ties = mask_near_ties(jm, tm, pre_jax, pre_torch, config, False, dtype)
    assert ties.tolist() == [[0, 1], [0, 2]]


@DTYPES
def test_a_one_ulp_lifetime_tie_is_a_near_tie(dtype):
    # lifetime k = 1 per unit, over 3 samples: samples 0 and 2 tie in unit 1 in JAX
    # (sample 0 wins); in torch sample 2 is one ulp larger. Evaluation mode has no
    # lifetime layer, so there the masks agree (all kept).
    config = SAEConfig(input_dim=4, hidden_dims=(2,), lifetime_k=1)
    pre_jax = np.array([[0.5, 0.0945], [0.25, 0.01], [0.125, 0.0945]], dtype)
    pre_torch = pre_jax.copy()
    pre_torch[2, 1] = up(pre_jax[2, 1], dtype)
    jm, tm = masks(pre_jax, pre_torch, config, train=True)
    ties = mask_near_ties(jm, tm, pre_jax, pre_torch, config, True, dtype)
    assert ties.tolist() == [[0, 1], [2, 1]]
    assert jm[0, 1] and not tm[0, 1]  # the GPU case: jax keeps it, torch drops it


def test_a_topk_near_tie_may_move_the_lifetime_boundary():
    # top-k 1 then lifetime k 1. Sample 0 ties units 0 and 1 (torch: unit 1 one ulp
    # up), so top-k keeps unit 0 in JAX and unit 1 in torch. Unit 1's lifetime winner
    # is then sample 1 (0.5) in JAX but sample 0 (1 + ulp) in torch: (1, 1) differs as
    # a consequence; its 0.5 lies between the two packages' k-th values 0.5 and 1.
    dtype = np.float32
    config = SAEConfig(input_dim=4, hidden_dims=(2,), topk=1, lifetime_k=1)
    pre_jax = np.array([[1.0, 1.0], [0.25, 0.5]], dtype)
    pre_torch = pre_jax.copy()
    pre_torch[0, 1] = up(1, dtype)
    jm, tm = masks(pre_jax, pre_torch, config, train=True)
    np.testing.assert_array_equal(jm, [[True, False], [False, True]])
    np.testing.assert_array_equal(tm, [[False, True], [False, False]])
    ties = mask_near_ties(jm, tm, pre_jax, pre_torch, config, True, dtype)
    assert ties.tolist() == [[0, 0], [0, 1], [1, 1]]


def test_bitwise_identical_codes_leave_no_room_for_a_tie():
    # Integer-valued codes, the same in both packages: units 0 and 1 tie exactly for
    # second place; torch's mask sends the tie to unit 1. That is the rule broken.
    config = SAEConfig(input_dim=4, hidden_dims=(4,), topk=2)
    pre = np.array([[2, 2, 1, 3], [5, 4, 4, 0]], np.float32)
    jm, _ = masks(pre, pre, config, train=False)
    tm = higher_index_ties(torch.from_numpy(pre), config, False).numpy()
    assert np.argwhere(jm != tm).tolist() == [[0, 0], [0, 1], [1, 1], [1, 2]]
    with pytest.raises(AssertionError) as err:
        mask_near_ties(jm, tm, pre, pre, config, False, np.float32, "ints")
    msg = str(err.value)
    assert "ints mask: 4 of 4 differing entries are not near-ties" in msg
    assert "first (0, 0): jax keeps it, torch drops it" in msg
    assert "the tie rule must decide alike: a real disagreement" in msg


def test_the_same_tie_pattern_is_a_real_disagreement_even_off_by_an_ulp():
    # The codes differ by an ulp away from the boundary (unit 3), so they are not
    # bitwise identical, but both packages see the same entries above and at the k-th
    # value: the tie rule has nothing to decide differently on.
    config = SAEConfig(input_dim=4, hidden_dims=(4,), topk=2)
    pre_jax = np.array([[2, 2, 1, 3]], np.float32)
    pre_torch = pre_jax.copy()
    pre_torch[0, 3] = up(3, np.float32)
    jm, _ = masks(pre_jax, pre_torch, config, train=False)
    tm = higher_index_ties(torch.from_numpy(pre_torch), config, False).numpy()
    with pytest.raises(AssertionError, match="2 of 2 differing entries.*real disag"):
        mask_near_ties(jm, tm, pre_jax, pre_torch, config, False, np.float32)


@DTYPES
def test_an_entry_far_from_the_kth_value_is_not_a_near_tie(dtype):
    # A genuine one-ulp tie at (0, 1)/(0, 2), but torch also keeps unit 3 (0.5, far
    # below the k-th value 2) instead of unit 0: (0, 0) and (0, 3) are real.
    config = SAEConfig(input_dim=4, hidden_dims=(4,), topk=2)
    pre_jax = np.array([[3, 2, 2, 0.5]], dtype)
    pre_torch = pre_jax.copy()
    pre_torch[0, 2] = up(2, dtype)
    jm = np.array([[True, True, False, False]])
    tm = np.array([[False, False, True, True]])
    with pytest.raises(AssertionError) as err:
        mask_near_ties(jm, tm, pre_jax, pre_torch, config, False, dtype, "far")
    msg = str(err.value)
    assert "far mask: 2 of 4 differing entries are not near-ties" in msg
    assert "first (0, 0): jax keeps it, torch drops it" in msg
    assert f"k-th value of row 0: jax 2.0, torch {str(up(2, dtype))}," in msg  # 2 + ulp
    assert "compared value jax 3.0, torch 3.0" in msg
    assert "not within tolerance of the k-th value in both" in msg


def test_a_lifetime_entry_far_from_the_units_kth_value_is_not_a_near_tie():
    # lifetime k = 1: samples 0 and 2 tie in unit 1 up to an ulp (a genuine near-tie),
    # but torch keeps sample 1 (0.01), far below the unit's k-th value 0.0945.
    config = SAEConfig(input_dim=4, hidden_dims=(2,), lifetime_k=1)
    pre = np.array([[0.5, 0.0945], [0.25, 0.01], [0.125, 0.0945]], np.float32)
    pre_torch = pre.copy()
    pre_torch[2, 1] = up(pre[2, 1], np.float32)
    jm = np.array([[True, True], [False, False], [False, False]])
    tm = np.array([[True, False], [False, True], [False, False]])
    with pytest.raises(AssertionError) as err:
        mask_near_ties(jm, tm, pre, pre_torch, config, True, np.float32)
    msg = str(err.value)
    assert "1 of 2 differing entries are not near-ties, first (1, 1)" in msg
    assert "k-th value of column 1: jax 0.0945, torch 0.094500005" in msg
    assert "compared value jax 0.01, torch 0.01; not within tolerance" in msg
    # Evaluation mode has no lifetime layer: no stage can explain any difference.
    with pytest.raises(AssertionError, match="2 of 2.*no sparsity layer acts here"):
        mask_near_ties(jm, tm, pre, pre_torch, config, False, np.float32)


# -- through the models: run_pair with a one-ulp difference put into torch's run -----


def one_layer(**sparsity) -> SAEConfig:
    return SAEConfig(
        input_dim=2,
        hidden_dims=(4,),
        code_activation="identity",
        output_activation="sigmoid",
        **sparsity,
    )


def weights(encoder_weight, encoder_bias, dtype) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "encoder.0.weight": np.array(encoder_weight, dtype),
        "encoder.0.bias": np.array(encoder_bias, dtype),
        "decoder.0.weight": rng.normal(size=(2, 4)).astype(dtype),
        "decoder.0.bias": rng.normal(size=2).astype(dtype),
    }


def nudge_torch(monkeypatch, param=None, row=None):
    """Every torch run in the harness sees one value one ulp up: ``param`` = (name,
    index) of a weight, or ``row`` = (sample, feature) of the batch. Stands in for the
    rounding a GPU kernel can add."""
    real = harness.run_torch

    def nudged(state_dict, config, x, train, device="cpu", mask=None):
        state_dict, x = dict(state_dict), np.array(x)
        if param is not None:
            name, i = param
            state_dict[name] = state_dict[name].copy()
            state_dict[name][i] = up(state_dict[name][i], state_dict[name].dtype.type)
        if row is not None:
            x[row] = up(x[row], x.dtype.type)
        return real(state_dict, config, x, train, device, mask)

    monkeypatch.setattr(harness, "run_torch", nudged)
    return real


@DTYPES
def test_a_topk_near_tie_through_the_models_is_counted_and_settled(
    dtype, monkeypatch, tmp_path, capsys
):
    # Zero encoder weight: every sample's code is the bias [1, 1, 0.5, 0.25]; top-1
    # keeps unit 0 in JAX (tie to the lower index) and unit 1 in torch, whose bias 1
    # is one ulp up. 4 samples x 2 units differ, in both modes (no lifetime layer).
    config = one_layer(topk=1)
    w = weights(np.zeros((4, 2)), [1, 1, 0.5, 0.25], dtype)
    x = np.random.default_rng(1).uniform(size=(4, 2)).astype(dtype)
    real_run_torch = nudge_torch(monkeypatch, param=("encoder.0.bias", 1))
    monkeypatch.setenv("PARITY_REPORT", str(tmp_path / "report.jsonl"))

    got = run_pair(w, config, x, dtype, "cpu", "ulp-topk")

    want = [[i, j] for i in range(4) for j in (0, 1)]
    for train in (True, False):
        got_jax, ties = got[train]
        assert ties.tolist() == want
        np.testing.assert_array_equal(got_jax["mask"][:, 0], True)
    # Unforced, torch keeps unit 1; forced, it keeps JAX's unit 0 and its code and
    # gradients agree with JAX's.
    jax_out = got[True][0]
    sd = dict(w, **{"encoder.0.bias": np.array([1, up(1, dtype), 0.5, 0.25], dtype)})
    free = real_run_torch(sd, config, x, True)
    forced = real_run_torch(sd, config, x, True, mask=jax_out["mask"])
    np.testing.assert_array_equal(free["mask"].argmax(1), [1, 1, 1, 1])
    np.testing.assert_array_equal(forced["mask"], jax_out["mask"])
    np.testing.assert_array_equal(forced["code"], jax_out["code"])
    np.testing.assert_allclose(
        forced["grad.encoder.0.weight"], jax_out["grad.encoder.0.weight"], rtol=1e-5
    )
    assert forced["grad.encoder.0.bias"][1] == 0  # the nudged unit is dropped

    lines = [
        json.loads(s) for s in (tmp_path / "report.jsonl").read_text().split("\n") if s
    ]
    assert [(r["case"], r["near_ties"]) for r in lines] == [
        ("ulp-topk train=True", 8),
        ("ulp-topk train=False", 8),
    ]
    printed = capsys.readouterr().out
    assert "ulp-topk train=True: 8 mask entries were near-ties" in printed


def test_a_lifetime_near_tie_through_the_models_is_counted_and_settled(monkeypatch):
    # Unit 0's code is feature 0 of the input (weight [1, 0], bias 0): samples 0 and 1
    # tie at 0.75 and lifetime top-1 keeps sample 0 in JAX; torch's sample 1 is one
    # ulp up and wins. Only training mode has the lifetime layer.
    dtype = np.float32
    config = one_layer(lifetime_k=1)
    w = weights(np.eye(4, 2), np.zeros(4), dtype)
    x = np.array([[0.75, 0.25], [0.75, 0.5], [0.5, 0.125], [0.25, 0.5]], dtype)
    nudge_torch(monkeypatch, row=(1, 0))

    got = run_pair(w, config, x, dtype, "cpu", "ulp-lifetime")

    assert got[True][1].tolist() == [[0, 0], [1, 0]]
    assert got[False][1].tolist() == []
    assert got[True][0]["mask"][:, 0].tolist() == [True, False, False, False]


def test_a_real_parity_case_with_no_ties_reports_none(tmp_path, monkeypatch):
    monkeypatch.setenv("PARITY_REPORT", str(tmp_path / "report.jsonl"))
    index, config = next(
        (c.values[0], c.values[1])
        for c in CASES
        if c.id == "relu-both-nopen-untied-mse"
    )
    run_case(index, config, tie_batch(index), np.float64, "cpu", "both")
    lines = [
        json.loads(s) for s in (tmp_path / "report.jsonl").read_text().split("\n") if s
    ]
    assert [r["near_ties"] for r in lines] == [0, 0]


# -- a broken tie rule still fails, through the models -------------------------------


def test_a_broken_tie_rule_fails_on_integer_codes(monkeypatch):
    # Zero encoder weight, integer bias [2, 2, 1, 3]: top-2 keeps unit 3 and one of the
    # tied units 0 and 1. The codes are bitwise identical, so torch keeping unit 1 is
    # no near-tie, whatever the mask.
    config = one_layer(topk=2)
    w = weights(np.zeros((4, 2)), [2, 2, 1, 3], np.float32)
    x = np.random.default_rng(2).uniform(size=(4, 2)).astype(np.float32)
    monkeypatch.setattr(torchsae.models, "sparsity_mask", higher_index_ties)
    with pytest.raises(AssertionError) as err:
        run_pair(w, config, x, np.float32, "cpu", "broken")
    msg = str(err.value)
    assert msg.startswith("broken train=True mask: 8 of 8 differing entries")
    assert "first (0, 0): jax keeps it, torch drops it; pre-mask jax 2.0" in msg
    assert "a real disagreement" in msg


def test_a_broken_tie_rule_fails_on_a_real_parity_case(monkeypatch):
    # The matrix's top-k + lifetime case on its tie batch (rows 8-11 repeat rows 0-3,
    # rows 12-13 are zero): lifetime ties between repeated samples go the wrong way.
    index, config = next(
        (c.values[0], c.values[1])
        for c in CASES
        if c.id == "relu-both-nopen-untied-mse"
    )
    monkeypatch.setattr(torchsae.models, "sparsity_mask", higher_index_ties)
    with pytest.raises(AssertionError) as err:
        run_case(index, config, tie_batch(index), np.float32, "cpu", "broken")
    # The codes differ by rounding here (not bitwise identical), yet each package sees
    # the same entries above and at the k-th value, so these are no near-ties.
    msg = str(err.value)
    assert msg.startswith("broken train=True mask: 4 of 4 differing entries are not")
    assert "the tie rule must decide alike: a real disagreement" in msg


def test_forcing_a_mask_that_is_never_asked_for_fails(monkeypatch):
    # If torchsae stopped calling sparsity_mask by that name, forcing would silently do
    # nothing; the harness says so instead.
    config = one_layer(topk=1)
    w = weights(np.zeros((4, 2)), [1, 1, 0.5, 0.25], np.float32)
    x = np.zeros((4, 2), np.float32)
    monkeypatch.setattr(torchsae.models.Autoencoder, "forward", lambda *a, **k: None)
    with pytest.raises(AssertionError, match="never called sparsity_mask"):
        with harness.forced_mask(np.ones((4, 4), bool)):
            torchsae.from_state_dict(w, config)(torch.from_numpy(x))

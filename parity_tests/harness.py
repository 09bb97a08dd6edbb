"""Run one model case in each framework and compare everything it computes.

``run_jax``/``run_torch`` take the same numpy weights (PyTorch layout) and batch and
return a flat dict of numpy arrays: outputs, every hidden activation, the sparsity mask,
the loss terms and every parameter gradient (in PyTorch layout), keyed alike.

Masks are compared exactly, with one allowance (``mask_near_ties``): an entry may go
either way when its value sits, within rounding, on the k-th value the tie rule compared
it with, in both packages. Such a case is then rerun in torch with JAX's mask forced
(``forced_mask``) and everything else must agree as usual.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import torch

import jaxsae
import torchsae
from saecommon.config import SAEConfig, lifetime_count

# Tolerances (relative, absolute). float64 agreement near 1e-12 shows the two packages do
# the same math; float32 differs by rounding only.
TOLERANCES = {
    np.float64: (1e-10, 1e-12),
    np.float32: (1e-5, 1e-6),
}


def _outputs(out, terms) -> dict[str, np.ndarray]:
    got = {
        "reconstruction": out.reconstruction,
        "logits": out.logits,
        "code": out.code,
        "mask": out.mask,
        **{f"hidden.{i}": h for i, h in enumerate(out.hiddens)},
        **{f"loss.{k}": v for k, v in terms.items()},
    }
    return got


def run_jax(state_dict, config: SAEConfig, x: np.ndarray, train: bool) -> dict:
    model = jaxsae.Autoencoder(config)
    params = jaxsae.from_state_dict(state_dict, config)
    batch = jnp.asarray(x)

    def objective(p):
        out = model.apply({"params": p}, batch, train=train)
        terms = jaxsae.loss_terms(out, batch, config)
        return terms["loss"], (out, terms)

    (_, (out, terms)), grads = jax.value_and_grad(objective, has_aux=True)(params)
    got = {k: np.asarray(v) for k, v in _outputs(out, terms).items()}
    got.update({f"grad.{k}": v for k, v in jaxsae.to_state_dict(grads).items()})
    return got


def run_torch(
    state_dict,
    config: SAEConfig,
    x: np.ndarray,
    train: bool,
    device="cpu",
    mask: np.ndarray | None = None,
):
    """``mask`` [batch, code] bool, if given, replaces torch's sparsity mask."""
    model = torchsae.from_state_dict(state_dict, config).to(device)
    batch = torch.from_numpy(np.array(x)).to(device)
    with contextlib.nullcontext() if mask is None else forced_mask(mask):
        out = model(batch, train=train)
    terms = torchsae.loss_terms(out, batch, config)
    terms["loss"].backward()
    got = {k: v.detach().cpu().numpy() for k, v in _outputs(out, terms).items()}
    got.update({f"grad.{k}": p.grad.cpu().numpy() for k, p in model.named_parameters()})
    return got


def run_case(index: int, config: SAEConfig, x: np.ndarray, dtype, device, case: str):
    """One parity case: weights initialised in JAX (even index) or torch (odd) and
    ported to the other, then both packages run ``x`` in training and evaluation mode
    and everything is compared. Returns JAX's evaluation-mode results."""
    from conftest import _framework

    init_in = "jax" if index % 2 == 0 else "torch"
    weights = {
        k: v.astype(dtype) for k, v in _framework(init_in).init(config, index).items()
    }
    got = run_pair(weights, config, x.astype(dtype), dtype, device, case)
    return got[False][0]


def run_pair(weights, config: SAEConfig, x: np.ndarray, dtype, device, case: str):
    """Run ``weights`` and ``x`` (already ``dtype``) in both packages, training and
    evaluation mode, and compare everything. Where the masks differ only at near-ties
    (``mask_near_ties``), torch is rerun with JAX's mask and compared again.

    Returns {train: (JAX's results, near-tie entries [n, 2] as (sample, unit))}."""
    got = {}
    with jax.enable_x64(dtype == np.float64), on_device(device) as torch_device:
        for train in (True, False):
            got_jax = run_jax(weights, config, x, train)
            got_torch = run_torch(weights, config, x, train, torch_device)
            ties = np.zeros((0, 2), np.int64)
            jm, tm = got_jax["mask"], got_torch["mask"]
            if jm.shape == tm.shape and (jm != tm).any():
                # The values the rule saw: the same run with the sparsity layers off.
                dense = config.replace(topk=None, lifetime_k=None, lifetime_rate=None)
                pre_jax = run_jax(weights, dense, x, train)["code"]
                pre_torch = run_torch(weights, dense, x, train, torch_device)["code"]
                _check_close(
                    "pre-mask code", pre_jax, pre_torch, dtype, f"{case} train={train}"
                )
                ties = mask_near_ties(
                    jm,
                    tm,
                    pre_jax,
                    pre_torch,
                    config,
                    train,
                    dtype,
                    f"{case} train={train}",
                )
                got_torch = run_torch(weights, config, x, train, torch_device, mask=jm)
            compare(got_jax, got_torch, dtype, f"{case} train={train}", len(ties))
            got[train] = (got_jax, ties)
    return got


def compare(
    jax_out: dict, torch_out: dict, dtype, case: str = "", near_ties: int = 0
) -> dict[str, float]:
    """Assert every tensor agrees; masks exactly. Returns the max abs difference of each.
    ``near_ties`` (how many mask entries were settled by forcing JAX's mask on torch)
    only goes into the report.

    The failure message names the tensor, the worst element and both values."""
    assert jax_out.keys() == torch_out.keys(), (
        f"{case}: jax computed {sorted(jax_out.keys() - torch_out.keys())} extra, "
        f"torch {sorted(torch_out.keys() - jax_out.keys())} extra"
    )
    diffs = {}
    for name in sorted(jax_out):
        a, b = jax_out[name], torch_out[name]
        if a.dtype == bool:
            assert a.shape == b.shape, (
                f"{case} {name}: shape jax {a.shape} vs torch {b.shape}"
            )
            bad = np.argwhere(a != b)
            assert bad.size == 0, (
                f"{case} {name}: masks differ at {len(bad)} places, first {tuple(bad[0])} "
                f"(jax {a[tuple(bad[0])]}, torch {b[tuple(bad[0])]})"
            )
            diffs[name] = 0.0
            continue
        diffs[name] = _check_close(name, a, b, dtype, case)
    _report(case, dtype, diffs, near_ties)
    return diffs


def _check_close(name: str, a: np.ndarray, b: np.ndarray, dtype, case: str) -> float:
    """Assert jax's ``a`` and torch's ``b`` agree to TOLERANCES[dtype]; returns the max
    abs difference."""
    assert a.shape == b.shape, f"{case} {name}: shape jax {a.shape} vs torch {b.shape}"
    assert a.dtype == b.dtype == dtype, (
        f"{case} {name}: dtype jax {a.dtype}, torch {b.dtype}"
    )
    rtol, atol = TOLERANCES[dtype]
    err = np.abs(a.astype(np.float64) - b.astype(np.float64))
    limit = atol + rtol * np.abs(b.astype(np.float64))
    if (err > limit).any():
        i = np.unravel_index(np.argmax(err - limit), err.shape)
        raise AssertionError(
            f"{case} {name} differs: max |jax - torch| = {err.max():.3g}; worst at "
            f"{tuple(int(j) for j in i)}: jax {a[i]!r}, torch {b[i]!r} "
            f"(rtol {rtol:g}, atol {atol:g})"
        )
    return float(err.max()) if err.size else 0.0


def mask_near_ties(
    jax_mask: np.ndarray,
    torch_mask: np.ndarray,
    jax_pre: np.ndarray,
    torch_pre: np.ndarray,
    config: SAEConfig,
    train: bool,
    dtype,
    case: str = "",
) -> np.ndarray:
    """The entries [n, 2] (sample, unit) where the masks [batch, code] differ, each
    checked to be a near-tie; AssertionError naming the first entry that is not.

    ``*_pre`` [batch, code] is each package's code before the sparsity layers. The rule
    (jaxsae/sparsity.py) is per-sample top-k on the code, then lifetime top-k per unit
    (column) of what top-k kept. An entry is a near-tie at a stage when, in both
    packages, the value that stage compared is within TOLERANCES[dtype] of the k-th
    value it compared it with (the row's for top-k, the column's for lifetime), and the
    two packages did not see the same thing: which entries of that row/column are
    strictly above, and which equal to, the k-th value. The tie rule's answer depends on
    nothing else, so when those agree (as they do for bitwise identical values) any
    difference is a real disagreement.

    A top-k near-tie changes what lifetime top-k sees in that column and can move its
    k-th value from one kept value to the next; an entry of such a column is accepted
    when its value lies between the two packages' k-th values (within tolerance)."""
    differ = jax_mask != torch_mask
    if not differ.any():
        return np.zeros((0, 2), np.int64)
    rtol, atol = TOLERANCES[dtype]
    pre = (jax_pre.astype(np.float64), torch_pre.astype(np.float64))
    stages = []  # (name, [batch, code] explained, describe(i, j) -> str)
    kept = (np.ones(differ.shape, bool),) * 2
    if config.topk is not None:
        k = config.topk
        stage = _Stage(pre, k, rtol, atol, dtype)
        stages.append(("top-k", stage.near, stage.describe("row", lambda i, j: i)))
        kept = tuple(_rule_mask(p, k) for p in pre)
    if train and (config.lifetime_k is not None or config.lifetime_rate is not None):
        k = lifetime_count(differ.shape[0], config.lifetime_k, config.lifetime_rate)
        seen = tuple(np.where(m, p, 0.0).T for m, p in zip(kept, pre))  # [code, batch]
        moved = (kept[0] != kept[1]).any(axis=0)  # [code]: top-k differed in it
        stage = _Stage(seen, k, rtol, atol, dtype, band=moved)
        stages.append(
            ("lifetime", stage.near.T, stage.describe("column", lambda i, j: j, True))
        )
    explained = np.zeros(differ.shape, bool)
    for _, near, _ in stages:
        explained |= near
    bad = np.argwhere(differ & ~explained)
    if bad.size:
        i, j = (int(v) for v in bad[0])
        keeps = lambda m: "keeps" if m[i, j] else "drops"  # noqa: E731
        why = "; ".join(f"{name}: {describe(i, j)}" for name, _, describe in stages)
        raise AssertionError(
            f"{case} mask: {len(bad)} of {int(differ.sum())} differing entries are "
            f"not near-ties, first ({i}, {j}): jax {keeps(jax_mask)} it, torch "
            f"{keeps(torch_mask)} it; pre-mask jax {str(jax_pre[i, j])}, torch "
            f"{str(torch_pre[i, j])}; {why or 'no sparsity layer acts here'} "
            f"(rtol {rtol:g}, atol {atol:g})"
        )
    return np.argwhere(differ)


class _Stage:
    """One k-th-largest rule over the rows of ``values`` = (jax, torch) [rows, n]."""

    def __init__(self, values, k: int, rtol: float, atol: float, dtype, band=None):
        self.values, self.dtype = values, dtype
        self.kth = tuple(np.sort(v, axis=1)[:, -k] for v in values)  # [rows] each
        above = [v > t[:, None] for v, t in zip(values, self.kth)]
        tied = [v == t[:, None] for v, t in zip(values, self.kth)]
        # [rows]: the rule's inputs, and so its answer, are the same in both
        self.same = ((above[0] == above[1]) & (tied[0] == tied[1])).all(axis=1)
        close = [
            np.abs(v - t[:, None])
            <= atol + rtol * np.maximum(np.abs(v), np.abs(t[:, None]))
            for v, t in zip(values, self.kth)
        ]
        near = close[0] & close[1]
        if band is not None:
            lo = np.minimum(*self.kth)[:, None]
            hi = np.maximum(*self.kth)[:, None]
            slack = atol + rtol * np.maximum(np.abs(lo), np.abs(hi))
            inside = [(v >= lo - slack) & (v <= hi + slack) for v in values]
            near |= band[:, None] & inside[0] & inside[1]
        self.near = near & ~self.same[:, None]

    def describe(self, what: str, row, transposed: bool = False):
        def text(i, j):
            r, c = (j, i) if transposed else (i, j)

            def show(v):  # the value as the packages had it, shortest repr
                return str(self.dtype(v))

            head = (
                f"k-th value of {what} {row(i, j)}: jax {show(self.kth[0][r])}, "
                f"torch {show(self.kth[1][r])}, compared value jax "
                f"{show(self.values[0][r, c])}, torch {show(self.values[1][r, c])}"
            )
            if self.same[r]:
                return (
                    f"{head}; both packages have the same entries above and at the "
                    f"k-th value, so the tie rule must decide alike: a real "
                    f"disagreement"
                )
            return f"{head}; not within tolerance of the k-th value in both"

        return text


def _rule_mask(x: np.ndarray, k: int) -> np.ndarray:
    """The written rule on the rows of x [rows, n]: the k largest, ties to the lower
    index (the top-k stage's kept entries, to feed the lifetime stage)."""
    kth = np.sort(x, axis=1)[:, -k][:, None]
    tied = x == kth
    need = k - (x > kth).sum(axis=1, keepdims=True)
    return (x > kth) | (tied & (np.cumsum(tied, axis=1) <= need))


@contextlib.contextmanager
def forced_mask(mask: np.ndarray):
    """torchsae's models use ``mask`` [batch, code] bool as their sparsity mask: every
    ``sparsity_mask`` name in a loaded torchsae module is patched. Raises if the model
    never asked for a mask (the name it calls has moved)."""
    calls = []

    def fixed(code, config, train):
        assert tuple(code.shape) == mask.shape, (
            f"forced mask {mask.shape} does not fit the code {tuple(code.shape)}"
        )
        calls.append(train)
        return torch.from_numpy(np.array(mask, bool)).to(code.device)

    modules = [
        m
        for name, m in list(sys.modules.items())
        if (name == "torchsae" or name.startswith("torchsae."))
        and callable(getattr(m, "sparsity_mask", None))
    ]
    with contextlib.ExitStack() as stack:
        for m in modules:
            stack.enter_context(mock.patch.object(m, "sparsity_mask", fixed))
        yield
    assert calls, "torchsae's model never called sparsity_mask: nothing was forced"


def _report(case: str, dtype, diffs: dict[str, float], near_ties: int = 0) -> None:
    """With PARITY_REPORT=path set, append one JSON line per case (for GPU write-ups).
    Near-ties are also printed (pytest shows it with -s or -rA)."""
    if near_ties:
        print(
            f"{case}: {near_ties} mask entries were near-ties; torch rerun with jax's "
            f"mask agrees"
        )
    path = os.environ.get("PARITY_REPORT")
    if path:
        with open(path, "a") as f:
            worst = max(diffs, key=diffs.get)
            f.write(
                json.dumps(
                    {
                        "case": case,
                        "dtype": np.dtype(dtype).name,
                        "max_diff": diffs[worst],
                        "worst": worst,
                        "near_ties": near_ties,
                    }
                )
                + "\n"
            )


@contextlib.contextmanager
def on_device(device: str):
    """Run JAX and torch on ``device`` ("cpu" or "gpu") with full float32 matmuls: no
    TF32/bf16 passes (jax_default_matmul_precision, torch's TF32 switches)."""
    if device == "cpu":
        with jax.default_device(jax.devices("cpu")[0]):
            yield "cpu"
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        with (
            jax.default_device(jax.devices("gpu")[0]),
            jax.default_matmul_precision("highest"),
        ):
            yield "cuda"
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved

"""Run one model case in each framework and compare everything it computes.

``run_jax``/``run_torch`` take the same numpy weights (PyTorch layout) and batch and
return a flat dict of numpy arrays: outputs, every hidden activation, the sparsity mask,
the loss terms and every parameter gradient (in PyTorch layout), keyed alike.
"""

from __future__ import annotations

import contextlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import torch

import jaxsae
import torchsae
from saecommon.config import SAEConfig

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


def run_torch(state_dict, config: SAEConfig, x: np.ndarray, train: bool, device="cpu"):
    model = torchsae.from_state_dict(state_dict, config).to(device)
    batch = torch.from_numpy(np.array(x)).to(device)
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
    x = x.astype(dtype)
    with jax.enable_x64(dtype == np.float64), on_device(device) as torch_device:
        for train in (True, False):
            got_jax = run_jax(weights, config, x, train)
            got_torch = run_torch(weights, config, x, train, torch_device)
            compare(got_jax, got_torch, dtype, f"{case} train={train}")
    return got_jax


def compare(jax_out: dict, torch_out: dict, dtype, case: str = "") -> dict[str, float]:
    """Assert every tensor agrees; masks exactly. Returns the max abs difference of each.

    The failure message names the tensor, the worst element and both values."""
    assert jax_out.keys() == torch_out.keys(), (
        f"{case}: jax computed {sorted(jax_out.keys() - torch_out.keys())} extra, "
        f"torch {sorted(torch_out.keys() - jax_out.keys())} extra"
    )
    rtol, atol = TOLERANCES[dtype]
    diffs = {}
    for name in sorted(jax_out):
        a, b = jax_out[name], torch_out[name]
        assert a.shape == b.shape, (
            f"{case} {name}: shape jax {a.shape} vs torch {b.shape}"
        )
        if a.dtype == bool:
            bad = np.argwhere(a != b)
            assert bad.size == 0, (
                f"{case} {name}: masks differ at {len(bad)} places, first {tuple(bad[0])} "
                f"(jax {a[tuple(bad[0])]}, torch {b[tuple(bad[0])]})"
            )
            diffs[name] = 0.0
            continue
        assert a.dtype == b.dtype == dtype, (
            f"{case} {name}: dtype jax {a.dtype}, torch {b.dtype}"
        )
        err = np.abs(a.astype(np.float64) - b.astype(np.float64))
        limit = atol + rtol * np.abs(b.astype(np.float64))
        diffs[name] = float(err.max()) if err.size else 0.0
        if (err > limit).any():
            i = np.unravel_index(np.argmax(err - limit), err.shape)
            raise AssertionError(
                f"{case} {name} differs: max |jax - torch| = {err.max():.3g}; worst at "
                f"{tuple(int(j) for j in i)}: jax {a[i]!r}, torch {b[i]!r} "
                f"(rtol {rtol:g}, atol {atol:g})"
            )
    _report(case, dtype, diffs)
    return diffs


def _report(case: str, dtype, diffs: dict[str, float]) -> None:
    """With PARITY_REPORT=path set, append one JSON line per case (for GPU write-ups)."""
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

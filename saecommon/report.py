"""The evaluation's report: metrics.json and the pictures in an output folder
(:func:`write_report`), and the printed table (:func:`format_report`)."""

from __future__ import annotations

import json
import os
import pathlib
from typing import TYPE_CHECKING

from saecommon.data import PreparedData
from saecommon.noise import Noise

if TYPE_CHECKING:
    from saecommon.evaluation import Evaluation, Source

REPORT = "metrics.json"
"""The evaluation's numbers and how they were measured (a run's history is
rundir.HISTORY, metrics.jsonl)."""
DENOISING = "denoising.png"


def default_report_dir(source: Source, framework: str) -> str:
    """eval-<framework> beside the checkpoint."""
    folder = os.path.dirname(source.checkpoint) if source.checkpoint else "."
    return os.path.join(folder, f"eval-{framework}")


def write_report(
    out_dir: str | os.PathLike,
    evaluation: Evaluation,
    data: PreparedData,
    source: Source,
) -> list[pathlib.Path]:
    """metrics.json and the pictures into ``out_dir``; returns their paths.

    Pictures: reconstructions.png (the first 16 test images), dictionary.png,
    codes.png (the first 256 test codes), activation_frequency.png, code_scatter.png
    (every test code, when the code is 2-D), denoising.png (noisy inputs and their
    reconstructions, with noise) and loss_curves.png (when the run's history is known).
    Images are in [0, 1] pixel space."""
    from saecommon import plots

    out = pathlib.Path(os.fspath(out_dir))
    out.mkdir(parents=True, exist_ok=True)
    config = source.run.model
    test = evaluation.test
    shape = plots.picture_shape(data.image_shape, config.input_dim)
    weights, tile_shape = plots.dictionary_weights(source.state_dict, config)
    paths = [out / REPORT]
    report = {
        "checkpoint": source.checkpoint,
        "run": json.loads(source.run.to_json()),
        **evaluation.info,
        "metrics": evaluation.metrics,
        "activation_frequency": evaluation.activation_frequency.tolist(),
    }
    with open(out / REPORT, "w") as f:  # as rundir.write_summary writes summary.json
        json.dump(report, f, indent=1)
    paths += [
        plots.plot_reconstructions(
            data.to_pixels(data.test[:16]),
            data.to_pixels(test.reconstruction[:16]),
            out / plots.RECONSTRUCTIONS,
            image_shape=shape,
        ),
        plots.plot_dictionary(
            weights,
            out / plots.DICTIONARY,
            image_shape=tile_shape or shape,
            codes=test.code if plots.dictionary_is_code(config) else None,
        ),
        plots.plot_codes(test.code[:256], out / plots.CODES),
        plots.plot_activation_frequency(
            evaluation.activation_frequency, out / plots.ACTIVATION_FREQUENCY
        ),
    ]
    if test.code.shape[1] == 2:
        paths.append(
            plots.plot_code_scatter(
                test.code, data.test_labels, out / plots.CODE_SCATTER
            )
        )
    if evaluation.noisy is not None:
        paths.append(
            plots.plot_reconstructions(
                evaluation.noisy[:16],
                evaluation.denoised[:16],
                out / DENOISING,
                image_shape=shape,
            )
        )
    if source.history:
        paths.append(
            plots.plot_loss_curves(list(source.history), out / plots.LOSS_CURVES)
        )
    return paths


def format_report(evaluation: Evaluation, source: Source | None = None) -> str:
    """The printed table: one metric per line, with how it was measured."""
    m, info = evaluation.metrics, evaluation.info
    code_dim = info["code_dim"]
    dead_units = round(m["dead_fraction"] * code_dim)
    constant_units = round(m["constant_fraction"] * code_dim)
    where = f" of {source.checkpoint}" if source and source.checkpoint else ""
    dataset = f" on {source.run.train.dataset}" if source else ""
    rows = [
        ("mse", f"{m['mse']:.6f}", "pixels in [0, 1]"),
        ("bce", f"{m['bce']:.6f}", f"from {info['bce_from']}"),
        ("psnr", f"{m['psnr']:.3f} dB", "10 log10(1 / mse)"),
        ("l0", f"{m['l0']:.3f}", f"active units per sample, of {code_dim}"),
        ("dead fraction", f"{m['dead_fraction']:.4f}", f"{dead_units} of {code_dim}"),
        (
            "constant fraction",
            f"{m['constant_fraction']:.4f}",
            f"{constant_units} of {code_dim} take one value on every input "
            "(dead ones included)",
        ),
    ]
    if "noisy_psnr" in m:
        noise = Noise(**info["noise"]).describe()
        rows += [
            ("noisy psnr", f"{m['noisy_psnr']:.3f} dB", f"noisy input ({noise})"),
            ("denoised psnr", f"{m['denoised_psnr']:.3f} dB", "its reconstruction"),
            ("denoised mse", f"{m['denoised_mse']:.6f}", ""),
        ]
    if "probe_accuracy" in m:
        how = f"train {{:.4f}}; {{}} L-BFGS iterations, L2 {info['probe_l2']:g}"
        rows += [
            (
                "probe accuracy",
                f"{m['probe_accuracy']:.4f}",
                "codes; "
                + how.format(m["probe_train_accuracy"], info["probe_iterations"]),
            ),
            (
                "pixel probe accuracy",
                f"{m['pixel_probe_accuracy']:.4f}",
                "raw pixels; "
                + how.format(
                    m["pixel_probe_train_accuracy"], info["pixel_probe_iterations"]
                ),
            ),
        ]
    samples = f"{info['n_test']} test samples"
    if "n_train" in info:
        samples += f", probe trained on {info['n_train']}"
    lines = [
        f"evaluation{where} ({info['framework']}){dataset}: {samples}, "
        f"{info['seconds']['total']:.1f}s"
    ]
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    for name, value, note in rows:
        lines.append(f"  {name:<{width}}  {value:>{value_width}}  {note}".rstrip())
    return "\n".join(lines)

"""Framework-neutral pieces shared by jaxsae and torchsae, written once (numpy). Neither
model package imports the other; both import this. One concern per module:

Schema and catalogues
    config.py        SAEConfig, the model schema, and its field checks
    architectures.py the layers of each architecture (names, shapes, FLOPs)
    train_config.py  TrainConfig and RunConfig, the training schema
    presets.py       named RunConfigs (``--preset``)
    reproduction.py  the published results and how a result is compared with them
Data and files
    data.py          datasets (IDX, the shipped MNIST, tfds) -> PreparedData
    checkpoint.py    the portable checkpoint (safetensors + JSON config), atomic writes
    rundir.py        the run directory: file names, config, train state, history
Training (the framework-neutral half of both trainers)
    schedules.py     cosine learning rate, reduce-on-plateau, the numpy epoch order,
                     the dictionary SAE's per-step learning rate and coefficient
    recorder.py      RunRecorder: per-epoch row, checks, writes, end-of-run summary
    layerwise.py     greedy layer-wise pretraining, the stage plan
    progress.py      progress bars and lines
Evaluation
    metrics.py       every metric formula (reconstruction; CodeStats for sparsity)
    probe.py         the linear probe (softmax regression, L-BFGS)
    noise.py         the evaluation's denoising noise
    evaluation.py    what an evaluation measures, on which data
    report.py        metrics.json, the pictures and the printed table
    plots.py         every picture
Command lines
    cli.py           flags -> RunConfig for scripts/train.py
    frameworks.py    the one place that picks jaxsae or torchsae (imported on demand)
Dictionary SAEs on transformer activations
    dictionary_config.py  DictConfig, DictTrainConfig
    dictionary.py    initial weights, geometric median, input scale, checkpoint
    activations.py   the on-disk activation cache, its seeded stream, Prefetcher
    transformer.py   Hugging Face models offline: texts, residual stream, splice
    dict_run.py      the training loop both packages run, the run folder, resume
    dict_cli.py      flags -> DictRun for scripts/train_sae.py
"""

from saecommon.checkpoint import (
    CheckpointError,
    expected_shapes,
    read_checkpoint,
    write_checkpoint,
)
from saecommon.config import ConfigError, SAEConfig, resolve_lifetime_k

__all__ = [
    "CheckpointError",
    "ConfigError",
    "SAEConfig",
    "expected_shapes",
    "read_checkpoint",
    "resolve_lifetime_k",
    "write_checkpoint",
]

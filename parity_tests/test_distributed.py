"""Training over several processes, on the CPU: torchsae under torchrun (DDP, gloo)
and jaxsae under jax.distributed (gloo), each with 2 processes, train what one
process trains on the same global batches; jaxsae on 2 processes trains what torchsae
DDP on 2 processes trains; and a run whose process dies resumes (on another process
count) to the weights of an uninterrupted run.

The runs are the real commands (scripts/train.py, scripts/train_sae.py) started by
tests/distributed_driver.py: an MLP with top-k, lifetime top-k and KL (rules over the
global batch), a greedy layer-wise pretraining of a 2-layer denoising MLP (every
stage on every process; the noise drawn for the global batch), a conv model with L1 on every hidden layer (torch), and TopK with
AuxK (x_variance), BatchTopK with AuxK (residual_variance) and JumpReLU dictionaries,
all from the same initial weights (numpy-drawn, or the dictionary's numpy init) and
the same numpy-drawn order. The conv model trains with SGD: Adam's first steps
turn a gradient within rounding of 0 into a full step of either sign, so a rounding
difference in the summation order would show as a difference of the learning rate.

Tolerances: between process counts of one framework, every tensor within 1e-5 of its
largest |value| (float32 sums in another order); between frameworks, the parity
suite's: 1e-5 relative for the MLP (parity_tests/test_training_parity.py's runs),
2e-4 absolute for TopK and BatchTopK and 2e-3 for JumpReLU
(test_dictionary_parity.py's TRAIN_TOLERANCES, JUMPRELU_F32_TOLERANCE). The per-step
metrics agree too, and the dead-latent statistics exactly.

Each set of runs is made once per session and shared by the test workers (a file
lock), since each costs seconds of two processes starting.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import filelock
import numpy as np
import pytest

from saecommon.checkpoint import read_checkpoint, write_checkpoint
from saecommon.config import SAEConfig
from saecommon.dictionary import load_dictionary

ROOT = pathlib.Path(__file__).resolve().parent.parent
DRIVER = ROOT / "tests" / "distributed_driver.py"
sys.path.insert(0, str(ROOT / "tests"))

from test_dict_run import make_cache  # noqa: E402
from test_evaluation import write_idx_dataset  # noqa: E402

MLP = SAEConfig(
    input_dim=16,
    hidden_dims=(12,),
    activation="relu",
    code_activation="sigmoid",
    topk=4,
    lifetime_k=6,
    penalty="kl",
    penalty_weight=0.1,
)
CONV = SAEConfig(architecture="conv", penalty="l1", penalty_weight=1e-3)
DICTIONARIES = {
    "topk": ["--activation", "topk", "--aux-normalization", "x_variance"],
    "batchtopk": [
        "--activation", "batchtopk", "--aux-normalization", "residual_variance",
    ],
    "jumprelu": ["--activation", "jumprelu", "--aux-k", "none",
                 "--l0-coefficient", "0.01"],
}  # fmt: skip
EPOCHS, STEPS = 3, 12


def _init(path: pathlib.Path, config: SAEConfig, seed: int) -> str:
    """Initial weights (torch's default init rule, as numpy: the same for both
    frameworks)."""
    from torchsae.training import init_state_dict

    write_checkpoint(path, init_state_dict(config, seed), config)
    return str(path)


def inputs(base: pathlib.Path) -> dict:
    """The datasets, the cache and the initial weights, made once."""
    with filelock.FileLock(str(base / "inputs.lock")):
        if not (base / "inputs.json").exists():
            write_idx_dataset(base / "mnist4", n_train=96, n_test=32)
            write_idx_dataset(base / "mnist28", n_train=32, n_test=16, shape=(28, 28))
            make_cache(base / "acts")
            made = {
                "mlp_init": _init(base / "mlp-init.safetensors", MLP, 0),
                "conv_init": _init(base / "conv-init.safetensors", CONV, 1),
            }
            (base / "inputs.json").write_text(json.dumps(made))
    return json.loads((base / "inputs.json").read_text())


def jobs(base: pathlib.Path, out: pathlib.Path, framework: str) -> list:
    made = inputs(base)
    common = ["--framework", framework, "--quiet"]
    if framework == "torch":
        common += ["--device", "cpu"]
    mlp = [
        "--dataset", str(base / "mnist4"), "--input-dim", "16", "--hidden-dims", "12",
        "--activation", "relu", "--code-activation", "sigmoid", "--topk", "4",
        "--lifetime-k", "6", "--penalty", "kl", "--penalty-weight", "0.1",
        "--epochs", str(EPOCHS), "--batch-size", "16", "--seed", "3",
        "--shuffle-source", "numpy", "--init-from", made["mlp_init"],
    ]  # fmt: skip
    conv = [
        "--dataset", str(base / "mnist28"), "--architecture", "conv",
        "--penalty", "l1", "--penalty-weight", "1e-3", "--epochs", "1",
        "--batch-size", "8", "--seed", "3", "--shuffle-source", "numpy",
        "--init-from", made["conv_init"], "--optimizer", "sgd",
        "--learning-rate", "0.05",
    ]  # fmt: skip
    layerwise = [
        "--dataset", str(base / "mnist4"), "--input-dim", "16",
        "--hidden-dims", "12,8", "--activation", "relu", "--penalty", "l1",
        "--penalty-weight", "0.01", "--layerwise-epochs", "1,1", "--epochs", "1",
        "--batch-size", "16", "--seed", "3", "--shuffle-source", "numpy",
        "--optimizer", "sgd", "--learning-rate", "0.05", "--noise", "gaussian",
        "--noise-std", "0.1",
    ]  # fmt: skip
    found = [
        ["train", [*mlp, *common, "--out", str(out / "mlp")]],
        ["train", [*layerwise, *common, "--out", str(out / "layerwise")]],
    ]
    if framework == "torch":
        found.append(["train", [*conv, *common, "--out", str(out / "conv")]])
    for name, flags in DICTIONARIES.items():
        found.append(["train_sae", dictionary_flags(base, out / name, flags, common)])
    return found


def dictionary_flags(base, out, flags, common, steps=STEPS) -> list:
    return [
        "--cache", str(base / "acts"), "--d-sae", "96", "--k", "4",
        "--batch-size", "64", "--eval-tokens", "128", "--log-every", "4",
        "--checkpoint-every", "4", "--learning-rate", "0.003", "--aux-k", "8",
        "--dead-tokens", "64", "--warmup-steps", "0", "--decay-steps", "0",
        "--steps", str(steps), *flags, *common, "--out", str(out),
    ]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment() -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROC", "JAX_PROCESS_ID"))
        and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(JAX_PLATFORMS="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)  # one device per process
    return env


def start(framework: str, processes: int, spec: dict, folder: pathlib.Path):
    """Popen objects running the driver on ``spec`` in ``processes`` processes."""
    folder.mkdir(parents=True, exist_ok=True)
    spec_path = folder / f"jobs-{framework}-{processes}-{time.monotonic_ns()}.json"
    spec_path.write_text(json.dumps(spec))
    env = environment()
    log = open(folder / f"{spec_path.stem}.log", "w")
    if processes == 1:
        command = [[sys.executable, str(DRIVER), str(spec_path)]]
        envs = [env]
    elif framework == "torch":
        command = [[
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
            str(processes), "--master_addr", "127.0.0.1", "--master_port",
            str(free_port()), str(DRIVER), str(spec_path),
        ]]  # fmt: skip
        envs = [env]
    else:
        address = f"127.0.0.1:{free_port()}"
        command = [[sys.executable, str(DRIVER), str(spec_path)]] * processes
        envs = [
            {
                **env,
                "JAX_COORDINATOR_ADDRESS": address,
                "JAX_NUM_PROCESSES": str(processes),
                "JAX_PROCESS_ID": str(i),
            }
            for i in range(processes)
        ]
    return [
        subprocess.Popen(c, cwd=ROOT, env=e, stdout=log, stderr=subprocess.STDOUT)
        for c, e in zip(command, envs)
    ], folder / f"{spec_path.stem}.log"


def finish(procs, log, timeout=540) -> str:
    """Wait for ``procs``; their output, after asserting that they all succeeded."""
    codes = [p.wait(timeout=timeout) for p in procs]
    text = log.read_text()
    assert codes == [0] * len(codes), text[-4000:]
    return text


def launched(base: pathlib.Path, framework: str, processes: int) -> pathlib.Path:
    """The folder of every job run by ``framework`` on ``processes`` processes, run
    once per session."""
    out = base / f"{framework}-{processes}"
    with filelock.FileLock(str(base / f"{out.name}.lock")):
        if not (out / "done").exists():
            procs, log = start(
                framework, processes, {"jobs": jobs(base, out, framework)}, out
            )
            text = finish(procs, log)
            (out / "done").write_text(text)
    return out


@pytest.fixture(scope="session")
def base(tmp_path_factory, worker_id):
    """One folder for every worker of the session (xdist's shared parent)."""
    root = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        root = root.parent
    folder = root / "distributed"
    folder.mkdir(exist_ok=True)
    return folder


def weights(folder: pathlib.Path, job: str) -> dict[str, np.ndarray]:
    path = folder / job / "model.safetensors"
    if job in DICTIONARIES:
        return load_dictionary(path)[0]
    return read_checkpoint(path)[0]


def relative(a: dict, b: dict) -> float:
    return max(
        float(np.max(np.abs(a[k] - b[k])) / max(np.max(np.abs(a[k])), 1e-12)) for k in a
    )


def absolute(a: dict, b: dict) -> float:
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def history(folder: pathlib.Path, job: str) -> list[dict]:
    with open(folder / job / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def assert_same_history(a: list[dict], b: list[dict], tol: float) -> None:
    assert len(a) == len(b)
    for row_a, row_b in zip(a, b):
        for key, value in row_a.items():
            if key in ("seconds", "tokens_per_s") or not isinstance(value, float):
                continue
            assert abs(value - row_b[key]) <= tol * max(1.0, abs(value)), key


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_two_processes_train_what_one_process_trains(base, framework):
    one = launched(base, framework, 1)
    two = launched(base, framework, 2)
    names = [
        j for j in ("mlp", "layerwise", "conv", *DICTIONARIES) if (one / j).exists()
    ]
    assert len(names) == (6 if framework == "torch" else 5)
    made = inputs(base)
    for job in names:
        a, b = weights(one, job), weights(two, job)
        assert relative(a, b) < 1e-5, (job, relative(a, b))
        rows = "layerwise/finetune" if job == "layerwise" else job
        assert_same_history(history(one, rows), history(two, rows), 1e-5)
        if job == "layerwise":  # its stages ran, each on both processes
            assert (two / job / "stage-2" / "model.safetensors").exists()
        elif job in DICTIONARIES:  # it trained
            rows = history(one, job)
            assert rows[-1]["fvu"] < rows[0]["fvu"], job
        else:
            init, _ = read_checkpoint(made[f"{job}_init"])
            assert relative(init, a) > 1e-3, f"{job} did not train"
    for job in DICTIONARIES:  # the dead-latent window saw the global batch
        rows_one, rows_two = history(one, job), history(two, job)
        assert [r["dead_fraction"] for r in rows_one] == [
            r["dead_fraction"] for r in rows_two
        ]
        if job != "jumprelu":
            assert any(r["aux"] > 0 for r in rows_one), "AuxK never ran"
    # process 0 alone wrote, and said its one line
    log = (two / "done").read_text()
    assert log.count(f"run directory: {two / 'mlp'}") == 1
    summary = json.loads((two / "topk" / "summary.json").read_text())
    assert summary["steps"] == STEPS


def test_jax_on_two_processes_trains_what_torch_ddp_trains_on_two(base):
    jax_two, torch_two = launched(base, "jax", 2), launched(base, "torch", 2)
    a, b = weights(jax_two, "mlp"), weights(torch_two, "mlp")
    assert relative(a, b) < 1e-5, relative(a, b)
    init, _ = read_checkpoint(inputs(base)["mlp_init"])
    assert relative(init, a) > 1e-2  # it trained
    for job, tol in (("topk", 2e-4), ("batchtopk", 2e-4), ("jumprelu", 2e-3)):
        a, b = weights(jax_two, job), weights(torch_two, job)
        assert absolute(a, b) <= tol, (job, absolute(a, b))
        # (JumpReLU: a pre-activation within rounding of theta may fire in one)
        assert [r["l0"] for r in history(jax_two, job)] == pytest.approx(
            [r["l0"] for r in history(torch_two, job)],
            abs=0.05 if job == "jumprelu" else 1e-5,
        )


def _die_and_resume(folder, framework, spec_jobs, resume_argv, processes_after):
    """Run ``spec_jobs`` on 2 processes with process 1 killed after its 2nd save (so
    a first checkpoint is surely written); then resume with ``resume_argv`` on
    ``processes_after`` processes."""
    spec = {"jobs": spec_jobs, "die": {"rank": 1, "after": 2}}
    procs, log = start(framework, 2, spec, folder)
    if framework == "jax":  # the launcher's part: when one process dies, end the rest
        deadline = time.monotonic() + 300
        while procs[1].poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert procs[1].returncode == -signal.SIGKILL, log.read_text()[-3000:]
        procs[0].kill()
    codes = [p.wait(timeout=300) for p in procs]
    assert codes != [0] * len(codes)  # the run did die
    script = spec_jobs[0][0]
    again, log = start(
        framework, processes_after, {"jobs": [[script, resume_argv]]}, folder
    )
    finish(again, log)


def test_a_torchrun_run_that_loses_a_process_resumes_to_the_same_weights(base):
    made_by_one = launched(base, "torch", 1)
    out = base / "die-torch" / "mlp"
    spec_jobs = jobs(base, out.parent, "torch")[:1]  # the MLP, 3 epochs
    _die_and_resume(
        out.parent, "torch", spec_jobs,
        ["--out", str(out), "--resume", "--quiet", "--device", "cpu"], 1,
    )  # fmt: skip
    assert relative(weights(made_by_one, "mlp"), weights(out.parent, "mlp")) < 1e-5
    assert len(history(out.parent, "mlp")) == EPOCHS

    out = base / "die-torch" / "topk"
    common = ["--framework", "torch", "--quiet", "--device", "cpu"]
    flags = dictionary_flags(base, out, DICTIONARIES["topk"], common)
    _die_and_resume(
        out.parent, "torch", [["train_sae", flags]],
        ["--out", str(out), "--resume", "--steps", str(STEPS), "--quiet",
         "--device", "cpu"], 2,
    )  # fmt: skip
    assert relative(weights(made_by_one, "topk"), weights(out.parent, "topk")) < 1e-5


def test_a_jax_multi_process_run_that_loses_a_process_resumes_on_one(base):
    made_by_one = launched(base, "jax", 1)
    out = base / "die-jax" / "batchtopk"
    common = ["--framework", "jax", "--quiet"]
    flags = dictionary_flags(base, out, DICTIONARIES["batchtopk"], common)
    _die_and_resume(
        out.parent, "jax", [["train_sae", flags]],
        ["--out", str(out), "--resume", "--steps", str(STEPS), "--quiet"], 1,
    )  # fmt: skip
    a, b = weights(made_by_one, "batchtopk"), weights(out.parent, "batchtopk")
    assert relative(a, b) < 1e-5
    rows = history(out.parent, "batchtopk")
    assert [r["step"] for r in rows] == [4, 8, 12]

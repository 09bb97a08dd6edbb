"""No run is ever lost: a folder that holds a run is refused unless overwrite or
resume; a new run writes nothing before its first epoch is saved; resume refuses
fewer epochs, a finished run and another preset; Ctrl-C is one line and exit 130;
the command line checks --out, --device and its flags before loading anything."""

import argparse
import os
import pathlib
import runpy
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import synthetic_data
from saecommon import cli, frameworks, recorder, rundir
from saecommon.config import ConfigError, SAEConfig
from saecommon.presets import PRESETS
from saecommon.progress import EpochProgress
from saecommon.train_config import RunConfig, TrainConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL = SAEConfig(input_dim=16, hidden_dims=(6,), topk=2)


def run_config(**train):
    fields = dict(epochs=2, batch_size=64, eval_batch_size=70, seed=3)
    fields.update(train)
    return RunConfig(MODEL, TrainConfig(**fields))


def trainer(name):
    return frameworks.load(name, "cpu").train


@pytest.fixture(params=["jax", "torch"])
def framework(request):
    return request.param


def snapshot(folder: pathlib.Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def interrupt_at(monkeypatch, epoch: int, step: int | None = None):
    """Raise KeyboardInterrupt (as Ctrl-C would) in ``epoch`` (from 0): after ``step``
    when the trainer reports steps, else when the epoch's metrics are read."""
    if step is not None:
        original = recorder.RunRecorder.step_done

        def step_done(self, done, steps):
            original(self, done, steps)
            if self.epoch == epoch and done == step:
                raise KeyboardInterrupt

        monkeypatch.setattr(recorder.RunRecorder, "step_done", step_done)
        return
    original = recorder.epoch_means

    def epoch_means(step_metrics, at, *args, **kwargs):
        if at == epoch:
            raise KeyboardInterrupt
        return original(step_metrics, at, *args, **kwargs)

    monkeypatch.setattr(recorder, "epoch_means", epoch_means)


def test_a_folder_that_holds_a_run_is_refused_and_left_as_it_was(framework, tmp_path):
    data = synthetic_data()
    trainer(framework)(run_config(), tmp_path, data=data, progress=False)
    before = snapshot(tmp_path)
    assert {"config.json", "metrics.jsonl", "summary.json"} <= set(before)
    for other in ("jax", "torch"):
        with pytest.raises(rundir.RunDirError) as err:
            trainer(other)(run_config(epochs=1, seed=9), tmp_path, data=data)
        message = str(err.value)
        assert f"already holds a finished {framework} run of mlp 16-6, top-2" in message
        assert "2 of 2 epochs done" in message
        assert "choose another output folder" in message
        assert "resume" in message and "overwrite" in message
    assert snapshot(tmp_path) == before


def test_overwrite_keeps_the_old_run_until_the_new_one_saves(framework, tmp_path):
    data = synthetic_data()
    trainer(framework)(run_config(), tmp_path, data=data, progress=False)
    before = snapshot(tmp_path)
    new = run_config(epochs=3, seed=5)
    with pytest.MonkeyPatch.context() as patch:  # dies in its first epoch
        interrupt_at(patch, epoch=0)
        with pytest.raises(recorder.TrainingInterrupted, match="nothing was written"):
            trainer(framework)(new, tmp_path, data=data, overwrite=True, progress=False)
    assert snapshot(tmp_path) == before  # config, model, state, pictures: untouched
    with pytest.MonkeyPatch.context() as patch:  # dies in its second epoch
        interrupt_at(patch, epoch=1)
        with pytest.raises(recorder.TrainingInterrupted, match="checkpoint is epoch 1"):
            trainer(framework)(new, tmp_path, data=data, overwrite=True, progress=False)
    # The new run's first epoch replaced the old run's files together; the old
    # summary and pictures are gone, and nothing is staged.
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"config.json", "metrics.jsonl", "model.safetensors",
                     "train_state.safetensors"}  # fmt: skip
    assert rundir.read_run_config(tmp_path) == new
    assert len(rundir.read_history(tmp_path)) == 1
    history = trainer(framework)(new, tmp_path, data=data, resume=True, progress=False)
    assert [row["epoch"] for row in history] == [1, 2, 3]


def test_an_interrupted_first_epoch_writes_nothing(framework, tmp_path):
    out = tmp_path / "run"
    with pytest.MonkeyPatch.context() as patch:
        interrupt_at(patch, epoch=0)
        with pytest.raises(recorder.TrainingInterrupted) as err:
            trainer(framework)(run_config(), out, data=synthetic_data(), progress=False)
    steps = ", after step 5 of 5" if framework == "torch" else ""  # jax: a scan
    assert str(err.value) == (
        f"interrupted in epoch 1 of 2{steps}; no epoch finished, so nothing was written"
    )
    assert not err.value.resumable and not out.exists()


def test_an_interruption_says_the_step_and_the_checkpoint(tmp_path, monkeypatch):
    # torch reports its steps (so does jaxsae's host loop; its scan has no host
    # between steps).
    interrupt_at(monkeypatch, epoch=1, step=3)
    with pytest.raises(recorder.TrainingInterrupted) as err:
        trainer("torch")(run_config(), tmp_path, data=synthetic_data(), progress=False)
    assert str(err.value) == (
        "interrupted in epoch 2 of 2, after step 3 of 5; the last checkpoint is "
        f"epoch 1 ({tmp_path / 'train_state.safetensors'})"
    )
    assert err.value.resumable and isinstance(err.value, KeyboardInterrupt)
    assert len(rundir.read_history(tmp_path)) == 1


class _CtrlCWhenCollected:
    """Its ``__del__`` gets a Ctrl-C: Python drops the KeyboardInterrupt raised there
    and reports it as "Exception ignored in", as it does in JAX's gc callback."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)  # the handler runs here and raises


def test_a_ctrl_c_that_python_drops_still_stops_at_the_next_epoch(
    framework, tmp_path, monkeypatch
):
    """A SIGINT whose KeyboardInterrupt Python drops (raised in a ``__del__`` or a
    garbage-collector callback) is not lost: training stops at the next epoch
    boundary, with no "Exception ignored" traceback, and the handlers before
    training are back after."""
    original = recorder.RunRecorder.save

    def save_then_lose_a_ctrl_c(self, row, *args, **kwargs):
        original(self, row, *args, **kwargs)
        if row["epoch"] == 1:
            _CtrlCWhenCollected()  # collected at once

    monkeypatch.setattr(recorder.RunRecorder, "save", save_then_lose_a_ctrl_c)
    reported = []  # what would print "Exception ignored in ..."
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    before = signal.getsignal(signal.SIGINT), sys.unraisablehook
    with pytest.raises(recorder.TrainingInterrupted, match="in epoch 2 of 4"):
        trainer(framework)(
            run_config(epochs=4), tmp_path / "run", data=synthetic_data(),
            progress=False,
        )  # fmt: skip
    assert (signal.getsignal(signal.SIGINT), sys.unraisablehook) == before
    assert len(rundir.read_history(tmp_path / "run")) == 1
    assert not [r for r in reported if isinstance(r.exc_value, KeyboardInterrupt)]


def test_resume_refuses_fewer_epochs_and_a_finished_run(framework, tmp_path):
    data = synthetic_data()
    trainer(framework)(run_config(), tmp_path, data=data, progress=False)
    config = (tmp_path / "config.json").read_bytes()
    with pytest.raises(ValueError, match="has trained 2 epochs: resuming it to 1"):
        trainer(framework)(run_config(epochs=1), tmp_path, data=data, resume=True)
    with pytest.raises(ValueError, match="has finished all 2 of its epochs"):
        trainer(framework)(run_config(), tmp_path, data=data, resume=True)
    assert (tmp_path / "config.json").read_bytes() == config  # still 2 epochs
    with pytest.raises(rundir.RunDirError, match="ask for one of them"):
        rundir.check_out_dir(tmp_path, resume=True, overwrite=True)


def test_out_dir_checks_say_what_is_wrong(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(rundir.RunDirError, match="is a file, not a folder"):
        rundir.check_out_dir(afile)
    with pytest.raises(rundir.RunDirError, match="afile is a file"):
        rundir.check_out_dir(afile / "run")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # root may write anyway
            with pytest.raises(rundir.RunDirError, match="is not writable"):
                rundir.check_out_dir(locked / "run")
    finally:
        locked.chmod(0o700)
    assert rundir.check_out_dir(tmp_path / "new" / "run") is False
    assert not (tmp_path / "new").exists()  # checking creates nothing


def parse(*argv):
    return cli.run_config_from_args(cli.build_parser().parse_args(list(argv)))


def test_resume_refuses_another_preset_and_fewer_epochs_from_the_flags(tmp_path):
    (tmp_path / "config.json").write_text(PRESETS["mnist-topk"].to_json())
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n')
    out = str(tmp_path)
    assert parse("--out", out, "--resume", "--preset", "mnist-topk").model == (
        PRESETS["mnist-topk"].model
    )
    with pytest.raises(ConfigError, match="--preset mnist-kl is not the run in"):
        parse("--out", out, "--resume", "--preset", "mnist-kl")
    with pytest.raises(ConfigError, match="resuming it to 1 epochs.*give --epochs > 2"):
        parse("--out", out, "--resume", "--epochs", "1")
    with pytest.raises(ConfigError, match="say which"):
        parse("--resume")


def test_the_default_run_folder_is_numbered_past_earlier_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(out=None, preset="mnist-topk", framework="torch")
    assert cli.default_run_dir(args) == os.path.join("runs", "mnist-topk-torch")
    os.makedirs("runs/mnist-topk-torch")  # empty: still free
    assert cli.default_run_dir(args) == os.path.join("runs", "mnist-topk-torch")
    pathlib.Path("runs/mnist-topk-torch/config.json").write_text("{}")
    os.makedirs("runs/mnist-topk-torch-2")
    pathlib.Path("runs/mnist-topk-torch-2/model.safetensors").write_text("")
    assert cli.default_run_dir(args) == os.path.join("runs", "mnist-topk-torch-3")


def test_flags_that_make_no_sense_are_refused():
    with pytest.raises(ConfigError, match=r"hidden_dims\[0\] must be >= 1, got -64"):
        parse("--hidden-dims=-64")
    assert parse("--hidden-dims", "128,32").model.hidden_dims == (128, 32)
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--activation", "tanhh"])
    evaluate = runpy.run_path(str(ROOT / "scripts" / "evaluate.py"))
    with pytest.raises(SystemExit):
        evaluate["build_parser"]().parse_args(["run", "--batch-size", "0"])


def test_help_explains_every_flag_with_its_values_and_the_presets_defaults():
    plain = cli.build_parser().format_help()
    topk = cli.build_parser("mnist-topk").format_help()
    for name in ("run", "output", "model", "sparsity", "training", "data"):
        assert f"\n{name}:\n" in plain
    assert "(default: None)" not in plain and "TRAINCONFIG" not in plain
    assert "--activation {relu,leaky_relu,sigmoid" in plain
    assert "--optimizer {adam,adamw,sgd}" in plain
    assert "--noise {none,gaussian,masking}" in plain
    flat = " ".join(plain.split())
    assert "Per-sample top-k: keep the k largest code units of each sample. " in flat
    assert "(default: none)" in flat and "(default: 64)" in flat  # topk, hidden_dims
    flat_topk = " ".join(topk.split())
    assert "(preset mnist-topk: 16)" in flat_topk  # its topk
    assert "numbered -2, -3" in flat and "--data-dir DIR" in flat
    docs = cli.field_docs(TrainConfig)
    assert docs["epochs"] == "Passes over the training set."


def test_a_device_the_framework_cannot_reach_is_one_line():
    with pytest.raises(frameworks.DeviceError, match="unknown device 'foo'"):
        frameworks.load("torch", "foo")
    with pytest.raises(frameworks.DeviceError, match="JAX cannot run on 'cuda'"):
        if frameworks.load("jax").device != "cpu":
            pytest.skip("JAX sees a GPU here")
        frameworks.load("jax", "cuda")
    assert frameworks.load("jax", "cpu").device == "cpu"
    with pytest.raises(frameworks.DeviceError, match="there is no 'cpu:3'"):
        frameworks.load("jax", "cpu:3")


def test_a_process_of_the_other_frameworks_launcher_is_refused(tmp_path, capsys):
    """train.py started by torchrun with --framework jax (or by jax.distributed's
    variables with torch) would train alone in every process into one folder."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import train as train_script

    for variables, framework, launcher in (
        ({"WORLD_SIZE": "2", "RANK": "0"}, "jax", "torchrun"),
        ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1"}, "torch", "jax.distributed"),
    ):
        with pytest.MonkeyPatch.context() as env:
            for name, value in variables.items():
                env.setenv(name, value)
            argv = ["--framework", framework, "--out", str(tmp_path / framework)]
            assert train_script.main([*argv, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert f"one of several started by {launcher}" in err
        assert (
            f"Train with --framework {'torch' if framework == 'jax' else 'jax'}" in err
        )
        assert not (tmp_path / framework).exists()
    frameworks.check_launcher("jax", {"WORLD_SIZE": "1"})  # torchrun, one process
    both = {"WORLD_SIZE": "2", "JAX_COORDINATOR_ADDRESS": "h:1"}
    frameworks.check_launcher("jax", both)  # each joins its own
    frameworks.check_launcher("torch", both)


def test_a_batch_that_does_not_split_over_the_processes_is_refused():
    from torchsae import distributed

    with pytest.raises(
        ValueError,
        match=r"batch_size 15 does not divide by the 2 "
        r"processes; .* fewer processes \(--nproc_per_node\)",
    ):
        distributed.check_batch_divides(15, 2)
    distributed.check_batch_divides(16, 2)


def test_torchrun_with_more_processes_than_gpus_says_so(monkeypatch):
    from torchsae import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(distributed.torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="process 1 needs a GPU of its own, but"):
        distributed.init_from_env("cuda")


def run_main(argv, capsys):
    main = runpy.run_path(str(ROOT / "scripts" / "train.py"))["main"]
    code = main(argv)
    return code, capsys.readouterr()


def test_the_command_fails_in_one_line_before_loading_data(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = {
        ("--out", str(afile / "run")): "afile is a file",
        ("--device", "foo", "--out", str(tmp_path / "a")): "unknown device 'foo'",
        ("--framework", "torch", "--device", "cuda:7", "--out", str(tmp_path / "b")): (
            "torch"
        ),
    }
    for argv, words in cases.items():
        tic = time.perf_counter()
        code, out = run_main(list(argv), capsys)
        assert code == 2 and words in out.err, out.err
        assert out.err.count("\n") == 1 and out.err.startswith("error: ")
        assert time.perf_counter() - tic < 30  # no data was loaded (a generous bound)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_ctrl_c_is_one_line_and_exit_130(tmp_path):
    out = tmp_path / "run"
    argv = ["train.py", "--preset", "mnist-topk", "--epochs", "100", "--batch-size"]
    argv += ["3000", "--out", str(out)]
    # A child started from a background shell may inherit SIGINT ignored; restore
    # Python's handler as an interactive terminal would have it.
    code = (
        "import runpy, signal, sys; "
        "signal.signal(signal.SIGINT, signal.default_int_handler); "
        f"sys.argv = {argv!r}; "
        "sys.exit(runpy.run_path('scripts/train.py', run_name='__main__'))"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in child.stdout:  # one plain line per epoch (not a terminal)
            if line.startswith("epoch 1/100 "):
                break
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 130, err
    assert err.count("\n") == 1, err
    assert err.startswith("interrupted in epoch ")
    assert "the last checkpoint is epoch " in err
    assert err.strip().endswith(
        f"continue with: python scripts/train.py --out {out} --resume"
    )
    history = rundir.read_history(out)
    assert len(history) >= 1 and not (out / "summary.json").exists()


def test_a_long_epoch_shows_its_steps_in_a_log(capsys, monkeypatch):
    monkeypatch.setattr(EpochProgress, "LOG_EVERY", 0.0)
    bar = EpochProgress(3, initial=1)
    bar.step(2, 5)
    bar.step(5, 5)  # the epoch's own line follows; no step line for the last step
    bar.update({"epoch": 2, "train/loss": 0.5})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("epoch 2/3 step 2/5 (")
    assert lines[1].startswith("epoch 2/3 train loss=0.5 ")
    assert len(lines) == 2


def test_the_printed_summary_has_one_order_in_both_packages():
    summary = {
        "epochs": 1,
        "train_seconds": 1.0,
        "final": {"test/l0": 3.0, "test/recon": 0.25, "test/loss": 0.5, "test/aa": 1},
    }
    line = recorder.format_summary(summary).splitlines()[1]
    assert line.split() == ["test", "loss=0.5", "recon=0.25", "l0=3", "aa=1"]
    assert np.isclose(float(line.split()[1].split("=")[1]), 0.5)

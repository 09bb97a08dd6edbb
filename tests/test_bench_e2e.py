"""scripts/bench_e2e.py: one training command's wall time, split into its parts."""

import json
import os
import pathlib
import sys

import pytest

from saecommon import rundir

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_e2e  # noqa: E402


def test_the_parts_come_from_the_history_and_the_files_times(tmp_path):
    """A run of three epochs (4 s, 1 s, 1.5 s) begun at t=100: its config written at
    the first save (t=110.2), its metrics at the last (t=117.0), its summary at
    t=119.5, the process gone at t=120."""
    (tmp_path / rundir.HISTORY).write_text(
        "".join(
            json.dumps({"epoch": i + 1, "seconds": s}) + "\n"
            for i, s in enumerate([4.0, 1.0, 1.5])
        )
    )
    for name, when in (
        (rundir.CONFIG, 110.2),
        (rundir.HISTORY, 117.0),
        (rundir.SUMMARY, 119.5),
    ):
        (tmp_path / name).touch()
        os.utime(tmp_path / name, (when, when))
    parts = bench_e2e.breakdown(tmp_path, 100.0, 120.0)
    expected = {
        "wall_s": 20.0,
        "start_s": 6.2,  # the first epoch began at 110.2 - 4
        "first_epoch_s": 4.0,
        "compile_s": 2.75,  # 4 less the median of 1 and 1.5
        "epoch_s": 1.25,
        "epochs_s": 6.5,
        "saves_s": 4.3,  # 117 - 106.2 - 6.5
        "finish_s": 2.5,
        "exit_s": 0.5,
        "outside_s": 13.5,
    }
    assert parts == pytest.approx(expected, abs=1e-9)
    assert sum(
        parts[k] for k in ("start_s", "epochs_s", "saves_s", "finish_s", "exit_s")
    ) == pytest.approx(parts["wall_s"])


def test_a_real_command_is_timed_and_its_folder_removed(tmp_path, capsys, monkeypatch):
    """torchsae's ivlabs-l1 for 2 epochs of one batch each, through train.py."""
    out, work = tmp_path / "rows.json", tmp_path / "work"
    monkeypatch.setattr(bench_e2e.tempfile, "mkdtemp", lambda prefix: str(work))
    assert (
        bench_e2e.main(
            [
                "--epochs",
                "2",
                "--samples",
                "1200",
                "--frameworks",
                "torch",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert (row["framework"], row["epochs"], row["samples"]) == ("torch", 2, 1200)
    parts = ("start_s", "epochs_s", "saves_s", "finish_s", "exit_s")
    assert all(row[k] > 0 for k in parts)
    assert sum(row[k] for k in parts) == pytest.approx(row["wall_s"], rel=1e-9)
    assert row["epochs_s"] == pytest.approx(row["first_epoch_s"] + row["epoch_s"])
    printed = capsys.readouterr().out
    assert "ivlabs-l1: 2 epochs of 1200 MNIST training images" in printed
    assert not work.exists()


def test_bad_arguments_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench_e2e.main(["--frameworks", "jax,tensorflow"])
    assert "--frameworks: jax and/or torch" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_e2e.main(["--keep", str(tmp_path)])
    assert "exists; name a new folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_e2e.main(["--epochs", "0"])
    assert "--epochs: at least 1" in capsys.readouterr().err

"""Runs training commands in one process of a (possibly) multi-process run, for
tests/test_distributed.py and parity_tests/test_distributed_parity.py.

    python tests/distributed_driver.py JOBS.json

JOBS.json: {"jobs": [[script, [argv...]], ...], "die": {"rank": R, "after": N}}.
Each job is ``scripts/<script>.py``'s ``main(argv)``, run in turn in this process
(torchrun's or jax.distributed's process group is joined once, by the first). With
"die", process R kills itself (SIGKILL, as a crash or an OOM killer would) right
after its N-th save: an epoch of train.py, a checkpoint of train_sae.py. Exits
with the first non-zero status of a job.
"""

from __future__ import annotations

import json
import os
import signal
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path[:0] = [ROOT, os.path.join(ROOT, "scripts")]


def rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("JAX_PROCESS_ID", "0")))


def die_after(saves: int) -> None:
    """SIGKILL this process after its ``saves``-th save (either trainer's)."""
    from saecommon import dict_run, recorder

    count = {"saves": 0}

    def counted(save):
        def wrapper(*args, **kwargs):
            save(*args, **kwargs)
            count["saves"] += 1
            if count["saves"] == saves:
                os.kill(os.getpid(), signal.SIGKILL)

        return wrapper

    recorder.RunRecorder.save = counted(recorder.RunRecorder.save)
    dict_run._save = counted(dict_run._save)


def main(path: str) -> int:
    with open(path) as f:
        spec = json.load(f)
    die = spec.get("die")
    if die is not None and die["rank"] == rank():
        die_after(die["after"])
    for script, argv in spec["jobs"]:
        module = __import__(script)
        status = module.main(argv)
        if status:
            return status
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

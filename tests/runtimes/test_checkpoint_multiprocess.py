"""spmd.checkpoint.save from every process of a 4-process tcp job into one folder: each process
writes its own shards, process 0 publishes the step. A process SIGKILLed while writing its
shards, and process 0 SIGKILLed between writing index.json and renaming the step into place,
leave the previous step whole; the restarted job restores it bit for bit (also onto other
shardings), goes on saving, and the last step restored in this process (local runtime) holds
exactly the saved values. No temp file is left behind."""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spmd import checkpoint

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "runtimes" / "scripts" / "save_sharded.py"
MPI_VARIABLES = (
    "PMI_SIZE",
    "OMPI_COMM_WORLD_SIZE",
    "MPI_LOCALNRANKS",
    "SPMD_RUNTIME",
    "RANK",
    "WORLD_SIZE",
    "SPMD_RESTART",
)


@pytest.mark.timeout(150)  # 18 s measured on a lightly loaded 2-core machine
def test_four_processes_save_into_one_folder_and_survive_kills_during_saves(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in MPI_VARIABLES}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", SPMD_COLLECTIVE_TIMEOUT="60")
    folder = tmp_path / "checkpoints"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.cli",
            "--mesh",
            "2x2",
            "--axes",
            "data,model",
            "--runtime",
            "tcp",
            "--max-restarts",
            "2",
            str(SCRIPT),
            str(folder),
            "--steps",
            "6",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=130,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "process 2 (pid" in done.stderr and "process 0 (pid" in done.stderr, done.stderr
    # killed in step 3's shards: step 2 is the latest; killed before publishing 4: step 3 is
    assert re.findall(r"RESUMED step=(\d+)", done.stdout) == ["0", "2", "3"], done.stdout
    saved = [int(s) for s in re.findall(r"SAVED step=(\d+)", done.stdout)]
    assert saved == [1, 2, 3, 4, 5, 6], done.stdout
    assert sorted(os.listdir(folder)) == ["LATEST", "step_00000005", "step_00000006"]
    assert not [
        name
        for name in os.listdir(folder / "step_00000006")
        if not re.fullmatch(r"index\.json|leaf_\d{4}\.shard_\d{3}\.npy", name)
    ]
    want = runpy.run_path(str(SCRIPT))["values"](6)
    restored = checkpoint.restore(str(folder))
    assert sorted(restored) == sorted(want)
    for name, value in want.items():
        got = np.asarray(restored[name])
        assert got.dtype == np.asarray(value).dtype
        assert got.tobytes() == np.asarray(value).tobytes(), name

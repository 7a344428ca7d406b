"""The MPI transport's cached fast plans: right results, held buffers kept, the plan cache bounded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from launch.cli import mpiexec_path  # the mpich wheel's, beside this Python

pytest.importorskip("mpi4py")

from mpi4py import MPI

from collectives.mpi_plans import leading, move_type

HELPER = Path(__file__).resolve().parent / "mpi_fast_paths_helper.py"
REPO = Path(__file__).resolve().parents[2]


def test_blocks_lie_in_order_only_when_the_dims_before_have_one_element() -> None:
    assert leading((8, 3), 0)
    assert leading((1, 1, 8, 3), 2)
    assert not leading((2, 8), 1)
    assert leading((), 0)


def test_moves_use_the_element_type_and_bytes_where_mpi_has_none() -> None:
    assert move_type(np.dtype(np.float32)) == MPI.FLOAT
    assert move_type(np.dtype(np.int64)) == MPI.Datatype.fromcode("l")
    assert move_type(np.dtype(ml_dtypes.bfloat16)) == MPI.BYTE
    assert move_type(np.dtype(np.float16)) == MPI.BYTE
    assert move_type(np.dtype(">f4")) == MPI.BYTE


@pytest.mark.mpi
def test_fast_plans_match_numpy_keep_held_results_and_stay_bounded() -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    command = [mpiexec_path(), "-n", "4", sys.executable, str(HELPER)]
    done = subprocess.run(
        command, check=False, capture_output=True, text=True, timeout=120, env=env
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "FAST FAIL" not in output, output[-4000:]
    assert output.count("FAST ok") == 8, output[-4000:]

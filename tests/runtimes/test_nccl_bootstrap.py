"""The NCCL bootstrap between MPI ranks sends fixed-size byte rows through mpi4py's buffer
Allgather: nothing a peer sends is unpickled. The exchange itself runs under mpiexec without a
GPU (made-up ids); the rows are checked byte by byte here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from collectives.nccl import NCCL_ID_BYTES, ROW_BYTES, find_id, pack_row
from spmd.errors import MeshError

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "runtimes" / "scripts" / "nccl_exchange.py"


def test_a_row_is_the_key_a_flag_and_the_id_bytes() -> None:
    uid = tuple(range(-128, 0))
    row = pack_row(0x0102030405060708, uid)
    assert row.dtype == np.uint8 and row.shape == (ROW_BYTES,)
    assert bytes(row[:8]) == bytes([8, 7, 6, 5, 4, 3, 2, 1])  # little-endian int64
    assert row[8] == 1 and bytes(row[9:]) == bytes(b & 0xFF for b in uid)
    assert not pack_row(5, None)[8:].any()
    rows = np.stack([pack_row(5, None), pack_row(0x0102030405060708, uid), pack_row(7, None)])
    assert find_id(rows, ("x",), 0x0102030405060708) == uid


@pytest.mark.parametrize("uid", [(1, 2, 3), tuple([300] * NCCL_ID_BYTES)])
def test_a_malformed_id_is_refused(uid) -> None:
    with pytest.raises(MeshError, match="an NCCL unique id is 128 bytes"):
        pack_row(1, uid)


def test_no_row_for_the_group_is_an_error_naming_it() -> None:
    with pytest.raises(MeshError, match=r"no NCCL unique id for the group of axes \('x',\)"):
        find_id(np.stack([pack_row(5, None)]), ("x",), 5)


@pytest.mark.timeout(120)  # 4 s measured on a lightly loaded 2-core machine
def test_four_mpi_ranks_exchange_ids_through_buffers_only() -> None:
    pytest.importorskip("mpi4py")
    from launch.cli import mpiexec_path

    env = {k: v for k, v in os.environ.items() if k not in ("PMI_SIZE", "SPMD_RUNTIME")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [mpiexec_path(), "-n", "4", sys.executable, str(SCRIPT)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # (the ranks' lines may interleave in mpiexec's output)
    assert sorted(re.findall(r"EXCHANGED rank=(\d) groups=3", done.stdout)) == list("0123"), (
        done.stdout
    )

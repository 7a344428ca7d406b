"""One suite over the null, local and MPI transports: every collective against numpy oracles."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from launch.cli import mpiexec_path  # the mpich wheel's, beside this Python

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cases import MESHES, cases_for, expected, make_input, mesh_axes_groups, run_checks

from collectives import (
    LocalWorld,
    NullCommunicator,
    group_index,
    group_members,
    group_size,
    run_on_devices,
)
from spmd.mesh import group_key

HELPER = Path(__file__).resolve().parent / "mpi_helper.py"
REPO = Path(__file__).resolve().parents[2]
MESH_IDS = ["x".join(map(str, shape)) for shape, _ in MESHES]


def mpiexec(
    *args: str, timeout: float = 120.0, env_extra: dict[str, str] | None = None, check: bool = True
) -> str:
    """Runs the MPI helper on 8 ranks; returns its output, failing the test on a bad exit
    (unless check=False: a job that loses a rank may be torn down by mpiexec)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **(env_extra or {}))
    command = [mpiexec_path(), "-n", "8", sys.executable, str(HELPER), *args]
    done = subprocess.run(
        command, check=False, capture_output=True, text=True, timeout=timeout, env=env
    )
    output = done.stdout + done.stderr
    if check:
        assert done.returncode == 0, f"mpiexec exited {done.returncode}:\n{output[-4000:]}"
    return output


@pytest.mark.parametrize("mesh_shape,axis_names", MESHES, ids=MESH_IDS)
def test_group_helpers_partition_the_mesh_in_row_major_order(mesh_shape, axis_names) -> None:
    size = int(np.prod(mesh_shape))
    grid = np.arange(size).reshape(mesh_shape)
    for axes in mesh_axes_groups(axis_names):
        groups = {}
        for rank in range(size):
            members = group_members(rank, mesh_shape, axis_names, axes)
            assert len(members) == group_size(mesh_shape, axis_names, axes)
            assert members[group_index(rank, mesh_shape, axis_names, axes)] == rank
            groups.setdefault(group_key(rank, mesh_shape, axis_names, axes), members)
            assert groups[group_key(rank, mesh_shape, axis_names, axes)] == members
        # oracle: move the group axes (in the given order) last, flatten them
        positions = [axis_names.index(a) for a in axes]
        others = [p for p in range(len(mesh_shape)) if p not in positions]
        table = grid.transpose(others + positions).reshape(-1, len(members) if axes else 1)
        assert sorted(map(tuple, table.tolist())) == sorted(map(tuple, groups.values()))


@pytest.mark.parametrize("mesh_shape,axis_names", MESHES, ids=MESH_IDS)
def test_local_transport_matches_numpy_oracle(mesh_shape, axis_names) -> None:
    world = LocalWorld(mesh_shape, axis_names, timeout=60)
    results = run_on_devices(world, run_checks)
    failures = [f for _, device_failures in results for f in device_failures]
    assert results[0][0] > 50
    assert not failures, "\n".join(failures[:20])


@pytest.mark.parametrize("mesh_shape,axis_names", MESHES, ids=MESH_IDS)
def test_null_transport_records_calls_and_returns_right_shapes(mesh_shape, axis_names) -> None:
    comm = NullCommunicator(3, mesh_shape, axis_names)
    for axes in mesh_axes_groups(axis_names):
        members = group_members(3, mesh_shape, axis_names, axes)
        for case in cases_for(len(members)):
            x = make_input(3, case)
            got = getattr(comm, case.kind)(x, axes, **case.kwargs, where="f.py:1")
            want = expected(case, [make_input(r, case) for r in members], members.index(3))
            assert (got.shape, got.dtype) == (want.shape, want.dtype), case.name
            if len(members) == 1:
                np.testing.assert_array_equal(got, want)
            record = comm.records[-1]
            assert (record.kind, record.axes, record.loc) == (case.kind, axes, "f.py:1")
            assert (record.shape, record.dtype, record.bytes) == (x.shape, x.dtype, x.nbytes)
    comm.barrier()
    assert comm.records[-1].kind == "barrier"


@pytest.fixture(scope="module")
def mpi_suite_output() -> str:
    """One mpiexec launch runs every case on every mesh."""
    return mpiexec("suite", timeout=180)


@pytest.mark.mpi
@pytest.mark.parametrize("mesh_shape,axis_names", MESHES, ids=MESH_IDS)
def test_mpi_transport_matches_numpy_oracle(mpi_suite_output, mesh_shape, axis_names) -> None:
    results = re.findall(
        rf"RESULT {re.escape(str(mesh_shape))} rank=(\d+) checks=(\d+) failures=(\d+)",
        mpi_suite_output,
    )
    assert sorted(int(rank) for rank, _, _ in results) == list(range(8)), mpi_suite_output[-3000:]
    assert all(int(checks) > 50 for _, checks, _ in results)
    failures = [
        line for line in mpi_suite_output.splitlines() if line.startswith(f"FAIL {mesh_shape}")
    ]
    assert not failures, "\n".join(failures[:20])
    assert all(int(count) == 0 for _, _, count in results)


@pytest.mark.mpi
def test_mpi_transport_without_timeout_uses_blocking_calls_and_matches(mpi_suite_output) -> None:
    results = re.findall(
        r"RESULT blocking rank=(\d+) checks=(\d+) failures=(\d+)", mpi_suite_output
    )
    assert sorted(int(rank) for rank, _, _ in results) == list(range(8)), mpi_suite_output[-3000:]
    failures = [line for line in mpi_suite_output.splitlines() if line.startswith("FAIL blocking")]
    assert not failures, "\n".join(failures[:20])

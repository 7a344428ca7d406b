"""Timeouts and failures: a missing or failing device must give an error, never a hang."""

from __future__ import annotations

import re
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_transports import mpiexec

from collectives import LocalWorld, NullCommunicator, run_on_devices
from collectives.watchdog import ABORT_GRACE_S
from spmd.errors import CollectiveTimeoutError, MeshError, RemoteError, ShapeError


def test_local_device_that_never_joins_gives_timeout_naming_kind_axes_and_line(monkeypatch):
    monkeypatch.setenv("SPMD_COLLECTIVE_TIMEOUT", "1")
    world = LocalWorld((2, 4), ("data", "model"))
    errors: list[BaseException] = []

    def device(rank: int) -> None:
        try:
            world.communicator(rank).all_gather(np.ones(3), ("model",), 0, where="train.py:42")
        except CollectiveTimeoutError as exc:
            errors.append(exc)

    # device 7 never joins: the other member groups of 'model' are complete, {4,5,6} time out
    threads = [threading.Thread(target=device, args=(rank,)) for rank in range(7)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    elapsed = time.monotonic() - start
    assert len(errors) == 3
    assert 0.9 < elapsed < 5
    message = str(errors[0])
    assert "all_gather" in message and "('model',)" in message and "train.py:42" in message
    assert "[3] never joined" in message


def test_local_failing_device_wakes_others_with_remote_error_and_is_reraised():
    world = LocalWorld((8,), ("x",), timeout=30)
    seen: dict[int, BaseException] = {}

    def program(comm):
        if comm.rank == 5:
            raise ValueError("boom on five")
        try:
            return comm.all_reduce(np.ones(2), "x")
        except RemoteError as exc:
            seen[comm.rank] = exc
            raise

    start = time.monotonic()
    with pytest.raises(ValueError, match="boom on five") as info:
        run_on_devices(world, program)
    assert time.monotonic() - start < 5
    assert any("device 5" in note for note in info.value.__notes__)
    assert sorted(seen) == [0, 1, 2, 3, 4, 6, 7]
    assert "device 5 failed" in str(seen[0]) and "boom on five" in str(seen[0])
    with pytest.raises(RemoteError):  # a dead world refuses new collectives
        world.communicator(0).barrier()


def test_run_on_devices_returns_results_in_rank_order():
    world = LocalWorld((2, 2), ("a", "b"))
    results = run_on_devices(world, lambda comm: comm.all_reduce(np.array(comm.rank), ("a",)))
    assert [int(r) for r in results] == [2, 4, 2, 4]


def test_bad_arguments_raise_spmd_errors():
    comm = NullCommunicator(0, (2, 4), ("data", "model"))
    with pytest.raises(MeshError, match="unknown mesh axis 'batch'"):
        comm.all_reduce(np.ones(3), ("batch",))
    with pytest.raises(ShapeError, match="not divisible by the group size 4"):
        comm.reduce_scatter(np.ones(6), ("model",), 0)
    with pytest.raises(ShapeError, match="repeat"):
        comm.permute(np.ones(2), ("model",), [(0, 1), (0, 2)])


@pytest.mark.mpi
@pytest.mark.parametrize("how", ["finish", "hang"])
def test_mpi_rank_that_leaves_makes_the_others_time_out(how: str) -> None:
    # The MPI transport blocks in MPI; each rank's watchdog reports the stuck collective on
    # stderr, waits ABORT_GRACE_S for the others to report, then aborts the whole job.
    output = mpiexec(how, timeout=60, env_extra={"SPMD_COLLECTIVE_TIMEOUT": "2"}, check=False)
    ended = time.time()
    waiting = [float(t) for t in re.findall(r"WAITING rank=\d+ at=([\d.]+)", output)]
    assert waiting, output[-3000:]
    # the job ends within the timeout + the abort grace + a few seconds, never hangs
    assert ended - max(waiting) < 2 + ABORT_GRACE_S + 8, output[-3000:]
    # ranks print concurrently, so lines may interleave: match records, not lines
    reports = re.findall(
        r"CollectiveTimeoutError: (all_reduce over mesh axes \('x',\) waited more than 2 s "
        r"\(called at mpi_helper\.py:49\)) on MPI rank (\d+)",
        output,
    )
    assert sorted(int(rank) for _, rank in reports) == [0, 1, 2, 4, 5, 6, 7], output[-3000:]
    assert "at mpi_helper.py:49" in output and "aborts the MPI job" in output
    assert "NO-TIMEOUT" not in output

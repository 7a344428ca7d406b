"""Runs under mpiexec -n 8: every collective case on the MPI transport, or a failure scenario.

Prints one line per mesh ("RESULT <mesh> checks=N failures=M") and one per failure ("FAIL ...").
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from cases import MESHES, run_checks

from collectives.mpi import MPICommunicator


def run_suite() -> None:
    """Every case on every mesh; each rank reports its own failures."""
    for mesh_shape, axis_names in MESHES:
        comm = MPICommunicator(mesh_shape, axis_names)
        checks, failures = run_checks(comm)
        for failure in failures:
            print(f"FAIL {mesh_shape} {failure}", flush=True)
        print(
            f"RESULT {mesh_shape} rank={comm.rank} checks={checks} failures={len(failures)}",
            flush=True,
        )
        comm.close()
    mesh_shape, axis_names = MESHES[1]
    comm = MPICommunicator(mesh_shape, axis_names, timeout=0)  # blocking calls, no polling
    checks, failures = run_checks(comm)
    for failure in failures:
        print(f"FAIL blocking {failure}", flush=True)
    print(f"RESULT blocking rank={comm.rank} checks={checks} failures={len(failures)}", flush=True)


def run_missing_rank(how: str) -> None:
    """Rank 3 skips an all_reduce (finishes its script, or hangs); the others' watchdogs must
    report the stuck all_reduce (kind, axes, line, rank) and abort the job."""
    comm = MPICommunicator((8,), ("x",))
    comm.all_reduce(np.ones(4), "x")
    if comm.rank == 3:
        if how == "hang":
            time.sleep(60)
        return
    print(f"WAITING rank={comm.rank} at={time.time():.3f}", flush=True)
    comm.all_reduce(np.ones(4), "x", where="mpi_helper.py:49")
    print(f"NO-TIMEOUT rank={comm.rank}", flush=True)


def run_reuse() -> None:
    """A held result is never overwritten by a later call; a released one is reused."""
    comm = MPICommunicator((8,), ("x",))
    x = np.full(1000, comm.rank, np.float64)
    held = comm.all_reduce(x, "x")
    view = comm.all_gather(x, "x", 0)[::2]  # a view keeps the gathered buffer alive
    second = comm.all_reduce(x + 1, "x")
    gathered = comm.all_gather(x + 1, "x", 0)
    ok = held is not second and np.all(held == 28) and np.all(second == 36)
    ok = ok and np.array_equal(view, np.repeat(np.arange(8.0), 1000)[::2])
    ok = ok and np.array_equal(gathered, np.repeat(np.arange(1.0, 9.0), 1000))
    address = second.ctypes.data
    del second
    third = comm.all_reduce(x + 2, "x")
    ok = ok and third.ctypes.data == address and np.all(third == 44) and np.all(held == 28)
    print(f"REUSE {'ok' if ok else 'FAILED'} rank={comm.rank}", flush=True)


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "suite"
    if mode == "suite":
        run_suite()
    elif mode == "reuse":
        run_reuse()
    else:
        run_missing_rank(mode)

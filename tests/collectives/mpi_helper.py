"""Runs under mpiexec -n 8: every collective case on the MPI transport, or a failure scenario.

Prints one line per mesh ("RESULT <mesh> checks=N failures=M") and one per failure ("FAIL ...").
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from cases import MESHES, run_checks

from collectives import MPICommunicator
from spmd.errors import CollectiveTimeoutError


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
    """Rank 3 skips an all_reduce (finishes its script, or hangs); the others must time out."""
    comm = MPICommunicator((8,), ("x",))
    comm.all_reduce(np.ones(4), "x")
    if comm.rank == 3:
        if how == "hang":
            time.sleep(60)
        return
    start = time.monotonic()
    try:
        comm.all_reduce(np.ones(4), "x", where="mpi_helper.py:49")
    except CollectiveTimeoutError as exc:
        elapsed = time.monotonic() - start
        first = str(exc).splitlines()[0]
        print(f"TIMEOUT rank={comm.rank} after={elapsed:.2f} {first} | {exc.loc}", flush=True)
        time.sleep(1.0)  # let every rank report before the first exit makes mpiexec kill the rest
        os._exit(0)  # the collective is still pending: skip MPI_Finalize
    print(f"NO-TIMEOUT rank={comm.rank}", flush=True)


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "suite"
    if mode == "suite":
        run_suite()
    else:
        run_missing_rank(mode)

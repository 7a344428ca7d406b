"""The MPI runtime (multi-controller): every rank runs the user's script, traces and compiles
the same program, holds only its own device's shards, and runs the per-device program with
collectives through collectives.mpi on one communicator per mesh.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import numpy as np
from mpi4py import MPI

from collectives.mpi import MPICommunicator
from launch.local import run_collective
from spmd.errors import LaunchError
from spmd.interpreter import evaluate
from spmd.ir.graph import Op
from spmd.sharding import Device, Mesh


class MPIRuntime:
    """One device per MPI rank; Arrays hold None for the shards of other ranks."""

    kind = "mpi"

    def __init__(self, platform: str = "cpu", install_excepthook: bool = True):
        self.comm = MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self._devices = [Device(i, platform, process_index=i) for i in range(self.size)]
        self._meshes: dict[tuple, tuple[MPICommunicator | None, int | None]] = {}
        if install_excepthook:
            sys.excepthook = self._excepthook

    # -- processes and devices -------------------------------------------------------------
    def process_index(self) -> int:
        return self.rank

    def process_count(self) -> int:
        return self.size

    def devices(self) -> list[Device]:
        return list(self._devices)

    def local_devices(self) -> list[Device]:
        return [self._devices[self.rank]]

    def barrier(self) -> None:
        self.comm.Barrier()

    def shutdown(self) -> None:
        for comm, _ in self._meshes.values():
            if comm is not None:
                comm.close()
        self._meshes.clear()

    # -- shards ----------------------------------------------------------------------------
    def _mesh(self, mesh: Mesh) -> tuple[MPICommunicator | None, int | None]:
        """(communicator, my mesh position) of a mesh, made once; (None, None) if not in it.

        Every rank must call this for every mesh in the same order (Split is collective).
        """
        key = (mesh.axis_names, mesh.axis_sizes, mesh.device_ids)
        found = self._meshes.get(key)
        if found is not None:
            return found
        if len(set(mesh.device_ids)) != mesh.size or max(mesh.device_ids) >= self.size:
            raise LaunchError(f"mesh {mesh!r} uses devices {mesh.device_ids} but the MPI world "
                              f"has {self.size} (one per rank)")
        ids = list(mesh.device_ids)
        position = ids.index(self.rank) if self.rank in ids else None
        if ids == list(range(self.size)):
            sub = self.comm
        else:
            color = 0 if position is not None else MPI.UNDEFINED
            sub = self.comm.Split(color, position or 0)
        comm = None if position is None else MPICommunicator(mesh.axis_sizes, mesh.axis_names,
                                                             comm=sub)
        self._meshes[key] = (comm, position)
        return comm, position

    def put(self, shards: Sequence[Any], mesh: Mesh) -> list[Any]:
        """Keeps only this rank's shard."""
        return [s if device.id == self.rank else None for s, device in zip(shards, mesh.devices.flat)]

    def fetch(self, shards: Sequence[Any], mesh: Mesh) -> list[np.ndarray | None]:
        return list(shards)

    def run(self, partitioned: Any, mesh: Mesh, per_device: Sequence[Sequence[Any]],
            ) -> list[list[Any]]:
        """Runs this rank's per-device program; the other devices' results are None."""
        comm, position = self._mesh(mesh)
        results: list[list[Any]] = [[None] * len(partitioned.program.results)] * mesh.size
        if comm is None:
            return results

        def run_op(op: Op, inputs: list[np.ndarray]) -> list[np.ndarray]:
            return run_collective(comm, op, inputs)

        results = list(results)
        results[position] = evaluate(partitioned.program, per_device[position], run_op)
        return results

    # -- faults ----------------------------------------------------------------------------
    def _excepthook(self, kind: type, value: BaseException, trace: Any) -> None:
        """An uncaught exception on one rank ends the whole job (no rank left waiting)."""
        abort_job(self.rank, value)


def abort_job(rank: int, error: BaseException, code: int = 1) -> None:
    """Prints error's traceback once, naming the rank, then makes mpiexec end every rank."""
    text = "".join(traceback.format_exception(error)).rstrip()
    sys.stderr.write(f"[spmd rank {rank}] {text}\n")
    sys.stderr.flush()
    sys.stdout.flush()
    if MPI.COMM_WORLD.Get_size() > 1:
        MPI.COMM_WORLD.Abort(code)
    os._exit(code)

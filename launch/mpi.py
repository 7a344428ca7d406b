"""The MPI runtime (multi-controller): every rank runs the user's script, traces and compiles
the same program, holds only its own device's shards, and runs the per-device program with
collectives through collectives.mpi on one communicator per mesh.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

from mpi4py import MPI

from collectives.mpi import MPICommunicator
from launch.multicontroller import MultiControllerRuntime
from spmd.mesh import Mesh


class MPIRuntime(MultiControllerRuntime):
    """One device per MPI rank; Arrays hold None for the shards of other ranks."""

    kind = "mpi"
    world = "the MPI world"

    def __init__(self, platform: str = "cpu", install_excepthook: bool = True):
        self.comm = MPI.COMM_WORLD
        super().__init__(self.comm.Get_rank(), self.comm.Get_size(), platform)
        if install_excepthook:
            sys.excepthook = self._excepthook

    def barrier(self) -> None:
        self.comm.Barrier()

    def shutdown(self) -> None:
        for comm, _ in self._meshes.values():
            if comm is not None:
                comm.close()
        self._meshes.clear()

    def _communicator(
        self,
        mesh: Mesh,
        ids: list[int],
        position: int | None,
    ) -> MPICommunicator | None:
        """Splits the world communicator (collective: every rank calls it, in the mesh's ids)."""
        if ids == list(range(self.size)):
            sub = self.comm
        else:
            color = 0 if position is not None else MPI.UNDEFINED
            sub = self.comm.Split(color, position or 0)
        if position is None:
            return None
        return MPICommunicator(mesh.axis_sizes, mesh.axis_names, comm=sub)

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

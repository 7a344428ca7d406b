"""What every multi-controller runtime (mpi, tcp) shares: one device per process, every process
traces the same program and compiles its per-device part once with the device's backend
(backends.registry; the on-disk kernel cache makes every rank after the first compile free),
whose collectives call this process's communicator. Subclasses make the world (rank, size)
and one communicator per mesh; this module imports no transport.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from backends import registry
from launch.local import run_collective
from spmd.errors import LaunchError
from spmd.ir.graph import Op
from spmd.mesh import Device, Mesh


class MultiControllerRuntime:
    """One device per process; Arrays hold None for the shards of other processes."""

    kind = ""
    world = "the world"  # how errors name the set of processes

    def __init__(self, rank: int, size: int, platform: str = "cpu"):
        self.rank = rank
        self.size = size
        self._devices = [Device(i, platform, process_index=i) for i in range(size)]
        self._meshes: dict[tuple, tuple[Any, int | None]] = {}

    def _communicator(self, mesh: Mesh, ids: list[int], position: int | None) -> Any:
        """The communicator of mesh for this process (None when not in it); made once per mesh,
        in the same order on every process."""
        raise NotImplementedError

    def _device_communicator(self, mesh: Mesh, comm: Any, position: int) -> Any:
        """A communicator on device arrays for backends whose collectives stay on the device
        (gpu: NCCL, its unique ids exchanged through comm), made once per mesh."""
        key = ("device", mesh.axis_names, mesh.axis_sizes, mesh.device_ids)
        found = self._meshes.get(key)
        if found is None:
            from collectives.nccl import NcclCommunicator, exchange_through

            found = (
                NcclCommunicator(
                    position,
                    mesh.axis_sizes,
                    mesh.axis_names,
                    exchange_through(comm),
                    device_id=self.local_gpu(),
                ),
                position,
            )
            self._meshes[key] = found
        return found[0]

    def local_gpu(self) -> int:
        """This process's GPU: LOCAL_RANK (torchrun, spmd-launch), else the rank, modulo the
        GPUs this host has."""
        count = registry.get("gpu").device_count()
        return int(os.environ.get("LOCAL_RANK", self.rank)) % max(1, count)

    # -- processes and devices -------------------------------------------------------------
    def process_index(self) -> int:
        return self.rank

    def process_count(self) -> int:
        return self.size

    def devices(self) -> list[Device]:
        return list(self._devices)

    def local_devices(self) -> list[Device]:
        return [self._devices[self.rank]]

    # -- shards ----------------------------------------------------------------------------
    def _mesh(self, mesh: Mesh) -> tuple[Any, int | None]:
        """(communicator, my mesh position) of a mesh, made once; (None, None) if not in it.

        Every process must call this for every mesh in the same order (MPI's Split is
        collective).
        """
        key = (mesh.axis_names, mesh.axis_sizes, mesh.device_ids)
        found = self._meshes.get(key)
        if found is not None:
            return found
        if len(set(mesh.device_ids)) != mesh.size or max(mesh.device_ids) >= self.size:
            raise LaunchError(
                f"mesh {mesh!r} uses devices {mesh.device_ids} but {self.world} "
                f"has {self.size} (one per process)"
            )
        ids = list(mesh.device_ids)
        position = ids.index(self.rank) if self.rank in ids else None
        comm = self._communicator(mesh, ids, position)
        self._meshes[key] = (comm, position)
        return comm, position

    def put(self, shards: Sequence[Any], mesh: Mesh) -> list[Any]:
        """Keeps only this process's shard."""
        devices = mesh.devices.flat
        return [s if device.id == self.rank else None for s, device in zip(shards, devices)]

    def fetch(self, shards: Sequence[Any], mesh: Mesh) -> list[np.ndarray | None]:
        return list(shards)

    def compile(self, partitioned: Any, mesh: Mesh) -> RankProgram:
        """This process's per-device program compiled by the backend of the mesh's device kind
        (every process calls it for the same programs in the same order: it may make the
        mesh's communicator, which is collective)."""
        comm, position = self._mesh(mesh)
        program = partitioned.program
        if comm is None:
            return RankProgram(None, None, len(program.results), mesh.size, native=False)
        # One SPMD program for the whole mesh: its compile is paid once per job (the kernel
        # cache on disk), so it is worth compiling at the size of the mesh's programs together.
        kind = registry.choose(mesh.device_kind, program, copies=mesh.size)
        backend = registry.get(kind)
        device_comm = None
        if backend.capabilities.collectives == "device":
            device_comm = self._device_communicator(mesh, comm, position)
        collectives = device_comm or comm

        def run_op(op: Op, inputs: list[Any]) -> list[Any]:
            return run_collective(collectives, op, inputs)

        options: dict[str, Any] = {"num_threads": None}
        if not backend.capabilities.host_arrays:
            options = {"device_id": self.local_gpu(), "communicator": device_comm}
        executable = backend.compile(program, run_op, **options)
        return RankProgram(
            executable,
            position,
            len(program.results),
            mesh.size,
            native=backend.capabilities.native,
        )

    def run(
        self,
        partitioned: Any,
        mesh: Mesh,
        per_device: Sequence[Sequence[Any]],
    ) -> list[list[Any]]:
        """Runs this process's per-device program; the other devices' results are None."""
        return self.compile(partitioned, mesh).run(per_device)


class RankProgram:
    """One process's compiled per-device program of a mesh (None: not in the mesh)."""

    def __init__(
        self, executable: Any, position: int | None, results: int, size: int, native: bool
    ):
        self.executable = executable
        self.native = native
        self.position = position
        self.results = results
        self.size = size

    def run(self, per_device: Sequence[Sequence[Any]]) -> list[list[Any]]:
        out: list[list[Any]] = [[None] * self.results for _ in range(self.size)]
        if self.executable is None:
            return out
        out[self.position] = list(self.executable(per_device[self.position]))
        return out

    def compiled_program(self) -> Any:
        """The compiled executable (for its planned memory), or None if not native."""
        return self.executable if self.native else None

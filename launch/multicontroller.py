"""What every multi-controller runtime (mpi, tcp) shares: one device per process, every process
traces and compiles the same program and runs only its own device's part of it. Subclasses
make the world (rank, size) and one communicator per mesh; this module imports no transport.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from launch.local import run_collective
from spmd.errors import LaunchError
from spmd.interpreter import evaluate
from spmd.ir.graph import Op
from spmd.sharding import Device, Mesh


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
            raise LaunchError(f"mesh {mesh!r} uses devices {mesh.device_ids} but {self.world} "
                              f"has {self.size} (one per process)")
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

    def run(self, partitioned: Any, mesh: Mesh, per_device: Sequence[Sequence[Any]],
            ) -> list[list[Any]]:
        """Runs this process's per-device program; the other devices' results are None."""
        comm, position = self._mesh(mesh)
        results: list[list[Any]] = [[None] * len(partitioned.program.results)] * mesh.size
        if comm is None:
            return results

        def run_op(op: Op, inputs: list[np.ndarray]) -> list[np.ndarray]:
            return run_collective(comm, op, inputs)

        results = list(results)
        results[position] = evaluate(partitioned.program, per_device[position], run_op)
        return results

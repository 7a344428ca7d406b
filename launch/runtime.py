"""The Runtime protocol every runtime implements (local: embedded; mpi, tcp: multi-controller;
ray: single controller), choosing one, the API's door to the backend registry, and global
arrays built from per-process data. spmd.dispatch reaches this module through runtime_api().
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from backends import registry
from partitioner import layout
from spmd import config, dispatch
from spmd.errors import LaunchError, ShapeError, ShardingError
from spmd.mesh import Device, Mesh
from spmd.named_sharding import NamedSharding

Shard = Any  # a numpy array (held here), a remote handle (Ray), or None (another process's)


class Prepared(Protocol):
    """A partitioned program as one runtime prepared it (compiled by each device's backend)."""

    def run(self, per_device: Sequence[Sequence[Shard]]) -> list[list[Shard]]: ...


class Runtime(Protocol):
    """What spmd.dispatch asks of a runtime (launch/local.py, mpi.py, tcp.py, ray.py).

    compile() asks backends.registry for the backend of the mesh's device kind and compiles
    the per-device program with it once; collectives inside it go through the runtime's
    communicator (the program's run_op hook).
    """

    kind: str

    def process_index(self) -> int: ...

    def process_count(self) -> int: ...

    def devices(self) -> list[Device]: ...

    def local_devices(self) -> list[Device]: ...

    def put(self, shards: Sequence[Shard], mesh: Mesh) -> list[Shard]: ...

    def compile(self, partitioned: Any, mesh: Mesh) -> Prepared: ...

    def run(
        self,
        partitioned: Any,
        mesh: Mesh,
        per_device: Sequence[Sequence[Shard]],
    ) -> list[list[Shard]]: ...

    def fetch(self, shards: Sequence[Shard], mesh: Mesh) -> list[np.ndarray | None]: ...

    def barrier(self) -> None: ...

    def shutdown(self) -> None: ...


_LOCAL: list[Any] = []


def local_runtime() -> Runtime:
    """The embedded runtime (one per process)."""
    if not _LOCAL:
        from launch.local import LocalRuntime

        _LOCAL.append(LocalRuntime())
    return _LOCAL[0]


def compile_single_device(graph: Any, device_kind: str = "cpu") -> Any:
    """A program with no mesh compiled for one device by the backend the registry picks."""
    return registry.compile_for(device_kind, graph)


def check_device(device_kind: str) -> None:
    """LaunchError unless this machine can run device_kind (make_mesh asks, so a gpu mesh
    without cupy or a GPU fails where it is made, never as a silent CPU run)."""
    registry.check_device(device_kind)


def start(kind: str | None = None, **options: Any) -> Runtime | None:
    """The runtime named kind (or SPMD_RUNTIME, else default_kind()); None: local."""
    kind = kind or config.env("SPMD_RUNTIME") or default_kind()
    if kind == "local":
        return None
    if kind == "mpi":
        from launch.mpi import MPIRuntime

        return MPIRuntime(**options)
    if kind == "tcp":
        from launch.tcp import TCPRuntime

        return TCPRuntime(**options)
    if kind == "ray":
        from launch.ray import RayRuntime

        return RayRuntime(**options)
    raise LaunchError(f"unknown runtime {kind!r}", hint="use one of 'local', 'mpi', 'tcp', 'ray'")


def default_kind() -> str:
    """mpi under mpiexec, tcp with torchrun-style RANK/WORLD_SIZE, else local."""
    if under_mpiexec():
        return "mpi"
    return "tcp" if torchrun_variables() else "local"


def under_mpiexec() -> bool:
    """True when this process is one of several ranks started by mpiexec (MPICH or Open MPI)."""
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS"):
        if int(os.environ.get(name, "1") or "1") > 1:
            return True
    return False


def torchrun_variables() -> bool:
    """True when torchrun-style RANK and WORLD_SIZE > 1 are set."""
    return int(os.environ.get("WORLD_SIZE", "1") or "1") > 1 and "RANK" in os.environ


# -- global arrays -------------------------------------------------------------------------


def _spec(sharding: NamedSharding, shape: Sequence[int]) -> Any:
    return dispatch.spec_of(sharding, len(shape))


def _local_positions(mesh: Mesh) -> list[int]:
    """Mesh positions (row-major) of the devices this process holds."""
    runtime = dispatch.current_runtime()
    if runtime is None or runtime.process_count() == 1:
        return list(range(mesh.size))
    mine = {d.id for d in runtime.local_devices()}
    return [k for k, device in enumerate(mesh.devices.flat) if device.id in mine]


def device_slices(sharding: NamedSharding, shape: Sequence[int]) -> list[tuple[slice, ...]]:
    """The global index range each device of the mesh holds, in mesh order."""
    mesh = dispatch.mesh_shape(sharding.mesh)
    spec = _spec(sharding, shape)
    return [
        layout.shard_slices(tuple(shape), spec, mesh, coords)
        for coords in layout.device_coords(mesh)
    ]


def process_local_slices(sharding: NamedSharding, shape: Sequence[int]) -> tuple[slice, ...]:
    """The box of the global array that this process's devices hold together."""
    slices = device_slices(sharding, shape)
    mine = [slices[k] for k in _local_positions(sharding.mesh)]
    return tuple(
        slice(min(s[d].start for s in mine), max(s[d].stop for s in mine))
        for d in range(len(shape))
    )


def _padded(data: np.ndarray, local_shape: tuple[int, ...]) -> np.ndarray:
    """data in a zero-padded C-contiguous buffer of the shard's shape."""
    if data.shape == local_shape:
        return np.array(data, order="C", copy=True)
    out = np.zeros(local_shape, data.dtype)
    out[tuple(slice(0, n) for n in data.shape)] = data
    return out


def _local_shape(sharding: NamedSharding, shape: Sequence[int]) -> tuple[int, ...]:
    from partitioner.spec import shard_size

    mesh = dispatch.mesh_shape(sharding.mesh)
    spec = _spec(sharding, shape)
    return tuple(shard_size(n, mesh.size(a)) if a else n for n, a in zip(shape, spec.dims))


def _array(sharding: NamedSharding, shape: tuple[int, ...], shards: list[Shard]) -> Any:
    from spmd import dtypes
    from spmd.array import Array
    from spmd.ir.types import TensorType

    first = next(s for s in shards if s is not None)
    runtime = dispatch.current_runtime()
    if runtime is not None:
        shards = runtime.put(shards, sharding.mesh)
    aval = TensorType(shape, dtypes.canonical(first.dtype))
    return Array(shards=shards, sharding=sharding, aval=aval, committed=True)


def make_array_from_callback(
    shape: Sequence[int], sharding: NamedSharding, callback: Callable[[tuple[slice, ...]], Any]
) -> Any:
    """A global Array whose shards come from callback(index) for each device this process holds."""
    shape = tuple(int(n) for n in shape)
    _check_named(sharding)
    slices = device_slices(sharding, shape)
    local_shape = _local_shape(sharding, shape)
    shards: list[Shard] = [None] * sharding.mesh.size
    for k in _local_positions(sharding.mesh):
        data = np.asarray(callback(slices[k]))
        want = tuple(s.stop - s.start for s in slices[k])
        if data.shape != want:
            raise ShapeError(
                f"make_array_from_callback: the callback returned shape "
                f"{data.shape} for index {slices[k]!r}, expected {want}"
            )
        shards[k] = _padded(data, local_shape)
    return _array(sharding, shape, shards)


def make_array_from_process_local_data(
    sharding: NamedSharding, local_data: Any, global_shape: Sequence[int] | None = None
) -> Any:
    """A global Array from the part of it this process holds (process_local_slices).

    With one controller the local data is the whole array. global_shape defaults to the local
    shape times the number of shards of each sharded dim.
    """
    _check_named(sharding)
    local_data = np.asarray(local_data)
    if global_shape is None:
        spec = _spec(sharding, local_data.shape)
        mesh = dispatch.mesh_shape(sharding.mesh)
        positions = len(_local_positions(sharding.mesh))
        full = positions == sharding.mesh.size
        global_shape = tuple(
            n if full or not a else n * mesh.size(a) for n, a in zip(local_data.shape, spec.dims)
        )
    shape = tuple(int(n) for n in global_shape)
    box = process_local_slices(sharding, shape)
    want = tuple(s.stop - s.start for s in box)
    if local_data.shape != want:
        raise ShapeError(
            f"make_array_from_process_local_data: local data has shape "
            f"{local_data.shape}, but this process holds {box!r} of {shape}",
            hint="pass global_shape=, or slice the data with "
            "spmd.distributed.process_local_slices(sharding, global_shape)",
        )
    origin = tuple(s.start for s in box)

    def callback(index: tuple[slice, ...]) -> np.ndarray:
        return local_data[tuple(slice(s.start - o, s.stop - o) for s, o in zip(index, origin))]

    return make_array_from_callback(shape, sharding, callback)


def _check_named(sharding: Any) -> None:
    if not isinstance(sharding, NamedSharding):
        raise ShardingError(
            f"expected a NamedSharding, got {type(sharding).__name__}",
            hint="use NamedSharding(mesh, P(...))",
        )


def assemble(runtime: Runtime, array: Any) -> np.ndarray:
    """The global value of an Array; raises unless this process can see every element."""
    sharding = array.sharding
    mesh = dispatch.mesh_shape(sharding.mesh)
    spec = _spec(sharding, array.shape)
    slices = device_slices(sharding, array.shape)
    # One held copy of each distinct slice is fetched (a replicated value: one, not N; Ray
    # fetches are remote calls); the twins below are filled from it.
    first: dict[tuple, int] = {}
    for k, shard in enumerate(array._shards):
        if shard is not None:
            first.setdefault(tuple((s.start, s.stop) for s in slices[k]), k)
    wanted = set(first.values())
    shards = runtime.fetch(
        [s if k in wanted else None for k, s in enumerate(array._shards)], sharding.mesh
    )
    for k, shard in enumerate(shards):
        if shard is not None:
            continue
        twin = next(
            (j for j, s in enumerate(shards) if s is not None and slices[j] == slices[k]), None
        )
        if twin is None:
            raise ShardingError(
                f"this Array of shape {array.shape} sharded as {sharding.spec!r} is not fully "
                f"addressable: process {runtime.process_index()} holds only its own shards",
                hint="reduce or replicate it inside jit (out_shardings=NamedSharding(mesh, P())),"
                " or read array.addressable_shards",
            )
        shards[k] = shards[twin]
    return layout.assemble(shards, array.shape, spec, mesh)


def check_launch_mesh(shape: Sequence[int], processes: int, local_devices: int) -> None:
    """LaunchError unless the mesh fits on processes x local devices."""
    size = int(np.prod(shape))
    if size > processes * local_devices:
        raise LaunchError(
            f"mesh {'x'.join(map(str, shape))} needs {size} devices but "
            f"{processes} process(es) x {local_devices} local device(s) "
            f"give {processes * local_devices}",
            hint="raise --processes or use a smaller --mesh",
        )

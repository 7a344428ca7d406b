"""spmd.distributed: multi-process runtimes (mpi, tcp, ray), global arrays from per-process data.

JAX's names: initialize, process_index, process_count, local_devices. Everything runtime-
specific is reached through spmd.dispatch (lazily), so the core imports no MPI or Ray.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from spmd import config, dispatch
from spmd.errors import LaunchError
from spmd.mesh import Device, Mesh, make_mesh
from spmd.named_sharding import NamedSharding


def initialize(runtime: str | None = None, **options: Any) -> None:
    """Starts the mpi, tcp or ray runtime; with no argument: SPMD_RUNTIME, else mpi under
    mpiexec, else tcp when torchrun-style RANK and WORLD_SIZE > 1 are set, else local.

    Call it first thing under `mpiexec -n 8 python train.py`, or in each of 8 processes started
    by torchrun or by hand with RANK, WORLD_SIZE=8, MASTER_ADDR and MASTER_PORT (LOCAL_RANK
    optional): each process then holds one device of an 8-device world. The tcp runtime meets
    at rank 0 (MASTER_ADDR:MASTER_PORT, within SPMD_RENDEZVOUS_TIMEOUT seconds, default 60)
    and runs collectives over TCP sockets between the processes.

        >>> import spmd.distributed
        >>> spmd.distributed.initialize("local")
        >>> spmd.distributed.process_count()
        1
    """
    if dispatch.current_runtime() is not None:
        raise LaunchError(
            "spmd.distributed.initialize() was already called",
            hint="call it once, before any jit or device_put",
        )
    dispatch.set_runtime(dispatch.runtime_api().start(runtime, **options))


def shutdown() -> None:
    """Stops the runtime started by initialize (Ray actors; MPI finalizes at exit)."""
    runtime = dispatch.current_runtime()
    if runtime is None:
        return
    dispatch.set_runtime(None)
    runtime.shutdown()


def is_initialized() -> bool:
    return dispatch.current_runtime() is not None


def runtime_kind() -> str:
    """'local', 'mpi', 'tcp' or 'ray'."""
    runtime = dispatch.current_runtime()
    return "local" if runtime is None else runtime.kind


def process_index() -> int:
    """This process's index: the MPI or torchrun rank; 0 with one controller (local, ray)."""
    runtime = dispatch.current_runtime()
    return 0 if runtime is None else runtime.process_index()


def process_count() -> int:
    runtime = dispatch.current_runtime()
    return 1 if runtime is None else runtime.process_count()


def local_devices() -> list[Device]:
    """The devices this process drives (all of them with one controller)."""
    runtime = dispatch.current_runtime()
    return dispatch.devices() if runtime is None else runtime.local_devices()


def barrier() -> None:
    """Waits until every process gets here (nothing to wait for with one controller)."""
    runtime = dispatch.current_runtime()
    if runtime is not None:
        runtime.barrier()


def launch_mesh(
    shape: Sequence[int] | None = None, axis_names: Sequence[str] | None = None
) -> Mesh:
    """The mesh given to spmd-launch (SPMD_MESH="2x4", SPMD_AXES="data,model", SPMD_DEVICE).

    Outside spmd-launch, shape/axis_names are the fallback (default: one axis over all devices).
    """
    text = config.env("SPMD_MESH")
    if text:
        shape = parse_mesh(text)
    elif shape is None:
        shape = (len(dispatch.devices()),)
    names_text = config.env("SPMD_AXES")
    names = tuple(names_text.split(",")) if names_text else axis_names
    if names is not None and len(names) != len(shape):
        raise LaunchError(
            f"mesh {tuple(shape)} has {len(shape)} axes but the axis names are {tuple(names)!r}",
            hint="give one name per mesh dim in --axes",
        )
    device = config.env("SPMD_DEVICE")
    return make_mesh(tuple(shape), names, device=device)


def parse_mesh(text: str) -> tuple[int, ...]:
    """'2x4' -> (2, 4); LaunchError for anything else."""
    parts = text.lower().split("x")
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise LaunchError(
            f"malformed mesh {text!r}",
            hint="write the mesh as positive sizes joined by 'x', e.g. 2x4",
        )
    shape = tuple(int(p) for p in parts)
    return shape if math.prod(shape) > 0 else (1,)


def process_local_slices(
    sharding: NamedSharding,
    global_shape: Sequence[int],
) -> tuple[slice, ...]:
    """The box of the global array this process's devices hold (everything with one controller)."""
    return dispatch.runtime_api().process_local_slices(sharding, global_shape)


def make_array_from_process_local_data(
    sharding: NamedSharding, local_data: Any, global_shape: Sequence[int] | None = None
) -> Any:
    """A global Array from this process's part of it (see process_local_slices)."""
    return dispatch.runtime_api().make_array_from_process_local_data(
        sharding, local_data, global_shape
    )


def make_array_from_callback(
    shape: Sequence[int], sharding: NamedSharding, data_callback: Callable[[tuple[slice, ...]], Any]
) -> Any:
    """A global Array whose shard on each local device is data_callback(global index)."""
    return dispatch.runtime_api().make_array_from_callback(shape, sharding, data_callback)

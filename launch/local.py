"""The embedded local runtime: N logical devices in one process (LocalRuntime, the default
Runtime of launch/runtime.py).

A per-device program runs stacked (launch/stacked.py: batched over a leading device axis
by partitioner/device_batching.py and compiled once by the mesh's backend: the default),
in lockstep (the reference, op by op per device), or on one thread per device with
shared-memory collectives through collectives.local (needed for collectives inside loops, and
for backends that cannot batch, e.g. gpu). backends.registry picks the backend.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from threadpoolctl import ThreadpoolController

from backends import registry
from collectives.local import LocalWorld, run_on_devices
from launch.stacked import StackedProgram
from partitioner.partition import Partitioned
from spmd import config
from spmd.interpreter import run_op_scope, run_reference
from spmd.ir.graph import Op, subgraphs
from spmd.mesh import Device, Mesh, env_device_count
from spmd.ops import REGISTRY
from spmd.ops.opdef import Trait
from spmd.spmd_interpreter import evaluate_spmd


class LocalExecutable:
    """Runs one partitioned program on the mesh's devices."""

    def __init__(self, partitioned: Partitioned, mode: str | None = None, device_kind: str = "cpu"):
        self.partitioned = partitioned
        self.program = partitioned.program
        self.mesh = partitioned.mesh
        self.device_kind = device_kind
        self.mode = mode or config.env("SPMD_LOCAL_MODE") or self._choose_mode()
        self._in_loops = self.collectives_in_loops()
        self._kernels: list[Any] | None = None
        self._backend: str | None = None
        self._stacked: StackedProgram | None = None
        self._unbatched = False  # the mesh's backend cannot batch: device threads

    def _choose_mode(self) -> str:
        """Stacked: one batched program for all devices (native above the backend's size
        threshold, numpy below), measured faster than device threads at every size
        (benchmarks/step_time.py, dispatch.py); threads only for what cannot be batched."""
        return "stacked"

    def collectives_in_loops(self) -> bool:
        return any(
            REGISTRY[sub_op.name].has(Trait.COLLECTIVE)
            for op in self.program.ops
            for sub in subgraphs(op)
            for sub_op in sub.walk()
        )

    def run(self, per_device_args: Sequence[Sequence[np.ndarray]]) -> list[list[np.ndarray]]:
        mode = self.mode
        if self._in_loops and mode == "lockstep":
            mode = "stacked"  # lockstep cannot pause inside a loop body; batching can
        if mode == "lockstep":
            return evaluate_spmd(self.program, per_device_args, self.mesh.names, self.mesh.sizes)
        if mode == "stacked" and self._stacked is None and not self._unbatched:
            backend = self._batched_backend()
            self._unbatched = backend is None
            if backend is not None:
                self._stacked = StackedProgram(
                    self.program, self.mesh.names, self.mesh.sizes, backend=backend
                )
        stacked = self._stacked
        if (
            mode == "stacked"
            and stacked is not None
            and not (self._in_loops and stacked.kernel is None)
        ):
            return stacked(per_device_args)
        return self._run_threads(per_device_args)  # device threads can run anything

    def _batched_backend(self) -> str | None:
        """The backend of the stacked program (it covers every device, so its size is N
        per-device programs: a 2D MLP step was 2x faster compiled than numpy op by op), or
        None when the mesh's backend cannot batch (gpu: one program per device thread)."""
        kind = registry.choose(self.device_kind, self.program, copies=self.mesh.num_devices)
        return kind if registry.get(kind).capabilities.batched else None

    def _run_threads(
        self,
        per_device_args: Sequence[Sequence[np.ndarray]],
    ) -> list[list[np.ndarray]]:
        world = LocalWorld(self.mesh.sizes, self.mesh.names)
        kernels = self._device_programs()
        n = self.mesh.num_devices

        def device(comm: Any) -> list[np.ndarray]:
            def run_op(op: Op, inputs: list[np.ndarray]) -> list[np.ndarray]:
                return run_collective(comm, op, inputs)

            _device.run_op = run_op
            with run_op_scope(run_op):
                return kernels[comm.rank](per_device_args[comm.rank])

        # Device threads share the cores: BLAS gets its share instead of every thread
        # starting a full-width BLAS pool (oversubscription made steps 2-7x slower).
        with _blas_controller().limit(limits=max(1, (os.cpu_count() or 1) // n), user_api="blas"):
            return run_on_devices(world, device, _device_threads(n))

    def _backend_name(self) -> str:
        """The backend of the per-device program (registry.choose), read once."""
        if self._backend is None:
            self._backend = registry.choose(self.device_kind, self.program)
        return self._backend

    def _device_programs(self) -> list[Any]:
        """The per-device program compiled once by its backend: one executable shared by
        the device threads (host backends), or one per device (a GPU each)."""
        if self._kernels is not None:
            return self._kernels
        backend = registry.get(self._backend_name())
        n = self.mesh.num_devices
        if backend.capabilities.host_arrays:
            threads = max(1, (os.cpu_count() or 1) // n)
            shared = backend.compile(self.program, _this_device_op, num_threads=threads)
            self._kernels = [shared] * n
            return self._kernels
        count = max(1, getattr(backend, "device_count", lambda: 1)())
        self._kernels = [
            backend.compile(self.program, _this_device_op, device_id=d % count) for d in range(n)
        ]
        return self._kernels

    def compiled_program(self) -> Any:
        """The per-device program compiled natively (for its planned memory), or None when
        the interpreter runs it."""
        if not registry.get(self._backend_name()).capabilities.native:
            return None
        return self._device_programs()[0]


class LocalRuntime:
    """The embedded runtime as a Runtime (launch/runtime.py): this process holds every device;
    shards are numpy arrays (rows of one buffer after device_put, see partitioner.layout)."""

    kind = "local"

    def process_index(self) -> int:
        return 0

    def process_count(self) -> int:
        return 1

    def devices(self) -> list[Device]:
        return [Device(i) for i in range(env_device_count())]

    def local_devices(self) -> list[Device]:
        return self.devices()

    def put(self, shards: Sequence[Any], mesh: Mesh) -> list[Any]:
        return list(shards)

    def fetch(self, shards: Sequence[Any], mesh: Mesh) -> list[np.ndarray | None]:
        return list(shards)

    def compile(self, partitioned: Partitioned, mesh: Mesh) -> LocalExecutable:
        """The per-device program prepared for every device of mesh (compiled on first run)."""
        return LocalExecutable(partitioned, device_kind=mesh.device_kind)

    def run(
        self, partitioned: Partitioned, mesh: Mesh, per_device: Sequence[Sequence[Any]]
    ) -> list[list[Any]]:
        return self.compile(partitioned, mesh).run(per_device)

    def barrier(self) -> None:
        return None

    def shutdown(self) -> None:
        return None


_device = threading.local()  # the run_op of the device this thread plays
_POOLS: dict[int, ThreadPoolExecutor] = {}


def _device_threads(n: int) -> ThreadPoolExecutor:
    """Long-lived threads, one per device (starting threads on every call costs ~1 ms)."""
    if n not in _POOLS:
        _POOLS[n] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="spmd-device")
    return _POOLS[n]


@functools.cache
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()


def _this_device_op(op: Op, inputs: list[np.ndarray]) -> list[np.ndarray]:
    return _device.run_op(op, inputs)


# How a per-device op calls the device's Communicator: (comm, x, attrs, where) -> result.
COMMUNICATOR_CALLS: dict[str, Callable[[Any, Any, Any, str | None], Any]] = {
    "all_reduce": lambda comm, x, a, where: comm.all_reduce(
        x, a["axes"], a.get("kind", "sum"), where=where
    ),
    "all_gather": lambda comm, x, a, where: comm.all_gather(x, a["axes"], a["dim"], where=where),
    "reduce_scatter": lambda comm, x, a, where: comm.reduce_scatter(
        x, a["axes"], a["dim"], a.get("kind", "sum"), where=where
    ),
    "all_to_all": lambda comm, x, a, where: comm.all_to_all(
        x, a["axes"], a["split_dim"], a["concat_dim"], where=where
    ),
    "collective_permute": lambda comm, x, a, where: comm.permute(
        x, a["axes"], a["pairs"], where=where
    ),
    "axis_index": lambda comm, x, a, where: np.asarray(comm.group_index(a["axes"]), dtype=np.int32),
}


def run_collective(comm: Any, op: Op, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """A per-device op: collectives through the communicator, the rest by reference."""
    call = COMMUNICATOR_CALLS.get(op.name)
    if call is None:
        return run_reference(op, inputs)
    return [call(comm, inputs[0] if inputs else None, op.attrs, op.loc or None)]

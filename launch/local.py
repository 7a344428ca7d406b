"""The embedded local runtime: N logical devices in one process.

A per-device program runs stacked (launch/stacked.py: batched over a leading device axis
and compiled once by the CPU backend, or numpy op by op for small programs: the default),
in lockstep (the reference, op by op per device), or on one thread per device with
shared-memory collectives through collectives.local (needed for collectives inside loops).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from threadpoolctl import ThreadpoolController

from collectives.local import LocalWorld, run_on_devices
from launch.stacked import StackedProgram
from partitioner.partition import Partitioned
from spmd.interpreter import evaluate, run_op_scope, run_reference
from spmd.ir.graph import Op, subgraphs
from spmd.ops.collective import COLLECTIVES
from spmd.spmd_interpreter import evaluate_spmd


class LocalExecutable:
    """Runs one partitioned program on the mesh's devices."""

    def __init__(self, partitioned: Partitioned, mode: str | None = None):
        self.partitioned = partitioned
        self.program = partitioned.program
        self.mesh = partitioned.mesh
        self.mode = mode or os.environ.get("SPMD_LOCAL_MODE") or self._choose_mode()
        self._in_loops = self.collectives_in_loops()
        self._kernel = None
        self._backend: str | None = None
        self._stacked: StackedProgram | None = None

    def _choose_mode(self) -> str:
        """Stacked: one batched program for all devices (native above the backend's size
        threshold, numpy below), measured faster than device threads at every size
        (benchmarks/step_time.py, dispatch.py); threads only for what cannot be batched."""
        return "stacked"

    def collectives_in_loops(self) -> bool:
        return any(sub_op.name in COLLECTIVES for op in self.program.ops
                   for sub in subgraphs(op) for sub_op in sub.walk())

    def run(self, per_device_args: Sequence[Sequence[np.ndarray]]) -> list[list[np.ndarray]]:
        mode = self.mode
        if self._in_loops and mode == "lockstep":
            mode = "stacked"  # lockstep cannot pause inside a loop body; batching can
        if mode == "lockstep":
            return evaluate_spmd(self.program, per_device_args, self.mesh.names, self.mesh.sizes)
        if mode == "stacked":
            if self._stacked is None:
                self._stacked = StackedProgram(self.program, self.mesh.names, self.mesh.sizes,
                                               native=self._stacked_native())
            if not (self._in_loops and self._stacked.kernel is None):
                return self._stacked(per_device_args)
        return self._run_threads(per_device_args)  # device threads can run anything

    def _run_threads(self, per_device_args: Sequence[Sequence[np.ndarray]],
                     ) -> list[list[np.ndarray]]:
        world = LocalWorld(self.mesh.sizes, self.mesh.names)
        kernel = self.compiled_program()
        n = self.mesh.num_devices

        def device(comm: Any) -> list[np.ndarray]:
            def run_op(op: Op, inputs: list[np.ndarray]) -> list[np.ndarray]:
                return run_collective(comm, op, inputs)

            _device.run_op = run_op
            with run_op_scope(run_op):
                if kernel is None:
                    return evaluate(self.program, per_device_args[comm.rank], run_op)
                return kernel(per_device_args[comm.rank])

        # Device threads share the cores: BLAS gets its share instead of every thread
        # starting a full-width BLAS pool (oversubscription made steps 2-7x slower).
        with _blas_controller().limit(limits=max(1, (os.cpu_count() or 1) // n),
                                      user_api="blas"):
            return run_on_devices(world, device, _device_threads(n))

    def _backend_name(self) -> str:
        """SPMD_BACKEND (cpu, interpreter, or by size), read once per executable."""
        if self._backend is None:
            from spmd.dispatch import backend_for

            self._backend = backend_for(self.program)
        return self._backend

    def _stacked_native(self) -> bool:
        """Compile the batched program (SPMD_BACKEND=cpu, or auto and the program over all
        devices at the backend's size threshold): it covers every device, so its size is N
        per-device programs (a 2D MLP step was 2x faster compiled than numpy op by op)."""
        choice = os.environ.get("SPMD_BACKEND", "auto")
        if choice != "auto":
            return choice == "cpu"
        from spmd.dispatch import NATIVE_MIN_ELEMENTS

        size = sum(t.size for op in self.program.walk() for t in op.types)
        return size * self.mesh.num_devices >= NATIVE_MIN_ELEMENTS

    def compiled_program(self) -> Any:
        """The per-device program compiled once for the CPU (shared by the device threads),
        or None to interpret it (SPMD_BACKEND=interpreter)."""
        if self._backend_name() == "interpreter":
            return None
        if self._kernel is None:
            from backends.cpu import compile_program

            threads = max(1, (os.cpu_count() or 1) // self.mesh.num_devices)
            self._kernel = compile_program(self.program, run_op=_this_device_op,
                                           num_threads=threads)
        return self._kernel


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


def run_collective(comm: Any, op: Op, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """A per-device op: collectives through the communicator, the rest by reference."""
    a = op.attrs
    where = op.loc or None
    if op.name == "all_reduce":
        return [comm.all_reduce(inputs[0], a["axes"], a.get("kind", "sum"), where=where)]
    if op.name == "all_gather":
        return [comm.all_gather(inputs[0], a["axes"], a["dim"], where=where)]
    if op.name == "reduce_scatter":
        return [comm.reduce_scatter(inputs[0], a["axes"], a["dim"], a.get("kind", "sum"),
                                    where=where)]
    if op.name == "all_to_all":
        return [comm.all_to_all(inputs[0], a["axes"], a["split_dim"], a["concat_dim"],
                                where=where)]
    if op.name == "collective_permute":
        return [comm.permute(inputs[0], a["axes"], a["pairs"], where=where)]
    if op.name == "axis_index":
        return [np.asarray(comm.group_index(a["axes"]), dtype=np.int32)]
    return run_reference(op, inputs)

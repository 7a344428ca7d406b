"""Backends by device kind: the Backend interface, the registry (cpu, interpreter, gpu,
tpu-sim), and `choose`, the one rule that says which backend compiles a per-device program.

Every runtime (launch/) and the public API (through launch) ask `choose` and compile with
`get(kind).compile(...)`; nothing else reads SPMD_BACKEND. Imports only the compiler core and
spmd.errors; a backend's package is imported when it is first asked for, so importing the
registry never imports llvmlite or cupy.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from spmd import config
from spmd.errors import LaunchError
from spmd.ir.graph import Graph, Op

RunOp = Callable[[Op, list[np.ndarray]], Sequence[np.ndarray]]

# Below this many elements in a program, numpy op by op beats compiling native kernels
# (LLVM takes tens of ms per kernel on a cold cache); see benchmarks/dispatch.py.
NATIVE_MIN_ELEMENTS = 1 << 16
BACKEND_VARIABLE = "SPMD_BACKEND"
DEVICE_KINDS = ("cpu", "gpu", "tpu-sim")  # what a mesh's devices can be (make_mesh(device=))


@dataclass(frozen=True)
class Capabilities:
    """What a backend's executables can do (runtimes read these instead of the kind's name).

    native: compiles to machine code (else numpy op by op). batched: can run the local
    runtime's program batched over a leading device axis. donation: reuses donated params'
    buffers. host_arrays: takes and returns numpy arrays (else device arrays, converted at
    the runtime's door). collectives: "run_op" (the runtime's communicator is called from
    inside the program through its run_op hook) or "device" (the program calls a device
    communicator, e.g. NCCL, given at compile time).
    """

    native: bool
    batched: bool
    donation: bool
    host_arrays: bool
    collectives: str = "run_op"


class Executable(Protocol):
    """A compiled per-device program: arrays in, arrays out."""

    def __call__(self, args: Sequence[Any]) -> list[Any]: ...

    def memory_per_device(self) -> int: ...


class Backend(Protocol):
    """One device kind's compiler: a per-device Graph (+ run_op for the ops it leaves to the
    runtime: collectives) -> Executable."""

    kind: str
    capabilities: Capabilities

    def unavailable(self) -> str | None:
        """Why this backend cannot run on this machine (missing package or device), or None."""
        ...

    def compile(
        self,
        graph: Graph,
        run_op: RunOp | None = None,
        *,
        donate: Sequence[bool] | None = None,
        num_threads: int | None = None,
        device_id: int = 0,
        communicator: Any = None,
    ) -> Executable: ...


# kind -> "module:attribute" of its Backend object (data, imported on first use)
REGISTRY: dict[str, str] = {
    "cpu": "backends.cpu.backend:BACKEND",
    "interpreter": "backends.interpreter:BACKEND",
    "gpu": "backends.gpu.backend:BACKEND",
    "tpu-sim": "backends.tpu_sim.backend:BACKEND",
}
_LOADED: dict[str, Backend] = {}


def kinds() -> list[str]:
    return list(REGISTRY)


def get(kind: str) -> Backend:
    """The backend of a device kind ('tpu-sim:v5e' is 'tpu-sim')."""
    kind = device_family(kind)
    found = _LOADED.get(kind)
    if found is not None:
        return found
    if kind not in REGISTRY:
        raise LaunchError(
            f"no backend for device kind {kind!r}",
            hint=f"use one of {', '.join(map(repr, REGISTRY))}",
        )
    module, _, name = REGISTRY[kind].partition(":")
    found = getattr(importlib.import_module(module), name)
    _LOADED[kind] = found
    return found


def device_family(device_kind: str) -> str:
    """The registry key of a mesh's device kind: 'tpu-sim:v5e' -> 'tpu-sim'."""
    return device_kind.partition(":")[0]


def host_choice() -> str:
    """SPMD_BACKEND for host devices: auto (by size), cpu or interpreter."""
    return config.env(BACKEND_VARIABLE)  # a GPU mesh: make_mesh(..., device='gpu')


def program_size(graph: Graph) -> int:
    """Elements of every value of a program (sub-graphs included): what compiling pays off on."""
    return sum(t.size for op in graph.walk() for t in op.types)


def choose(device_kind: str, graph: Graph, copies: int = 1) -> str:
    """The backend kind that compiles `graph` for a device of `device_kind`.

    gpu: the GPU backend, never a silent host run. Host devices (cpu, and tpu-sim, whose
    numerics run on the host): SPMD_BACKEND, else native code when the program (times
    `copies`, the devices one batched program covers) has NATIVE_MIN_ELEMENTS elements, else
    the numpy reference.
    """
    family = device_family(device_kind)
    if family == "gpu":
        return "gpu"
    if family not in ("cpu", "tpu-sim"):
        raise LaunchError(
            f"no backend for device kind {device_kind!r}",
            hint=f"use one of {', '.join(map(repr, REGISTRY))}",
        )
    choice = host_choice()
    if choice != "auto":
        return choice
    return "cpu" if program_size(graph) * copies >= NATIVE_MIN_ELEMENTS else "interpreter"


def check_device(device_kind: str) -> None:
    """LaunchError unless device_kind's backend can run here (make_mesh calls it)."""
    if device_family(device_kind) not in DEVICE_KINDS:
        raise LaunchError(
            f"unknown device kind {device_kind!r}",
            hint="use device='cpu', 'gpu' or 'tpu-sim:<chip>' (e.g. tpu-sim:v5e)",
        )
    backend = get(device_kind)
    reason = backend.unavailable()
    if reason is not None:
        raise LaunchError(
            f"device={device_kind!r} cannot run on this machine: {reason}",
            hint="install the backend's package (for 'gpu': cupy matching your "
            "CUDA, e.g. pip install cupy-cuda12x) on a machine with a GPU, "
            "or use device='cpu'",
        )


def compile_for(
    device_kind: str, graph: Graph, run_op: RunOp | None = None, *, copies: int = 1, **options: Any
) -> Executable:
    """`graph` compiled by the backend `choose` picks (the usual entry point for runtimes)."""
    return get(choose(device_kind, graph, copies)).compile(graph, run_op, **options)

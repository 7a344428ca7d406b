"""One Ray actor per device, which launch/ray.py's runtime drives: the device's buffers (by
handle), its programs (compiled there on first run) and its communicators (by mesh)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import ray

from backends import registry
from collectives.base import collective_timeout
from collectives.ray import Mailbox, ObjectChannel, RayCommunicator, SocketChannel
from launch.buffers import BufferTable
from launch.local import run_collective
from spmd import config
from spmd.ir.graph import Op

MeshKey = tuple[tuple[int, ...], tuple[str, ...], tuple[int, ...]]


@ray.remote(max_concurrency=8)  # one thread runs programs; the others take deliveries, aborts
class DeviceActor:
    """One device: its buffers (by handle), programs (by key) and communicators (by mesh)."""

    def __init__(self, index: int, channel: str, secret: bytes):
        from spmd import errors

        # Ray's frames are not the user's: an error raised here names no Ray file as its line
        errors.INTERNAL_DIRS.append(os.path.dirname(ray.__file__) + os.sep)
        self.index = index
        self.mailbox = Mailbox()
        self.channel_name = channel
        self.channel: Any = (
            SocketChannel(self.mailbox, node_address(), secret=secret)
            if channel == "sockets"
            else None
        )
        self.objects: ObjectChannel | None = None
        self.buffers = BufferTable()  # calls run out of order: see launch/buffers.py
        self.programs: dict[str, Any] = {}
        self.executables: dict[tuple, Any] = {}  # (program key, mesh, backend) -> compiled
        self.comms: dict[MeshKey, RayCommunicator] = {}

    def address(self) -> tuple[str, int]:
        port = self.channel.port if self.channel is not None else 0
        return node_address(), port

    def pid(self) -> int:
        return os.getpid()

    def connect(self, handles: list[Any], addresses: list[tuple[str, int]]) -> None:
        self.objects = ObjectChannel(handles)
        if self.channel_name == "sockets":
            self.channel.connect(addresses)
        else:
            self.channel = self.objects

    def deliver(self, key: tuple, value: np.ndarray) -> None:
        self.mailbox.put(key, value)

    def abort(self, message: str) -> None:
        self.mailbox.abort(message)
        self.buffers.abort(message)

    def store(self, handle: int, value: np.ndarray) -> None:
        self.buffers.store(handle, value)

    def fetch(self, handles: list[int]) -> list[np.ndarray]:
        return self.buffers.take(handles, collective_timeout())

    def free(self, handles: list[int]) -> None:
        self.buffers.free(handles)

    def held(self) -> int:
        """How many buffers this actor holds (tests: dropped arrays are freed)."""
        return len(self.buffers)

    def load(self, key: str, program: Any) -> None:
        self.programs[key] = program

    def run(
        self,
        key: str,
        mesh: MeshKey,
        args: list[Any],
        outs: list[int],
        backend: str = "cpu",
        free: Sequence[int] = (),
    ) -> None:
        """Frees `free`, then runs program key on this device's args (handles or arrays);
        results go to outs."""
        self.buffers.free(free)
        executable = self._executable(key, mesh, backend)
        handles = [a for a in args if isinstance(a, int)]
        held = iter(self.buffers.take(handles, collective_timeout()))
        values = [next(held) if isinstance(a, int) else a for a in args]
        for handle, value in zip(outs, executable(values)):
            self.buffers.store(handle, value)

    def _executable(self, key: str, mesh: MeshKey, kind: str) -> Any:
        """Program key compiled once for this device by backend `kind` (the controller's
        registry.choose); its collectives call this actor's communicator of mesh (NCCL on
        gpu)."""
        found = self.executables.get((key, mesh, kind))
        if found is not None:
            return found
        comm = self._communicator(mesh)
        backend = registry.get(kind)
        options: dict[str, Any] = {}
        collectives: Any = comm
        if backend.capabilities.collectives == "device":
            from collectives.nccl import NcclCommunicator, exchange_through

            collectives = NcclCommunicator(comm.rank, mesh[0], mesh[1], exchange_through(comm))
            options = {"communicator": collectives}

        def run_op(op: Op, inputs: list[Any]) -> list[Any]:
            return run_collective(collectives, op, inputs)

        found = backend.compile(self.programs[key], run_op, **options)
        self.executables[(key, mesh, kind)] = found
        return found

    def compiled(self) -> list[tuple[str, str]]:
        """(program key, backend kind) of every program this actor compiled (tests)."""
        return [(key, kind) for key, _, kind in self.executables]

    def call(self, function: Any, mesh: MeshKey, channel: str | None = None) -> Any:
        """function(communicator) on this device (tests, benchmarks); channel picks the wire."""
        return function(self._communicator(mesh, channel))

    def reset(self) -> None:
        """Forgets messages, communicators and the abort after a failed step."""
        self.mailbox = Mailbox()
        if self.channel_name == "sockets":
            self.channel.mailbox = self.mailbox
        self.comms.clear()
        self.buffers.reset()

    def _communicator(self, mesh: MeshKey, channel: str | None = None) -> RayCommunicator:
        found = self.comms.get((mesh, channel))
        if found is None:
            shape, names, actors = mesh
            wire = self.channel if channel in (None, self.channel_name) else self.objects
            found = RayCommunicator(
                actors.index(self.index),
                shape,
                names,
                wire,
                self.mailbox,
                actors,
                tag=(mesh, channel),
            )
            self.comms[(mesh, channel)] = found
        return found


def node_address() -> str:
    """Where the actors' sockets listen: SPMD_BIND_ADDR if set (loopback for a local Ray),
    else the address Ray uses for this worker's node."""
    if config.env("SPMD_BIND_ADDR"):
        return config.env("SPMD_BIND_ADDR")
    node = ray.get_runtime_context().get_node_id()
    for entry in ray.nodes():
        if entry.get("NodeID") == node:
            return entry["NodeManagerAddress"]
    return ray.util.get_node_ip_address()

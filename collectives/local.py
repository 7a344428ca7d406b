"""Local transport: one thread per device in one process, collectives through shared memory.

Imports nothing of ours except spmd.errors and collectives.base.
"""

from __future__ import annotations

import math
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, wait
from contextlib import contextmanager
from typing import Any

import numpy as np

from collectives.base import (
    Axes,
    Communicator,
    block,
    collective_timeout,
    reduce_ufunc,
    timeout_message,
)
from spmd.errors import CollectiveTimeoutError, InternalError, RemoteError
from spmd.mesh import group_index, group_key, group_size

# Operands up to this size are snapshotted (copied) on arrival so a collective needs one
# rendezvous; larger ones are read in place and a second rendezvous marks completion.
SNAPSHOT_BYTES = 1 << 18
_MISSING = object()


class _Round:
    """One rendezvous of a group: every member's payload, filled as they arrive."""

    __slots__ = ("arrived", "complete", "payloads", "signature")

    def __init__(self, size: int):
        self.signature: tuple | None = None
        self.payloads: list[Any] = [_MISSING] * size
        self.arrived = 0
        self.complete = False


class _Group:
    """The devices sharing all coordinates off a tuple of axes; rounds follow one another."""

    def __init__(self, size: int):
        self.size = size
        self.cond = threading.Condition()
        self.round = _Round(size)


class LocalWorld:
    """State shared by the LocalCommunicators of one mesh: groups, timeout, abort flag."""

    def __init__(
        self, mesh_shape: Sequence[int], axis_names: Sequence[str], timeout: float | None = None
    ):
        self.mesh_shape = tuple(int(s) for s in mesh_shape)
        self.axis_names = tuple(axis_names)
        self.size = math.prod(self.mesh_shape)
        self.timeout = collective_timeout() if timeout is None else float(timeout)
        self.error: RemoteError | None = None
        self.error_device: int | None = None
        self._lock = threading.Lock()
        self._groups: dict[tuple[Axes, int], _Group] = {}

    def communicator(self, rank: int) -> LocalCommunicator:
        """The communicator of device rank."""
        return LocalCommunicator(self, rank)

    def communicators(self) -> list[LocalCommunicator]:
        """One communicator per device, in rank order."""
        return [LocalCommunicator(self, rank) for rank in range(self.size)]

    def group(self, axes: Axes, key: int) -> _Group:
        """The shared group object for (axes, key), created on first use."""
        with self._lock:
            found = self._groups.get((axes, key))
            if found is None:
                found = _Group(group_size(self.mesh_shape, self.axis_names, axes))
                self._groups[(axes, key)] = found
            return found

    def abort(self, exc: BaseException, device: int | None = None) -> None:
        """Wakes every device blocked in a collective with a RemoteError carrying exc's traceback."""
        text = "".join(traceback.format_exception(exc))
        with self._lock:
            if self.error is not None:
                return
            name = "a device" if device is None else f"device {device}"
            self.error_device = device
            self.error = RemoteError(f"{name} failed:\n{text.rstrip()}")
            groups = list(self._groups.values())
        for found in groups:
            with found.cond:
                found.cond.notify_all()

    def check_alive(self) -> None:
        """Raises the world's RemoteError if some device has failed."""
        if self.error is not None:
            raise RemoteError(self.error.problem) from None

    def rendezvous(
        self, found: _Group, index: int, signature: tuple, payload: Any, where: str | None
    ) -> list[Any]:
        """Deposits payload and waits for every member; returns all payloads in group order."""
        endless = self.timeout <= 0
        deadline = time.monotonic() + self.timeout
        with found.cond:
            self.check_alive()
            current = found.round
            if current.arrived == 0:
                current.signature = signature
            elif current.signature != signature:
                self._mismatch(current.signature, signature, where)
            current.payloads[index] = payload
            current.arrived += 1
            if current.arrived == found.size:
                current.complete = True
                found.round = _Round(found.size)
                found.cond.notify_all()
                return current.payloads
            while not current.complete:
                self.check_alive()
                remaining = None if endless else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise self._timeout(signature, current, where)
                found.cond.wait(remaining)
            return current.payloads

    def _timeout(self, signature: tuple, current: _Round, where: str | None) -> Exception:
        missing = [i for i, p in enumerate(current.payloads) if p is _MISSING]
        kind, axes = signature[0], signature[1]
        return CollectiveTimeoutError(
            timeout_message(kind, axes, where, self.timeout)
            + f"; group members {missing} never joined",
            loc=where,
            hint="a device is stuck or called a different collective; raise SPMD_COLLECTIVE_TIMEOUT "
            "if it is just slow",
        )

    def _mismatch(self, first: tuple | None, second: tuple, where: str | None) -> None:
        error = InternalError(
            f"devices of one group called different collectives: {first} and {second}", loc=where
        )
        self.abort(error)
        raise error


class LocalCommunicator(Communicator):
    """One device of a LocalWorld."""

    def __init__(self, world: LocalWorld, rank: int):
        super().__init__(rank, world.mesh_shape, world.axis_names)
        self.world = world
        self._groups: dict[Axes, tuple[_Group, int]] = {}

    def _group(self, axes: Axes) -> tuple[_Group, int]:
        cached = self._groups.get(axes)
        if cached is None:
            key = group_key(self.rank, self.mesh_shape, self.axis_names, axes)
            index = group_index(self.rank, self.mesh_shape, self.axis_names, axes)
            cached = (self.world.group(axes, key), index)
            self._groups[axes] = cached
        return cached

    @contextmanager
    def _exchange(
        self, signature: tuple, payload: Any, where: str | None, snapshot: bool
    ) -> Iterator[tuple[list[Any], int]]:
        """Yields (payloads, my index). Unless snapshot, waits after the body until every member
        is done reading, so nobody reuses a buffer another member still reads."""
        found, index = self._group(signature[1])
        payloads = self.world.rendezvous(found, index, signature, payload, where)
        yield payloads, index
        if not snapshot:
            self.world.rendezvous(found, index, signature + ("done",), None, where)

    def _all_reduce(self, x: np.ndarray, axes: Axes, op: str, where: str | None) -> np.ndarray:
        found, index = self._group(axes)
        if found.size == 1:
            return x.copy()
        ufunc = reduce_ufunc(op, x.dtype)
        signature = ("all_reduce", axes, x.shape, x.dtype, op)
        if x.nbytes <= SNAPSHOT_BYTES:
            with self._exchange(signature, x.copy(), where, snapshot=True) as (inputs, _):
                out = inputs[0].copy()
                for other in inputs[1:]:
                    ufunc(out, other, out=out)
                return out
        # Large: member i reduces chunk i of the flat arrays and writes it into every output.
        x = np.ascontiguousarray(x)
        out = np.empty_like(x)
        with self._exchange(signature, (x, out), where, snapshot=False) as (pairs, _):
            chunk = -(-x.size // found.size)
            low, high = index * chunk, min((index + 1) * chunk, x.size)
            flats = [(a.reshape(-1), o.reshape(-1)) for a, o in pairs]
            mine = out.reshape(-1)[low:high]
            ufunc(flats[0][0][low:high], flats[1][0][low:high], out=mine)
            for source, _ in flats[2:]:
                ufunc(mine, source[low:high], out=mine)
            for member, (_, target) in enumerate(flats):
                if member != index:
                    target[low:high] = mine
        return out

    def _all_gather(self, x: np.ndarray, axes: Axes, dim: int, where: str | None) -> np.ndarray:
        found, _ = self._group(axes)
        if found.size == 1:
            return x.copy()
        snapshot = x.nbytes <= SNAPSHOT_BYTES
        payload = x.copy() if snapshot else x
        signature = ("all_gather", axes, x.shape, x.dtype, dim)
        with self._exchange(signature, payload, where, snapshot) as (inputs, _):
            return np.concatenate(inputs, axis=dim)

    def _reduce_scatter(
        self, x: np.ndarray, axes: Axes, dim: int, op: str, where: str | None
    ) -> np.ndarray:
        found, _ = self._group(axes)
        if found.size == 1:
            return x.copy()
        ufunc = reduce_ufunc(op, x.dtype)
        snapshot = x.nbytes <= SNAPSHOT_BYTES
        payload = x.copy() if snapshot else x
        signature = ("reduce_scatter", axes, x.shape, x.dtype, dim, op)
        with self._exchange(signature, payload, where, snapshot) as (inputs, index):
            blocks = [block(a, dim, index, found.size) for a in inputs]
            out = blocks[0].copy()
            for other in blocks[1:]:
                ufunc(out, other, out=out)
            return out

    def _all_to_all(
        self, x: np.ndarray, axes: Axes, split_dim: int, concat_dim: int, where: str | None
    ) -> np.ndarray:
        found, _ = self._group(axes)
        if found.size == 1:
            return x.copy()
        snapshot = x.nbytes <= SNAPSHOT_BYTES
        payload = x.copy() if snapshot else x
        signature = ("all_to_all", axes, x.shape, x.dtype, split_dim, concat_dim)
        with self._exchange(signature, payload, where, snapshot) as (inputs, index):
            blocks = [block(a, split_dim, index, found.size) for a in inputs]
            return np.concatenate(blocks, axis=concat_dim)

    def _permute(
        self, x: np.ndarray, axes: Axes, pairs: list[tuple[int, int]], where: str | None
    ) -> np.ndarray:
        found, index = self._group(axes)
        source = {dst: src for src, dst in pairs}.get(index)
        if found.size == 1:
            return x.copy() if source is not None else np.zeros_like(x)
        sends = any(src == index for src, _ in pairs)
        snapshot = x.nbytes <= SNAPSHOT_BYTES
        payload = (x.copy() if snapshot else x) if sends else None
        signature = ("permute", axes, x.shape, x.dtype, tuple(pairs))
        with self._exchange(signature, payload, where, snapshot) as (inputs, _):
            return np.zeros_like(x) if source is None else inputs[source].copy()

    def _broadcast(self, x: np.ndarray, axes: Axes, root: int, where: str | None) -> np.ndarray:
        found, index = self._group(axes)
        if found.size == 1:
            return x.copy()
        snapshot = x.nbytes <= SNAPSHOT_BYTES
        payload = (x.copy() if snapshot else x) if index == root else None
        signature = ("broadcast", axes, x.shape, x.dtype, root)
        with self._exchange(signature, payload, where, snapshot) as (inputs, _):
            return inputs[root].copy()

    def _barrier(self, axes: Axes, where: str | None) -> None:
        found, index = self._group(axes)
        self.world.rendezvous(found, index, ("barrier", axes), None, where)


def run_on_devices(
    world: LocalWorld, fn: Callable[[LocalCommunicator], Any], executor: Executor | None = None
) -> list[Any]:
    """Runs fn(comm) on one thread per device; returns results in rank order.

    `executor` (with at least one worker per device) reuses long-lived threads instead of
    starting new ones. If a device raises, the others are woken (LocalWorld.abort) and the
    first failure is re-raised with a note naming its device.
    """
    results: list[Any] = [None] * world.size
    failures: list[tuple[int, BaseException]] = []
    failures_lock = threading.Lock()

    def body(comm: LocalCommunicator) -> None:
        try:
            results[comm.rank] = fn(comm)
        except BaseException as exc:  # noqa: BLE001 - every failure must wake the others
            with failures_lock:
                failures.append((comm.rank, exc))
            world.abort(exc, device=comm.rank)

    if executor is not None:
        futures = [executor.submit(body, comm) for comm in world.communicators()]
        wait(futures)
    else:
        threads = [
            threading.Thread(
                target=body, args=(comm,), name=f"spmd-device-{comm.rank}", daemon=True
            )
            for comm in world.communicators()
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if not failures:
        return results
    first = next((f for f in failures if f[0] == world.error_device), failures[0])
    device, exc = first
    exc.add_note(f"raised on device {device} of mesh {world.mesh_shape} {world.axis_names}")
    raise exc

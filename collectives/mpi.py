"""MPI transport: mpi4py nonblocking buffer calls on one sub-communicator per axes tuple.

Imports nothing of ours except spmd.errors and collectives.base; importing it imports mpi4py.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence

import numpy as np
from mpi4py import MPI

from collectives.base import (
    Axes,
    Communicator,
    collective_timeout,
    group_index,
    group_key,
    timeout_message,
)
from spmd.errors import CollectiveTimeoutError, DTypeError, MeshError, RemoteError

# After SPIN_POLLS failed Request.Test polls, each further poll first yields the CPU: a
# Python busy-loop starves oversubscribed ranks (measured in benchmarks/RESULTS.md).
SPIN_POLLS = 1
YIELD = os.sched_yield
_OPS = {
    "sum": MPI.SUM,
    "max": MPI.MAX,
    "min": MPI.MIN,
    "prod": MPI.PROD,
    "and": MPI.LAND,
    "or": MPI.LOR,
}
_BOOL_OPS = {
    "sum": MPI.LOR,
    "max": MPI.LOR,
    "min": MPI.LAND,
    "prod": MPI.LAND,
    "and": MPI.LAND,
    "or": MPI.LOR,
}
# 16-bit floats have no portable MPI type: they move as bytes and reduce in float32.
_WIDENED = ("float16", "bfloat16")


def _reduction_types(dtype: np.dtype, op: str) -> tuple[np.dtype, MPI.Datatype, MPI.Op]:
    """(dtype the reduction runs in, its MPI datatype, the MPI op)."""
    if dtype.name in _WIDENED:
        dtype = np.dtype(np.float32)
    if dtype == np.bool_:
        return dtype, MPI.C_BOOL, _BOOL_OPS[op]
    try:
        mpi_type = MPI.Datatype.fromcode(dtype.char)
    except (KeyError, ValueError) as exc:
        raise DTypeError(f"dtype {dtype} has no MPI reduction type") from exc
    return dtype, mpi_type, _OPS[op]


def _contiguous(x: np.ndarray, dtype: np.dtype | None = None) -> np.ndarray:
    """x itself when it is C-contiguous of dtype, else a contiguous copy (0-d stays 0-d)."""
    return np.asarray(x, dtype=dtype, order="C")


def _blocks_first(x: np.ndarray, dim: int, count: int) -> np.ndarray:
    """Contiguous array of shape (count, *block) whose [j] is block j of x along dim."""
    shape = x.shape[:dim] + (count, x.shape[dim] // count) + x.shape[dim + 1 :]
    return np.ascontiguousarray(np.moveaxis(x.reshape(shape), dim, 0))


def _joined(received: np.ndarray, dim: int) -> np.ndarray:
    """Concatenation of received[0], received[1], ... along dim."""
    if dim == 0:
        return received.reshape((-1,) + received.shape[2:])
    return np.concatenate(list(received), axis=dim)


class MPICommunicator(Communicator):
    """One MPI rank as one device; rank order of comm is row-major mesh order."""

    def __init__(
        self,
        mesh_shape: Sequence[int],
        axis_names: Sequence[str],
        comm: MPI.Comm | None = None,
        timeout: float | None = None,
    ):
        comm = MPI.COMM_WORLD if comm is None else comm
        if math.prod(mesh_shape) != comm.Get_size():
            raise MeshError(
                f"mesh {tuple(mesh_shape)} needs {math.prod(mesh_shape)} ranks, "
                f"but the MPI communicator has {comm.Get_size()}",
                hint=f"run with mpiexec -n {math.prod(mesh_shape)}",
            )
        super().__init__(comm.Get_rank(), mesh_shape, axis_names)
        self.comm = comm
        self.timeout = collective_timeout() if timeout is None else float(timeout)
        self._subcomms: dict[Axes, MPI.Comm] = {}

    def close(self) -> None:
        """Frees the cached sub-communicators."""
        for sub in self._subcomms.values():
            sub.Free()
        self._subcomms.clear()

    def _subcomm(self, axes: Axes, kind: str, where: str | None) -> MPI.Comm:
        """Sub-communicator of this rank's group over axes; its ranks are group indices."""
        cached = self._subcomms.get(axes)
        if cached is not None:
            return cached
        # Split blocks with no timeout: first check with a timed barrier that every rank is here.
        self._wait(self.comm.Ibarrier(), kind, axes, where)
        color = group_key(self.rank, self.mesh_shape, self.axis_names, axes)
        key = group_index(self.rank, self.mesh_shape, self.axis_names, axes)
        sub = self.comm.Split(color, key)
        self._subcomms[axes] = sub
        return sub

    def _wait(self, request: MPI.Request, kind: str, axes: Axes, where: str | None) -> None:
        """Polls request until done; CollectiveTimeoutError past the deadline (none if timeout <= 0)."""
        if self.timeout <= 0:
            request.Wait()
            return
        deadline = time.monotonic() + self.timeout
        polls = 0
        try:
            while not request.Test():
                polls += 1
                if polls < SPIN_POLLS:
                    continue
                if time.monotonic() > deadline:
                    raise CollectiveTimeoutError(
                        timeout_message(kind, axes, where, self.timeout)
                        + f" on MPI rank {self.rank}",
                        loc=where,
                        hint="another rank died, is stuck, or called a different collective",
                    )
                YIELD()
        except MPI.Exception as exc:
            raise RemoteError(
                f"{kind} over mesh axes {axes!r} failed on MPI rank {self.rank}: "
                f"{exc.Get_error_string()}",
                loc=where,
            ) from exc

    def _collective(
        self, sub: MPI.Comm, name: str, args: tuple, kind: str, axes: Axes, where: str | None
    ) -> None:
        """Runs MPI call name (e.g. "Allreduce"): blocking if timeout <= 0, else its I-variant."""
        if self.timeout <= 0:
            getattr(sub, name)(*args)
            return
        self._wait(getattr(sub, "I" + name.lower())(*args), kind, axes, where)

    def _all_reduce(self, x: np.ndarray, axes: Axes, op: str, where: str | None) -> np.ndarray:
        sub = self._subcomm(axes, "all_reduce", where)
        if sub.Get_size() == 1:
            return x.copy()
        dtype, mpi_type, mpi_op = _reduction_types(x.dtype, op)
        send = _contiguous(x, dtype)
        received = np.empty_like(send)
        args = ([send, mpi_type], [received, mpi_type], mpi_op)
        self._collective(sub, "Allreduce", args, "all_reduce", axes, where)
        return received.astype(x.dtype, copy=False)

    def _all_gather(self, x: np.ndarray, axes: Axes, dim: int, where: str | None) -> np.ndarray:
        sub = self._subcomm(axes, "all_gather", where)
        count = sub.Get_size()
        if count == 1:
            return x.copy()
        send = _contiguous(x)
        received = np.empty((count,) + x.shape, x.dtype)
        args = ([send, send.nbytes, MPI.BYTE], [received, send.nbytes, MPI.BYTE])
        self._collective(sub, "Allgather", args, "all_gather", axes, where)
        return _joined(received, dim)

    def _reduce_scatter(
        self, x: np.ndarray, axes: Axes, dim: int, op: str, where: str | None
    ) -> np.ndarray:
        sub = self._subcomm(axes, "reduce_scatter", where)
        count = sub.Get_size()
        if count == 1:
            return x.copy()
        dtype, mpi_type, mpi_op = _reduction_types(x.dtype, op)
        send = _blocks_first(x.astype(dtype, copy=False), dim, count)
        received = np.empty(send.shape[1:], dtype)
        args = ([send, mpi_type], [received, mpi_type], mpi_op)
        self._collective(sub, "Reduce_scatter_block", args, "reduce_scatter", axes, where)
        return received.astype(x.dtype, copy=False)

    def _all_to_all(
        self, x: np.ndarray, axes: Axes, split_dim: int, concat_dim: int, where: str | None
    ) -> np.ndarray:
        sub = self._subcomm(axes, "all_to_all", where)
        count = sub.Get_size()
        if count == 1:
            return x.copy()
        send = _blocks_first(x, split_dim, count)
        received = np.empty_like(send)
        block_bytes = send.nbytes // count
        args = ([send, block_bytes, MPI.BYTE], [received, block_bytes, MPI.BYTE])
        self._collective(sub, "Alltoall", args, "all_to_all", axes, where)
        return _joined(received, concat_dim)

    def _permute(
        self, x: np.ndarray, axes: Axes, pairs: list[tuple[int, int]], where: str | None
    ) -> np.ndarray:
        sub = self._subcomm(axes, "permute", where)
        index = sub.Get_rank()
        source = {dst: src for src, dst in pairs}.get(index)
        target = {src: dst for src, dst in pairs}.get(index)
        if source == index:
            return x.copy()
        requests = []
        send = _contiguous(x)
        received = np.zeros_like(send)
        if target is not None:
            requests.append(sub.Isend([send, send.nbytes, MPI.BYTE], dest=target))
        if source is not None:
            requests.append(sub.Irecv([received, received.nbytes, MPI.BYTE], source=source))
        for request in requests:
            self._wait(request, "permute", axes, where)
        return received

    def _broadcast(self, x: np.ndarray, axes: Axes, root: int, where: str | None) -> np.ndarray:
        sub = self._subcomm(axes, "broadcast", where)
        if sub.Get_size() == 1:
            return x.copy()
        is_root = sub.Get_rank() == root
        buffer = _contiguous(x) if is_root else np.empty(x.shape, x.dtype)
        self._collective(
            sub, "Bcast", ([buffer, buffer.nbytes, MPI.BYTE], root), "broadcast", axes, where
        )
        return x.copy() if is_root else buffer

    def _barrier(self, axes: Axes, where: str | None) -> None:
        sub = self._subcomm(axes, "barrier", where)
        self._collective(sub, "Barrier", (), "barrier", axes, where)

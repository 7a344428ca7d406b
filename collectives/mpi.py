"""MPI transport: blocking mpi4py buffer calls on cached sub-communicators and result buffers.

A Watchdog thread (collectives/watchdog.py) ends the job when a call passes SPMD_COLLECTIVE_TIMEOUT.
Imports nothing of ours except spmd.errors and collectives; importing it imports mpi4py.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from mpi4py import MPI

from collectives.base import (
    Axes,
    Communicator,
    all_to_all_shape,
    check_divisible,
    collective_timeout,
    gathered_shape,
    normalize_axes,
    normalize_dim,
    reduce_ufunc,
)
from collectives.mpi_plans import (
    MAX_PLANS,
    FastPaths,
    Group,
    Plan,
    ReducePlan,
    blocks_first,
    joined,
    leading,
    move_type,
    reduction_types,
    remote_error,
)
from collectives.watchdog import Watchdog
from spmd.errors import MeshError
from spmd.mesh import group_index, group_key

# sys.getrefcount of a general-path buffer that nobody but the cache holds (cache, local,
# argument): only then may the next call overwrite it. (Fast plans keep their own buffers.)
UNSHARED_REFS = 3
MAX_CACHED_BUFFERS = 32


class MPICommunicator(FastPaths, Communicator):
    """One MPI rank as one device; rank order of comm is row-major mesh order.

    timeout <= 0 (or SPMD_COLLECTIVE_TIMEOUT=0): no watchdog. A result buffer is reused by a
    later call only once the caller holds no reference to it (nor to a view of it).
    """

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
        self.watchdog = (
            Watchdog(self.timeout, self.rank, MPI.COMM_WORLD.Abort) if self.timeout > 0 else None
        )
        self._groups: dict[Axes, Group] = {}
        self._plans: dict[tuple, Plan] = {}
        self._signatures: dict[tuple, Plan] = {}
        self._buffers: dict[tuple, np.ndarray] = {}

    def close(self) -> None:
        """Frees the cached sub-communicators, plans and buffers."""
        for group in self._groups.values():
            group.comm.Free()
        self._groups.clear()
        self._plans.clear()
        self._signatures.clear()
        self._buffers.clear()

    def _group(self, axes: Axes, kind: str, where: str | None) -> Group:
        """This rank's group over axes, its sub-communicator made (collectively) on first use."""
        group = self._groups.get(axes)
        if group is not None:
            return group
        self._call(self.comm.Barrier, (), kind, axes, where)  # watched: every rank is here
        color = group_key(self.rank, self.mesh_shape, self.axis_names, axes)
        key = group_index(self.rank, self.mesh_shape, self.axis_names, axes)
        sub = self.comm.Split(color, key)
        group = Group(sub, sub.Get_size(), sub.Get_rank())
        self._groups[axes] = group
        return group

    def _call(
        self, function: object, args: tuple, kind: str, axes: Axes, where: str | None
    ) -> None:
        """Runs one blocking MPI call under the watchdog; MPI errors become RemoteError."""
        watchdog = self.watchdog
        try:
            if watchdog is None:
                function(*args)
                return
            watchdog.armed = ((kind, axes), where)  # arm, inlined
            try:
                function(*args)
            finally:
                watchdog.armed = None
        except MPI.Exception as exc:
            raise remote_error(exc, (kind, axes), self.rank, where) from exc

    def _buffer(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A result buffer: the cached one of that shape and dtype if the caller let go of it."""
        cache = self._buffers
        key = (shape, dtype)
        buffer = cache.get(key)
        if buffer is not None and sys.getrefcount(buffer) <= UNSHARED_REFS:
            return buffer
        if len(cache) >= MAX_CACHED_BUFFERS:
            cache.clear()
        buffer = cache[key] = np.empty(shape, dtype)
        return buffer

    # -- general paths (Communicator's, and the fast paths' fallback for slow plans) ----------
    def _all_reduce(self, x: np.ndarray, axes: Axes, op: str, where: str | None) -> np.ndarray:
        plan = self._reduce_plan("all_reduce", axes, op, x.dtype, where)
        return self._run_all_reduce(x, plan, where)

    def _all_gather(self, x: np.ndarray, axes: Axes, dim: int, where: str | None) -> np.ndarray:
        group = self._group(axes, "all_gather", where)
        return self._run_all_gather(x, group, axes, dim, where)

    def _reduce_scatter(
        self, x: np.ndarray, axes: Axes, dim: int, op: str, where: str | None
    ) -> np.ndarray:
        plan = self._reduce_plan("reduce_scatter", axes, op, x.dtype, where)
        return self._run_reduce_scatter(x, plan, dim, where)

    def _all_to_all(
        self, x: np.ndarray, axes: Axes, split_dim: int, concat_dim: int, where: str | None
    ) -> np.ndarray:
        group = self._group(axes, "all_to_all", where)
        return self._run_all_to_all(x, group, axes, split_dim, concat_dim, where)

    # -- plan making (on a signature's first call) -------------------------------------------
    @staticmethod
    def _remember(cache: dict[tuple, Plan], key: tuple, plan: Plan) -> Plan:
        """Stores a plan (starting afresh past MAX_PLANS, since plans hold buffers)."""
        if len(cache) >= MAX_PLANS:
            cache.clear()
        cache[key] = plan
        return plan

    def _reduce_plan_for(
        self, key: tuple, x: np.ndarray, axes: Any, op: str, dim: int | None, where: str | None
    ) -> Plan:
        """Validates an all_reduce (dim None) or reduce_scatter call and caches its Plan."""
        kind = key[0]
        if dim is None:
            reduce_ufunc(op, x.dtype)
        normalized = normalize_axes(axes, self.axis_names)
        shape = x.shape
        if dim is not None:
            dim = normalize_dim(dim, x.ndim, kind)
            check_divisible(x.shape, dim, self.group_size(normalized), kind)
            reduce_ufunc(op, x.dtype)
        reduce_plan = self._reduce_plan(kind, normalized, op, x.dtype, where)
        count = reduce_plan.group.size
        fast = count > 1 and reduce_plan.dtype == x.dtype and x.flags.c_contiguous
        comm = reduce_plan.group.comm
        function = comm.Allreduce
        general: tuple = (reduce_plan,)
        if dim is not None:
            fast = fast and leading(shape, dim)
            shape = shape[:dim] + (shape[dim] // count,) + shape[dim + 1 :]
            function = comm.Reduce_scatter_block
            general = (reduce_plan, dim)
        plan = Plan(
            x,
            fast,
            general,
            (kind, normalized),
            function,
            reduce_plan.mpi_type,
            reduce_plan.mpi_op,
            shape,
        )
        return self._remember(self._signatures, key, plan)

    def _move_plan_for(
        self,
        key: tuple,
        x: np.ndarray,
        axes: Any,
        dim: int,
        concat_dim: int | None,
        where: str | None,
    ) -> Plan:
        """Validates an all_gather (concat_dim None) or all_to_all call and caches its Plan."""
        kind = key[0]
        if concat_dim is None:
            dim = normalize_dim(dim, x.ndim, kind)
        normalized = normalize_axes(axes, self.axis_names)
        if concat_dim is not None:
            dim = normalize_dim(dim, x.ndim, kind)
            concat_dim = normalize_dim(concat_dim, x.ndim, kind)
            check_divisible(x.shape, dim, self.group_size(normalized), kind)
        group = self._group(normalized, kind, where)
        count = group.size
        fast = count > 1 and x.flags.c_contiguous and leading(x.shape, dim)
        if concat_dim is None:
            shape = gathered_shape(x.shape, dim, count)
            function = group.comm.Allgather
            general: tuple = (group, normalized, dim)
        else:
            shape = all_to_all_shape(x.shape, dim, concat_dim, count)
            fast = fast and leading(shape, concat_dim)
            function = group.comm.Alltoall
            general = (group, normalized, dim, concat_dim)
        plan = Plan(x, fast, general, (kind, normalized), function, move_type(x.dtype), None, shape)
        return self._remember(self._signatures, key, plan)

    def _reduce_plan(
        self, kind: str, axes: Axes, op: str, dtype: np.dtype, where: str | None
    ) -> ReducePlan:
        """The group and MPI types of a reduction (makes the sub-communicator on first use)."""
        group = self._group(axes, kind, where)
        return ReducePlan(group, axes, *reduction_types(dtype, op))

    def _run_all_reduce(self, x: np.ndarray, plan: ReducePlan, where: str | None) -> np.ndarray:
        """Allreduce into a (reused) result buffer."""
        if plan.group.size == 1:
            return x.copy()
        dtype = plan.dtype
        send = x if dtype is x.dtype and x.flags.c_contiguous else np.asarray(x, dtype, order="C")
        received = self._buffer(x.shape, dtype)
        args = ([send, plan.mpi_type], [received, plan.mpi_type], plan.mpi_op)
        self._call(plan.group.comm.Allreduce, args, "all_reduce", plan.axes, where)
        return received if dtype is x.dtype else received.astype(x.dtype)

    def _run_all_gather(
        self, x: np.ndarray, group: Group, axes: Axes, dim: int, where: str | None
    ) -> np.ndarray:
        """Allgather of raw bytes into a (count, *x.shape) buffer, then joined along dim."""
        count = group.size
        if count == 1:
            return x.copy()
        send = np.asarray(x, order="C")
        received = self._buffer((count,) + x.shape, x.dtype)
        nbytes = send.nbytes
        args = ([send, nbytes, MPI.BYTE], [received, nbytes, MPI.BYTE])
        self._call(group.comm.Allgather, args, "all_gather", axes, where)
        return joined(received, dim)

    def _run_reduce_scatter(
        self, x: np.ndarray, plan: ReducePlan, dim: int, where: str | None
    ) -> np.ndarray:
        """Reduce_scatter_block of x's blocks along dim, laid out block-major."""
        count = plan.group.size
        if count == 1:
            return x.copy()
        dtype = plan.dtype
        send = blocks_first(np.asarray(x, dtype), dim, count)
        received = self._buffer(send.shape[1:], dtype)
        args = ([send, plan.mpi_type], [received, plan.mpi_type], plan.mpi_op)
        self._call(plan.group.comm.Reduce_scatter_block, args, "reduce_scatter", plan.axes, where)
        return received if dtype is x.dtype else received.astype(x.dtype)

    def _run_all_to_all(
        self,
        x: np.ndarray,
        group: Group,
        axes: Axes,
        split_dim: int,
        concat_dim: int,
        where: str | None,
    ) -> np.ndarray:
        """Alltoall of x's blocks along split_dim; received blocks joined along concat_dim."""
        count = group.size
        if count == 1:
            return x.copy()
        send = blocks_first(x, split_dim, count)
        received = self._buffer(send.shape, x.dtype)
        block_bytes = send.nbytes // count
        args = ([send, block_bytes, MPI.BYTE], [received, block_bytes, MPI.BYTE])
        self._call(group.comm.Alltoall, args, "all_to_all", axes, where)
        return joined(received, concat_dim)

    def _permute(
        self, x: np.ndarray, axes: Axes, pairs: list[tuple[int, int]], where: str | None
    ) -> np.ndarray:
        group = self._group(axes, "permute", where)
        index = group.index
        source = {dst: src for src, dst in pairs}.get(index)
        target = {src: dst for src, dst in pairs}.get(index)
        if source == index:
            return x.copy()
        send = np.asarray(x, order="C")
        received = np.zeros_like(send)
        message = [send, send.nbytes, MPI.BYTE]
        into = [received, received.nbytes, MPI.BYTE]
        if target is not None and source is not None:
            args = (message, target, 0, into, source, 0)
            self._call(group.comm.Sendrecv, args, "permute", axes, where)
        elif target is not None:
            self._call(group.comm.Send, (message, target), "permute", axes, where)
        elif source is not None:
            self._call(group.comm.Recv, (into, source), "permute", axes, where)
        return received

    def _broadcast(self, x: np.ndarray, axes: Axes, root: int, where: str | None) -> np.ndarray:
        group = self._group(axes, "broadcast", where)
        if group.size == 1:
            return x.copy()
        is_root = group.index == root
        buffer = np.asarray(x, order="C") if is_root else np.empty(x.shape, x.dtype)
        args = ([buffer, buffer.nbytes, MPI.BYTE], root)
        self._call(group.comm.Bcast, args, "broadcast", axes, where)
        return x.copy() if is_root else buffer

    def _barrier(self, axes: Axes, where: str | None) -> None:
        group = self._group(axes, "barrier", where)
        self._call(group.comm.Barrier, (), "barrier", axes, where)

"""Fast paths of the MPI transport: per-call plans (group, MPI types, checked dims) cached by the
arguments as given, so a repeated call skips validation and lookups and goes straight to MPI.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from mpi4py import MPI

from collectives.base import (
    Axes,
    Communicator,
    check_divisible,
    normalize_axes,
    normalize_dim,
    reduce_ufunc,
)
from spmd.errors import DTypeError

_OPS = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN, "prod": MPI.PROD, "and": MPI.LAND,
        "or": MPI.LOR}
_BOOL_OPS = {"sum": MPI.LOR, "max": MPI.LOR, "min": MPI.LAND, "prod": MPI.LAND, "and": MPI.LAND,
             "or": MPI.LOR}
# 16-bit floats have no portable MPI type: they move as bytes and reduce in float32.
_WIDENED = ("float16", "bfloat16")


class Group(NamedTuple):
    """This rank's group over some axes: its sub-communicator, size and index in it."""

    comm: MPI.Comm
    size: int
    index: int


class ReducePlan(NamedTuple):
    """A reduction's group and the dtype, MPI datatype and MPI op it runs in."""

    group: Group
    axes: Axes
    dtype: np.dtype
    mpi_type: MPI.Datatype
    mpi_op: MPI.Op


def reduction_types(dtype: np.dtype, op: str) -> tuple[np.dtype, MPI.Datatype, MPI.Op]:
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


def blocks_first(x: np.ndarray, dim: int, count: int) -> np.ndarray:
    """Contiguous array of shape (count, *block) whose [j] is block j of x along dim."""
    shape = x.shape[:dim] + (count, x.shape[dim] // count) + x.shape[dim + 1 :]
    return np.ascontiguousarray(np.moveaxis(x.reshape(shape), dim, 0))


def joined(received: np.ndarray, dim: int) -> np.ndarray:
    """Concatenation of received[0], received[1], ... along dim."""
    if dim == 0:
        return received.reshape((-1,) + received.shape[2:])
    return np.concatenate(list(received), axis=dim)


class FastPaths:
    """Mixin of MPICommunicator: the public collectives with cached plans, and their runners.

    A plan is keyed by the call's arguments as given (axes, op, dtype, dims, shape where checks
    depend on it); a miss validates exactly as Communicator does, then caches. Unhashable
    arguments (a list of axes) take Communicator's path.
    """

    _plans: dict[tuple, Any]

    def all_reduce(
        self, x: np.ndarray, axes: Any, op: str = "sum", *, where: str | None = None
    ) -> np.ndarray:
        """Elementwise reduction of every member's x; every member gets the result."""
        if x.__class__ is not np.ndarray:
            x = np.asarray(x)
        key = ("all_reduce", axes, op, x.dtype)
        try:
            plan = self._plans[key]
        except KeyError:
            reduce_ufunc(op, x.dtype)
            normalized = normalize_axes(axes, self.axis_names)
            plan = self._plans[key] = self._reduce_plan("all_reduce", normalized, op, x.dtype, where)
        except TypeError:
            return Communicator.all_reduce(self, x, axes, op, where=where)
        return self._run_all_reduce(x, plan, where)

    def all_gather(
        self, x: np.ndarray, axes: Any, dim: int, *, where: str | None = None
    ) -> np.ndarray:
        """Concatenation of every member's x along dim, in group order (tiled)."""
        x = np.asarray(x)
        key = ("all_gather", axes, dim, x.ndim)
        try:
            group, normalized, dim = self._plans[key]
        except KeyError:
            dim = normalize_dim(dim, x.ndim, "all_gather")
            normalized = normalize_axes(axes, self.axis_names)
            group = self._group(normalized, "all_gather", where)
            self._plans[key] = (group, normalized, dim)
        except TypeError:
            return Communicator.all_gather(self, x, axes, dim, where=where)
        return self._run_all_gather(x, group, normalized, dim, where)

    def reduce_scatter(
        self, x: np.ndarray, axes: Any, dim: int, op: str = "sum", *, where: str | None = None
    ) -> np.ndarray:
        """Block i (along dim) of the reduction of every member's x goes to member i."""
        x = np.asarray(x)
        key = ("reduce_scatter", axes, dim, op, x.dtype, x.shape)
        try:
            plan, dim = self._plans[key]
        except KeyError:
            normalized = normalize_axes(axes, self.axis_names)
            dim = normalize_dim(dim, x.ndim, "reduce_scatter")
            check_divisible(x.shape, dim, self.group_size(normalized), "reduce_scatter")
            reduce_ufunc(op, x.dtype)
            plan = self._reduce_plan("reduce_scatter", normalized, op, x.dtype, where)
            self._plans[key] = (plan, dim)
        except TypeError:
            return Communicator.reduce_scatter(self, x, axes, dim, op, where=where)
        return self._run_reduce_scatter(x, plan, dim, where)

    def all_to_all(
        self, x: np.ndarray, axes: Any, split_dim: int, concat_dim: int, *, where: str | None = None
    ) -> np.ndarray:
        """Block j of x along split_dim goes to member j; received blocks concatenate on concat_dim."""
        x = np.asarray(x)
        key = ("all_to_all", axes, split_dim, concat_dim, x.shape)
        try:
            group, normalized, split_dim, concat_dim = self._plans[key]
        except KeyError:
            normalized = normalize_axes(axes, self.axis_names)
            split_dim = normalize_dim(split_dim, x.ndim, "all_to_all")
            concat_dim = normalize_dim(concat_dim, x.ndim, "all_to_all")
            check_divisible(x.shape, split_dim, self.group_size(normalized), "all_to_all")
            group = self._group(normalized, "all_to_all", where)
            self._plans[key] = (group, normalized, split_dim, concat_dim)
        except TypeError:
            return Communicator.all_to_all(self, x, axes, split_dim, concat_dim, where=where)
        return self._run_all_to_all(x, group, normalized, split_dim, concat_dim, where)

    # -- runners ------------------------------------------------------------------------------
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
        self, x: np.ndarray, group: Group, axes: Axes, split_dim: int, concat_dim: int,
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

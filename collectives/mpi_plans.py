"""Fast paths of the MPI transport: per-call plans cached by the call's arguments (axes, op, dims,
dtype, shape, strides), each holding the MPI call, its types and its result buffer ready to go.
"""

from __future__ import annotations

import math
from sys import getrefcount
from typing import Any, NamedTuple

import numpy as np
from mpi4py import MPI

from collectives.base import (
    Axes,
    Communicator,
    all_to_all_shape,
    check_divisible,
    gathered_shape,
    normalize_axes,
    normalize_dim,
    reduce_ufunc,
)
from spmd.errors import DTypeError, RemoteError

_OPS = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN, "prod": MPI.PROD, "and": MPI.LAND,
        "or": MPI.LOR}
_BOOL_OPS = {"sum": MPI.LOR, "max": MPI.LOR, "min": MPI.LAND, "prod": MPI.LAND, "and": MPI.LAND,
             "or": MPI.LOR}
# 16-bit floats have no portable MPI type: they move as bytes and reduce in float32.
_WIDENED = ("float16", "bfloat16")
# getrefcount of a plan's result buffer that the caller let go of (the plan, its receive
# message, the local name, getrefcount's argument): only then may the next call overwrite it.
PLAN_REFS = 4
# Plans hold their result buffers: past this many the cache starts afresh.
MAX_PLANS = 64


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


class Plan:
    """One call signature's MPI call, ready to go; fast is False where the general runner
    (in collectives/mpi.py) must do it, with the arguments in general."""

    __slots__ = ("fast", "function", "general", "into", "label", "op", "received", "send_type")

    def __init__(self, fast: bool, general: tuple, label: tuple[str, Axes], function: Any,
                 send_type: MPI.Datatype, op: MPI.Op | None, shape: tuple[int, ...],
                 dtype: np.dtype):
        self.fast = fast
        self.general = general
        self.label = label
        self.function = function
        self.send_type = send_type
        self.op = op
        self.received = np.empty(shape, dtype) if fast else None
        self.into = [self.received, send_type]

    def renew(self) -> np.ndarray:
        """A fresh result buffer (the caller still holds the last one)."""
        received = self.received = np.empty_like(self.received)
        self.into = [received, self.send_type]
        return received


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


def move_type(dtype: np.dtype) -> MPI.Datatype:
    """The MPI datatype that moves elements of dtype unchanged (bytes where MPI has no type)."""
    if dtype.isnative and dtype.kind in "biuf" and dtype.name not in _WIDENED:
        try:
            return MPI.Datatype.fromcode(dtype.char)
        except (KeyError, ValueError):
            pass
    return MPI.BYTE


def leading(shape: tuple[int, ...], dim: int) -> bool:
    """Whether blocks along dim of a C-ordered array of this shape lie one after another."""
    return math.prod(shape[:dim]) == 1


def blocks_first(x: np.ndarray, dim: int, count: int) -> np.ndarray:
    """Contiguous array of shape (count, *block) whose [j] is block j of x along dim."""
    shape = x.shape[:dim] + (count, x.shape[dim] // count) + x.shape[dim + 1 :]
    return np.ascontiguousarray(np.moveaxis(x.reshape(shape), dim, 0))


def joined(received: np.ndarray, dim: int) -> np.ndarray:
    """Concatenation of received[0], received[1], ... along dim."""
    if dim == 0:
        return received.reshape((-1,) + received.shape[2:])
    return np.concatenate(list(received), axis=dim)


def remote_error(exc: MPI.Exception, label: tuple[str, Axes], rank: int,
                 where: str | None) -> RemoteError:
    """The RemoteError for an MPI error in a collective."""
    kind, axes = label
    return RemoteError(
        f"{kind} over mesh axes {axes!r} failed on MPI rank {rank}: {exc.Get_error_string()}",
        loc=where,
    )


class FastPaths:
    """Mixin of MPICommunicator: the four bandwidth collectives through cached Plans.

    A miss validates exactly as Communicator does, then caches a Plan. A hit whose plan is fast
    (group of 2 or more, C-contiguous operand, no widening, blocks along dim already in order)
    makes one MPI call from x itself into the plan's buffer; other plans take the general runners.
    Unhashable arguments (a list of axes) take Communicator's path.
    """

    rank: int
    watchdog: Any
    axis_names: tuple[str, ...]
    _plans: dict[tuple, Plan]

    def all_reduce(
        self, x: np.ndarray, axes: Any, op: str = "sum", *, where: str | None = None
    ) -> np.ndarray:
        """Elementwise reduction of every member's x; every member gets the result."""
        if x.__class__ is not np.ndarray:
            x = np.asarray(x)
        try:
            plan = self._plans[("all_reduce", axes, op, x.dtype, x.shape, x.strides)]
        except KeyError:
            plan = self._reduce_plan_for("all_reduce", x, axes, op, None, where)
        except TypeError:
            return Communicator.all_reduce(self, x, axes, op, where=where)
        if not plan.fast:
            return self._run_all_reduce(x, *plan.general, where)
        received = plan.received
        if getrefcount(received) > PLAN_REFS:
            received = plan.renew()
        watchdog = self.watchdog
        if watchdog is not None:
            watchdog.armed = (plan.label, where)
        try:
            plan.function([x, plan.send_type], plan.into, plan.op)
        except MPI.Exception as exc:
            raise remote_error(exc, plan.label, self.rank, where) from exc
        finally:
            if watchdog is not None:
                watchdog.armed = None
        return received

    def reduce_scatter(
        self, x: np.ndarray, axes: Any, dim: int, op: str = "sum", *, where: str | None = None
    ) -> np.ndarray:
        """Block i (along dim) of the reduction of every member's x goes to member i."""
        if x.__class__ is not np.ndarray:
            x = np.asarray(x)
        try:
            plan = self._plans[("reduce_scatter", axes, dim, op, x.dtype, x.shape, x.strides)]
        except KeyError:
            plan = self._reduce_plan_for("reduce_scatter", x, axes, op, dim, where)
        except TypeError:
            return Communicator.reduce_scatter(self, x, axes, dim, op, where=where)
        if not plan.fast:
            return self._run_reduce_scatter(x, *plan.general, where)
        received = plan.received
        if getrefcount(received) > PLAN_REFS:
            received = plan.renew()
        watchdog = self.watchdog
        if watchdog is not None:
            watchdog.armed = (plan.label, where)
        try:
            plan.function([x, plan.send_type], plan.into, plan.op)
        except MPI.Exception as exc:
            raise remote_error(exc, plan.label, self.rank, where) from exc
        finally:
            if watchdog is not None:
                watchdog.armed = None
        return received

    def all_gather(
        self, x: np.ndarray, axes: Any, dim: int, *, where: str | None = None
    ) -> np.ndarray:
        """Concatenation of every member's x along dim, in group order (tiled)."""
        if x.__class__ is not np.ndarray:
            x = np.asarray(x)
        try:
            plan = self._plans[("all_gather", axes, dim, x.dtype, x.shape, x.strides)]
        except KeyError:
            plan = self._move_plan_for("all_gather", x, axes, dim, None, where)
        except TypeError:
            return Communicator.all_gather(self, x, axes, dim, where=where)
        if not plan.fast:
            return self._run_all_gather(x, *plan.general, where)
        received = plan.received
        if getrefcount(received) > PLAN_REFS:
            received = plan.renew()
        watchdog = self.watchdog
        if watchdog is not None:
            watchdog.armed = (plan.label, where)
        try:
            plan.function([x, plan.send_type], plan.into)
        except MPI.Exception as exc:
            raise remote_error(exc, plan.label, self.rank, where) from exc
        finally:
            if watchdog is not None:
                watchdog.armed = None
        return received

    def all_to_all(
        self, x: np.ndarray, axes: Any, split_dim: int, concat_dim: int, *, where: str | None = None
    ) -> np.ndarray:
        """Block j of x along split_dim goes to member j; received blocks concatenate on concat_dim."""
        if x.__class__ is not np.ndarray:
            x = np.asarray(x)
        try:
            plan = self._plans[("all_to_all", axes, split_dim, concat_dim, x.dtype, x.shape,
                                x.strides)]
        except KeyError:
            plan = self._move_plan_for("all_to_all", x, axes, split_dim, concat_dim, where)
        except TypeError:
            return Communicator.all_to_all(self, x, axes, split_dim, concat_dim, where=where)
        if not plan.fast:
            return self._run_all_to_all(x, *plan.general, where)
        received = plan.received
        if getrefcount(received) > PLAN_REFS:
            received = plan.renew()
        watchdog = self.watchdog
        if watchdog is not None:
            watchdog.armed = (plan.label, where)
        try:
            plan.function([x, plan.send_type], plan.into)
        except MPI.Exception as exc:
            raise remote_error(exc, plan.label, self.rank, where) from exc
        finally:
            if watchdog is not None:
                watchdog.armed = None
        return received

    # -- plan making (on a miss) --------------------------------------------------------------
    def _cache(self, key: tuple, plan: Plan) -> Plan:
        """Stores a plan (starting afresh past MAX_PLANS, since plans hold buffers)."""
        if len(self._plans) >= MAX_PLANS:
            self._plans.clear()
        self._plans[key] = plan
        return plan

    def _reduce_plan_for(
        self, kind: str, x: np.ndarray, axes: Any, op: str, dim: int | None, where: str | None
    ) -> Plan:
        """Validates an all_reduce (dim None) or reduce_scatter call and caches its Plan."""
        key = (kind, axes) + ((op,) if dim is None else (dim, op)) + (x.dtype, x.shape, x.strides)
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
        plan = Plan(fast, general, (kind, normalized), function, reduce_plan.mpi_type,
                    reduce_plan.mpi_op, shape, x.dtype)
        return self._cache(key, plan)

    def _move_plan_for(
        self, kind: str, x: np.ndarray, axes: Any, dim: int, concat_dim: int | None,
        where: str | None,
    ) -> Plan:
        """Validates an all_gather (concat_dim None) or all_to_all call and caches its Plan."""
        extra = (dim,) if concat_dim is None else (dim, concat_dim)
        key = (kind, axes) + extra + (x.dtype, x.shape, x.strides)
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
        plan = Plan(fast, general, (kind, normalized), function, move_type(x.dtype), None,
                    shape, x.dtype)
        return self._cache(key, plan)

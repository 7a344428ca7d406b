"""Fast paths of the MPI transport: Plans (the MPI call, its types and result buffer, ready to go)
cached by call site and by full signature, so that a repeated call does a few checks and one MPI call.
"""

from __future__ import annotations

import math
from sys import getrefcount
from typing import Any, NamedTuple

import numpy as np
from mpi4py import MPI

from collectives.base import Axes, Communicator
from spmd.errors import DTypeError, RemoteError

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

    __slots__ = (
        "dtype",
        "fast",
        "function",
        "general",
        "into",
        "label",
        "op",
        "received",
        "send_type",
        "shape",
        "tail",
    )

    def __init__(
        self,
        x: np.ndarray,
        fast: bool,
        general: tuple,
        label: tuple[str, Axes],
        function: Any,
        send_type: MPI.Datatype,
        op: MPI.Op | None,
        shape: tuple[int, ...],
    ):
        self.dtype = x.dtype  # the operand's: a fast path checks x.dtype is plan.dtype
        self.shape = x.shape
        self.fast = fast
        self.general = general
        self.label = label
        self.function = function
        self.send_type = send_type
        self.op = op
        self.received = np.empty(shape, x.dtype) if fast else None
        self.into = [self.received, send_type]
        self.tail = () if op is None else (op,)  # reductions take the MPI op last

    def renew(self) -> np.ndarray:
        """A fresh result buffer (the caller still holds the last one)."""
        received = self.received = np.empty_like(self.received)
        self.into = [received, self.send_type]
        return received


def reduction_types(dtype: np.dtype, op: str) -> tuple[np.dtype, MPI.Datatype, MPI.Op]:
    """(dtype the reduction runs in, its MPI datatype, the MPI op)."""
    if dtype.name in _WIDENED:
        dtype = np.dtype(np.float32)
    elif not dtype.isnative:  # MPI reduces native-order values: convert, reduce, convert back
        dtype = dtype.newbyteorder("=")
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


def remote_error(
    exc: MPI.Exception, label: tuple[str, Axes], rank: int, where: str | None
) -> RemoteError:
    """The RemoteError for an MPI error in a collective."""
    kind, axes = label
    return RemoteError(
        f"{kind} over mesh axes {axes!r} failed on MPI rank {rank}: {exc.Get_error_string()}",
        loc=where,
    )


class FastPaths:
    """Mixin of MPICommunicator: the four bandwidth collectives through cached Plans.

    _plans maps a call site's arguments (kind, axes, op or dims, as given) to its current fast
    Plan: a call whose x has that plan's dtype (the same object) and shape, C-contiguous, makes
    one MPI call from x itself into the plan's buffer, with no other checks. Anything else goes
    to _planned: _signatures maps the full signature (those arguments, dtype, shape,
    strides) to its Plan, validated exactly as Communicator does on a miss; general plans (a
    group of one, widened 16-bit floats, blocks out of order, strided x) run the general runners
    of collectives/mpi.py. Unhashable arguments (a list of axes) take Communicator's path.
    """

    rank: int
    watchdog: Any
    _plans: dict[tuple, Plan]
    _signatures: dict[tuple, Plan]

    def _cached_plan(self, key: tuple, x: Any) -> Plan | None:
        """The call site's plan where x is a contiguous array of the dtype and shape it was
        made for (the hot path: one dict lookup), else None."""
        try:
            plan = self._plans[key]
            fast = plan.dtype is x.dtype and plan.shape == x.shape and x.flags.c_contiguous
        except (KeyError, TypeError, AttributeError):  # new site, a list of axes, not an array
            return None
        return plan if fast else None

    def all_reduce(
        self, x: np.ndarray, axes: Any, op: str = "sum", *, where: str | None = None
    ) -> np.ndarray:
        """Elementwise reduction of every member's x; every member gets the result."""
        plan = self._cached_plan(("all_reduce", axes, op), x)
        if plan is None:
            return self._planned("all_reduce", x, (axes, op), where)
        return self._run_plan(plan, x, where)

    def reduce_scatter(
        self, x: np.ndarray, axes: Any, dim: int, op: str = "sum", *, where: str | None = None
    ) -> np.ndarray:
        """Block i (along dim) of the reduction of every member's x goes to member i."""
        plan = self._cached_plan(("reduce_scatter", axes, dim, op), x)
        if plan is None:
            return self._planned("reduce_scatter", x, (axes, dim, op), where)
        return self._run_plan(plan, x, where)

    def all_gather(
        self, x: np.ndarray, axes: Any, dim: int, *, where: str | None = None
    ) -> np.ndarray:
        """Concatenation of every member's x along dim, in group order (tiled)."""
        plan = self._cached_plan(("all_gather", axes, dim), x)
        if plan is None:
            return self._planned("all_gather", x, (axes, dim), where)
        return self._run_plan(plan, x, where)

    def all_to_all(
        self, x: np.ndarray, axes: Any, split_dim: int, concat_dim: int, *, where: str | None = None
    ) -> np.ndarray:
        """Block j of x along split_dim goes to member j; received blocks concatenate on concat_dim."""
        plan = self._cached_plan(("all_to_all", axes, split_dim, concat_dim), x)
        if plan is None:
            return self._planned("all_to_all", x, (axes, split_dim, concat_dim), where)
        return self._run_plan(plan, x, where)

    def _run_plan(self, plan: Plan, x: np.ndarray, where: str | None) -> np.ndarray:
        """One MPI call from x into the plan's buffer (a new one while the caller holds it)."""
        received = plan.received
        if getrefcount(received) > PLAN_REFS:
            received = plan.renew()
        watchdog = self.watchdog
        if watchdog is not None:
            watchdog.armed = (plan.label, where)
        try:
            plan.function([x, plan.send_type], plan.into, *plan.tail)
        except MPI.Exception as exc:
            raise remote_error(exc, plan.label, self.rank, where) from exc
        finally:
            if watchdog is not None:
                watchdog.armed = None
        return received

    # -- the slow path: plan lookup by signature ---------------------------------------------
    def _planned(self, kind: str, x: np.ndarray, args: tuple, where: str | None) -> np.ndarray:
        """kind(x, *args) (args as the public method takes them) through the plan of x's
        signature, made on a miss; a fast one becomes the site's current plan and runs
        through the fast path."""
        if x.__class__ is not np.ndarray:
            x = np.asarray(x)
        key = (kind, *args, x.dtype, x.shape, x.strides)
        try:
            plan = self._signatures[key]
        except KeyError:
            plan = self._plan_for(kind, key, x, args, where)
        except TypeError:  # unhashable arguments (a list of axes)
            return getattr(Communicator, kind)(self, x, *args, where=where)
        if plan.fast and plan.dtype is x.dtype:  # then the fast path takes it
            self._remember(self._plans, key[: 1 + len(args)], plan)
            return getattr(self, kind)(x, *args, where=where)
        return getattr(self, "_run_" + kind)(x, *plan.general, where)

    def _plan_for(
        self, kind: str, key: tuple, x: np.ndarray, args: tuple, where: str | None
    ) -> Plan:
        """A new plan for kind's signature key (validated as Communicator does)."""
        if kind == "all_reduce":
            axes, op = args
            return self._reduce_plan_for(key, x, axes, op, None, where)
        if kind == "reduce_scatter":
            axes, dim, op = args
            return self._reduce_plan_for(key, x, axes, op, dim, where)
        if kind == "all_gather":
            axes, dim = args
            return self._move_plan_for(key, x, axes, dim, None, where)
        axes, split_dim, concat_dim = args
        return self._move_plan_for(key, x, axes, split_dim, concat_dim, where)

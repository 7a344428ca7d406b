"""Tracing: Python functions on Tracers become IR graphs; `bind` adds one op.

Outside any trace, `bind` runs the op at once (eager mode) through the reference
implementation, or, on sharded Arrays, partitioned (Array.run_sharded).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from spmd import dtypes
from spmd.array import Array
from spmd.errors import (
    INTERNAL_DIRS,
    InternalError,
    SpmdError,
    TracerError,
    describe_loc,
    user_frame,
)
from spmd.ir.graph import Attrs, Graph, Op, fresh_id
from spmd.ir.opdef import REGISTRY, Trait
from spmd.ir.types import TensorType


def register_internal_dir(path: str) -> None:
    """Frames under `path` are treated as library code when finding the user's line."""
    INTERNAL_DIRS.append(os.path.abspath(path) + os.sep)


class loc_scope:
    """`with loc_scope(op.loc):` ops bound inside take that location (replay, VJP rules)."""

    def __init__(self, loc: str):
        self.loc = loc

    def __enter__(self) -> None:
        self.saved = getattr(_state, "loc", None)
        if self.loc:
            _state.loc = self.loc

    def __exit__(self, *exc: object) -> None:
        _state.loc = self.saved


def user_loc() -> str:
    """The user's file:line of the op being traced now ('' when none is found)."""
    override = getattr(_state, "loc", None)
    if override:
        return override
    found = user_frame()
    if found is None:
        return ""
    return f"{os.path.basename(found[0])}:{found[1]}"


def with_loc(err: SpmdError) -> SpmdError:
    """The same error, now pointing at the user's line (if it did not already)."""
    if err.loc is not None:
        return err
    return type(err)(err.problem, describe_loc(), err.hint)


class Trace:
    """A graph under construction. Nested traces capture outer values as extra params."""

    def __init__(self, parent: Trace | None = None):
        self.parent = parent
        self.params: list[int] = []
        self.param_types: list[TensorType] = []
        self.ops: list[Op] = []
        self.captures: dict[int, tuple[Any, int]] = {}  # outer value id -> (outer value, param id)

    def new_param(self, t: TensorType) -> Tracer:
        vid = fresh_id()
        self.params.append(vid)
        self.param_types.append(t)
        return Tracer(self, vid, t)

    def capture(self, outer: Any) -> int:
        """Turn a value from an enclosing trace (a closure) into an implicit param."""
        key = outer.id if isinstance(outer, Tracer) else id(outer)
        if key not in self.captures:
            vid = fresh_id()
            self.captures[key] = (outer, vid)
        return self.captures[key][1]

    def add_op(self, op: Op) -> None:
        self.ops.append(op)

    def to_graph(self, results: Sequence[Tracer]) -> Graph:
        """Finish: captured values become params after the explicit ones."""
        params = list(self.params)
        types = list(self.param_types)
        for outer, vid in self.captures.values():
            params.append(vid)
            types.append(outer.type)
        return Graph(tuple(params), tuple(types), tuple(self.ops), tuple(r.id for r in results))

    def captured_values(self) -> list[Any]:
        return [outer for outer, _ in self.captures.values()]


_state = threading.local()


def current_trace() -> Trace | None:
    return getattr(_state, "trace", None)


class trace_scope:
    """`with trace_scope(t):` makes t the active trace."""

    def __init__(self, trace: Trace):
        self.trace = trace

    def __enter__(self) -> Trace:
        self.saved = current_trace()
        _state.trace = self.trace
        return self.trace

    def __exit__(self, *exc: object) -> None:
        _state.trace = self.saved


trace_counter = {"count": 0}  # incremented on every jit trace (tests check caching with it)


from spmd.array_methods import ArrayMethods


class Tracer(ArrayMethods):
    """A value in a graph being traced: has a type, no data."""

    __slots__ = ("id", "trace", "type")
    __array_priority__ = 100

    def __init__(self, trace: Trace, vid: int, t: TensorType):
        self.trace = trace
        self.id = vid
        self.type = t

    def _concrete_error(self, what: str) -> TracerError:
        return TracerError(
            f"{what} needs a concrete value, but got a traced {self.type} inside jit/grad",
            describe_loc(),
            "use spmd.numpy.where / spmd.lax.cond for data-dependent choices, or mark the "
            "argument static with jit(static_argnums=...)",
        )

    def __bool__(self) -> bool:
        raise self._concrete_error("a Python `if`/`bool()`")

    def __int__(self) -> int:
        raise self._concrete_error("int()")

    def __float__(self) -> float:
        raise self._concrete_error("float()")

    def __index__(self) -> int:
        raise self._concrete_error("using a traced value as a Python index")

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise self._concrete_error("np.asarray()")

    def item(self) -> Any:
        raise self._concrete_error(".item()")

    def tolist(self) -> Any:
        raise self._concrete_error(".tolist()")

    def __repr__(self) -> str:
        return f"Traced<{self.type}>"


def type_of(x: Any) -> TensorType:
    """The IR type of a Tracer, Array, numpy value or Python scalar."""
    if isinstance(x, Tracer):
        return x.type
    if hasattr(x, "aval"):
        return x.aval
    if isinstance(x, np.generic):  # np.float64(1.0) is a float subclass but not weak
        return TensorType((), dtypes.canonical(x.dtype))
    if isinstance(x, bool):
        return TensorType((), "bool")
    if isinstance(x, int):
        return TensorType((), dtypes.DEFAULT_INT, True)
    if isinstance(x, float):
        return TensorType((), dtypes.DEFAULT_FLOAT, True)
    arr = np.asarray(x)
    return TensorType(arr.shape, dtypes.canonical(arr.dtype))


def concrete_value(x: Any, t: TensorType) -> np.ndarray:
    if hasattr(x, "_global_value"):
        return x._global_value()
    return np.asarray(x, dtype=dtypes.to_numpy(t.dtype))


def bind(name: str, *inputs: Any, **attrs: Any) -> Any:
    """Apply op `name`: record it in the active trace, or run it now when none is active."""
    opdef = REGISTRY.get(name)
    if opdef is None:  # REGISTRY is filled by importing spmd.ops (spmd.lax does)
        loaded = "" if REGISTRY else " (spmd.ops is not loaded)"
        raise InternalError(f"unknown op {name!r}{loaded}")
    in_types = [type_of(x) for x in inputs]
    try:
        out = opdef.infer(*in_types, **attrs)
    except SpmdError as err:
        raise with_loc(err) from None
    out_types = out if isinstance(out, tuple) else (out,)
    trace = current_trace()
    if trace is None:
        return _run_eager(opdef, inputs, in_types, out_types, attrs)
    ids = tuple(_value_id(trace, x, t) for x, t in zip(inputs, in_types))
    outputs = tuple(fresh_id() for _ in out_types)
    trace.add_op(Op(name, ids, outputs, out_types, Attrs(attrs), user_loc()))
    results = tuple(Tracer(trace, v, t) for v, t in zip(outputs, out_types))
    return results if opdef.multi_output else results[0]


def _value_id(trace: Trace, x: Any, t: TensorType) -> int:
    if isinstance(x, Tracer):
        if x.trace is trace:
            return x.id
        return trace.capture(x)
    # A concrete value inside a trace becomes a constant op.
    value = concrete_value(x, t)
    vid = fresh_id()
    trace.add_op(Op("constant", (), (vid,), (t,), Attrs(value=value, weak=t.weak), user_loc()))
    return vid


def _run_eager(
    opdef: Any,
    inputs: Sequence[Any],
    in_types: list[TensorType],
    out_types: tuple[TensorType, ...],
    attrs: dict[str, Any],
) -> Any:
    sharded = any(isinstance(x, Array) and x.is_sharded for x in inputs)
    if sharded and not opdef.has(Trait.MESH_REFERENCE):
        return Array.run_sharded(opdef, inputs, in_types, attrs)
    args = [concrete_value(x, t) for x, t in zip(inputs, in_types)]
    out = opdef.reference(*args, **attrs)
    outs = out if opdef.multi_output else (out,)
    results = tuple(
        Array(np.asarray(v, dtype=dtypes.to_numpy(t.dtype)), weak=t.weak)
        for v, t in zip(outs, out_types)
    )
    return results if opdef.multi_output else results[0]

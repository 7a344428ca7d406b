"""The numpy reference interpreter: runs any graph with each op's reference impl.

It is the oracle every test compares with. Imports only the core (IR, registry).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from spmd import dtypes
from spmd.errors import InternalError
from spmd.ir.graph import Graph, Op
from spmd.ir.opdef import REGISTRY  # filled by spmd.ops, which built the graph


def evaluate(
    graph: Graph,
    args: Sequence[Any],
    run_op: Callable[[Op, list[np.ndarray]], Sequence[np.ndarray]] | None = None,
) -> list[np.ndarray]:
    """Run `graph` on numpy `args`; returns its results as numpy arrays.

    `run_op` overrides how one op executes (a device with collectives, a simulator); it
    stays in force for sub-graphs (scan bodies, cond branches) run by nested evaluate calls
    on this thread.
    """
    if len(args) != len(graph.params):
        raise InternalError(f"graph takes {len(graph.params)} args, got {len(args)}")
    env: dict[int, np.ndarray] = {}
    for vid, t, a in zip(graph.params, graph.param_types, args):
        env[vid] = np.asarray(a, dtype=dtypes.to_numpy(t.dtype))
    saved = getattr(_active, "run_op", None)
    run = run_op or saved or run_reference
    _active.run_op = run
    try:
        for op in graph.ops:
            outs = run(op, [env[v] for v in op.inputs])
            for vid, value in zip(op.outputs, outs):
                env[vid] = value
    finally:
        _active.run_op = saved
    return [env[v] for v in graph.results]


_active = threading.local()  # the run_op of the evaluate call in progress on this thread


class run_op_scope:
    """`with run_op_scope(fn):` sub-graphs run on this thread by reference ops (scan bodies
    reached through a backend's fallback) execute their ops with fn."""

    def __init__(self, run_op: Callable[[Op, list[np.ndarray]], Sequence[np.ndarray]]):
        self.run_op = run_op

    def __enter__(self) -> None:
        self.saved = getattr(_active, "run_op", None)
        _active.run_op = self.run_op

    def __exit__(self, *exc: object) -> None:
        _active.run_op = self.saved


def run_reference(op: Op, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """One op through its registry reference, cast to its declared output types."""
    opdef = REGISTRY[op.name]
    out = opdef.reference(*inputs, **op.attrs)
    outs = out if opdef.multi_output else (out,)
    return [_cast(v, t.dtype, t.shape, op) for v, t in zip(outs, op.types)]


def _cast(value: Any, dtype: str, shape: tuple[int, ...], op: Op) -> np.ndarray:
    arr = np.asarray(value)
    want = dtypes.to_numpy(dtype)
    if arr.dtype != want:
        arr = arr.astype(want)
    if arr.shape != shape:
        raise InternalError(
            f"reference of {op.name} gave shape {arr.shape}, its type says {shape}", op.loc
        )
    return arr

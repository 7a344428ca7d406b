"""One op outside jit on sharded Arrays: jitted once per (op, attrs, input types) and run
partitioned, so its results stay sharded (spmd.array.Array.run_sharded calls it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spmd.api import jit
from spmd.ir.graph import Attrs
from spmd.ir.types import TensorType
from spmd.tracing import bind

_CACHE: dict[Any, Any] = {}


def eager_op(
    opdef: Any, inputs: Sequence[Any], in_types: Sequence[TensorType], attrs: dict[str, Any]
) -> Any:
    key = (opdef.name, Attrs(attrs), tuple(in_types))
    jitted = _CACHE.get(key)
    if jitted is None:
        name = opdef.name
        jitted = jit(lambda *xs: bind(name, *xs, **attrs))
        jitted.__name__ = name
        _CACHE[key] = jitted
    return jitted(*inputs)

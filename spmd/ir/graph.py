"""The IR: a flat SSA list of ops over integer value ids, with params and results.

Graphs and ops are immutable; passes return new graphs. Control-flow ops hold
sub-graphs in their attrs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from spmd.ir.types import TensorType

_ids = itertools.count(1)


def fresh_id() -> int:
    """A value id unique in this process (so graphs can be inlined into each other)."""
    return next(_ids)


class Attrs(dict):
    """Op attributes: a dict of immutable values (ints, floats, strs, tuples, Graphs, ndarrays)."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted((k, freeze(v)) for k, v in self.items())))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, dict) or self.keys() != other.keys():
            return False
        return all(freeze(self[k]) == freeze(other[k]) for k in self)

    def __ne__(self, other: object) -> bool:
        return not self == other


def freeze(value: Any) -> Any:
    """A hashable stand-in for an attribute value (ndarrays by dtype, shape and bytes)."""
    import numpy as np

    if isinstance(value, np.ndarray):
        return ("ndarray", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass(frozen=True, eq=True)
class Op:
    """One operation: `outputs = name(inputs) {attrs}` at the user's source location."""

    name: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    types: tuple[TensorType, ...]
    attrs: Attrs = field(default_factory=Attrs)
    loc: str = ""

    def __hash__(self) -> int:
        return hash((self.name, self.inputs, self.outputs, self.types, self.attrs))


@dataclass(frozen=True, eq=True)
class Graph:
    """A function in SSA form: params (with types), ops in order, and results."""

    params: tuple[int, ...]
    param_types: tuple[TensorType, ...]
    ops: tuple[Op, ...]
    results: tuple[int, ...]

    def __hash__(self) -> int:
        return hash((self.params, self.param_types, self.ops, self.results))

    @cached_property
    def types(self) -> dict[int, TensorType]:
        """Type of every value defined in this graph (params and op outputs)."""
        out = dict(zip(self.params, self.param_types))
        for op in self.ops:
            out.update(zip(op.outputs, op.types))
        return out

    @cached_property
    def producers(self) -> dict[int, Op]:
        return {v: op for op in self.ops for v in op.outputs}

    @property
    def result_types(self) -> tuple[TensorType, ...]:
        return tuple(self.types[v] for v in self.results)

    def users(self) -> dict[int, list[Op]]:
        out: dict[int, list[Op]] = {}
        for op in self.ops:
            for v in op.inputs:
                out.setdefault(v, []).append(op)
        return out

    def walk(self) -> Iterator[Op]:
        """Every op, including those of nested sub-graphs."""
        for op in self.ops:
            yield op
            for sub in subgraphs(op):
                yield from sub.walk()

    def replace(self, **changes: Any) -> Graph:
        fields = {
            "params": self.params,
            "param_types": self.param_types,
            "ops": self.ops,
            "results": self.results,
        }
        fields.update(changes)
        return Graph(**fields)


def subgraphs(op: Op) -> list[Graph]:
    """Sub-graphs held in an op's attrs (scan body, cond branches)."""
    found: list[Graph] = []
    for value in op.attrs.values():
        if isinstance(value, Graph):
            found.append(value)
        elif isinstance(value, tuple):
            found.extend(v for v in value if isinstance(v, Graph))
    return found

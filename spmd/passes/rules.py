"""RuleTable: rewrite rules indexed by op name, applied to a graph until nothing changes.

A rule takes (op, view) and returns None (no match), an existing value id that replaces
the op's single output, or a new Op defining the same outputs. New ops keep the old loc.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from spmd.ir.graph import Attrs, Graph, Op
from spmd.ir.opdef import REGISTRY, Trait
from spmd.ir.types import TensorType

Rule = Callable[[Op, "GraphView"], "int | Op | None"]
MAX_ROUNDS = 8


IOTA_LIMIT = 1024  # elements; as constant folding's own limit


class GraphView:
    """What a rule may ask about the values defined so far: producer, type, constant value."""

    def __init__(self, graph: Graph):
        self.types: dict[int, TensorType] = dict(zip(graph.params, graph.param_types))
        self.producers: dict[int, Op] = {}
        self.uses: dict[int, int] = {}  # of the graph as the sweep began (results count)
        for v in [*(v for op in graph.ops for v in op.inputs), *graph.results]:
            self.uses[v] = self.uses.get(v, 0) + 1

    def add(self, op: Op) -> None:
        self.types.update(zip(op.outputs, op.types))
        self.producers.update((v, op) for v in op.outputs)

    def producer(self, vid: int) -> Op | None:
        return self.producers.get(vid)

    def constant_value(self, vid: int) -> np.ndarray | None:
        """The value of a constant, an iota, or a broadcast_in_dim of one; else None. An
        iota of more than IOTA_LIMIT elements is not materialised (its global shape can be
        a pod's worth of memory: one_hot over a 32k vocabulary), so it counts as unknown."""
        op = self.producers.get(vid)
        if op is None:
            return None
        opdef = REGISTRY[op.name]
        if opdef.has(Trait.SOURCE):
            if "value" in op.attrs:  # a constant holds its value
                return op.attrs["value"]
            if op.types[0].size > IOTA_LIMIT:
                return None
            from spmd.interpreter import run_reference

            return run_reference(op, [])[0]
        if not opdef.has(Trait.BROADCAST):
            return None
        inner = self.constant_value(op.inputs[0])
        if inner is None:
            return None
        view = [1] * len(op.attrs["shape"])
        for i, d in enumerate(op.attrs["broadcast_dimensions"]):
            view[d] = inner.shape[i]
        return np.broadcast_to(inner.reshape(view), op.attrs["shape"])

    def is_constant(self, vid: int, scalar: object) -> bool:
        """Is every element of value `vid` a known constant equal to `scalar`?"""
        value = self.constant_value(vid)
        if value is None:
            return False
        # A broadcast repeats its operand along stride-0 dims: compare the operand only.
        if value.size:
            value = value[tuple(slice(0, 1) if st == 0 else slice(None) for st in value.strides)]
        with np.errstate(all="ignore"):
            return bool(np.all(value == scalar))


class RuleTable:
    """Rules keyed by op name, so dispatch is a dict lookup."""

    def __init__(self) -> None:
        self.rules: dict[str, list[Rule]] = {}

    def on(self, *names: str) -> Callable[[Rule], Rule]:
        def register(rule: Rule) -> Rule:
            for name in names:
                self.rules.setdefault(name, []).append(rule)
            return rule

        return register

    def rewrite(self, graph: Graph) -> Graph:
        """Apply the rules (in sub-graphs too) until none matches."""
        for _ in range(MAX_ROUNDS):
            graph, changed = self.sweep(graph)
            if not changed:
                break
        return graph

    def sweep(self, graph: Graph) -> tuple[Graph, bool]:
        renamed: dict[int, int] = {}
        view = GraphView(graph)
        ops: list[Op] = []
        changed = False
        for op in graph.ops:
            op = map_subgraphs(rename_inputs(op, renamed), self.rewrite)
            result = self.apply(op, view)
            if isinstance(result, int):
                renamed[op.outputs[0]] = result
                changed = True
                continue
            if result is not None:
                op, changed = result, True
            ops.append(op)
            view.add(op)
        results = tuple(renamed.get(v, v) for v in graph.results)
        return graph.replace(ops=tuple(ops), results=results), changed

    def apply(self, op: Op, view: GraphView) -> int | Op | None:
        for rule in self.rules.get(op.name, ()):
            result = rule(op, view)
            if (
                isinstance(result, int)
                and len(op.types) == 1
                and view.types.get(result) == op.types[0]
            ):
                return result
            if isinstance(result, Op) and result.outputs == op.outputs and result.types == op.types:
                return result if result.loc else _with_loc(result, op.loc)
        return None


def rename_inputs(op: Op, renamed: dict[int, int]) -> Op:
    """The op reading renamed values (the same object when nothing changes)."""
    if not any(v in renamed for v in op.inputs):
        return op
    inputs = tuple(renamed.get(v, v) for v in op.inputs)
    return Op(op.name, inputs, op.outputs, op.types, op.attrs, op.loc)


def map_subgraphs(op: Op, transform: Callable[[Graph], Graph]) -> Op:
    """The op with `transform` applied to each sub-graph in its attrs."""
    if not any(isinstance(v, (Graph, tuple)) for v in op.attrs.values()):
        return op
    attrs = Attrs()
    for key, value in op.attrs.items():
        if isinstance(value, Graph):
            value = transform(value)
        elif isinstance(value, tuple) and any(isinstance(v, Graph) for v in value):
            value = tuple(transform(v) if isinstance(v, Graph) else v for v in value)
        attrs[key] = value
    return Op(op.name, op.inputs, op.outputs, op.types, attrs, op.loc)


def _with_loc(op: Op, loc: str) -> Op:
    return Op(op.name, op.inputs, op.outputs, op.types, op.attrs, loc)

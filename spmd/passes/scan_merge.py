"""Scan merging. After it: no two scans over the same operands, length and direction compute
the same carries; the later one's ys come from the earlier one (so a scan and the residual
scan its VJP emits run as one forward loop)."""

from __future__ import annotations

from typing import Any

from spmd.ir.graph import Attrs, Graph, Op, freeze, fresh_id
from spmd.passes.dce import dce
from spmd.passes.purity import is_impure
from spmd.passes.rules import map_subgraphs, rename_inputs


def scan_merge(graph: Graph) -> Graph:
    """Fold each scan into an earlier one over the same operands that computes its carries.

    Dead scans go first and unread xs and ys after, so a merge never makes a loop do more
    work (a remat region's backward that reads a name saved instead of its input leaves
    that input's stack unread)."""
    return drop_unread_ys(drop_unread_xs(merge_all(dce(graph))))


def drop_unread_xs(graph: Graph) -> Graph:
    """Each scan without the xs its body never reads."""
    ops = []
    for op in graph.ops:
        op = map_subgraphs(op, drop_unread_xs)
        if op.name == "scan":
            body = op.attrs["body"]
            read = set(body.results).union(*(o.inputs for o in body.ops))
            start = op.attrs["num_consts"] + op.attrs["num_carry"]
            kept = [i for i, v in enumerate(body.params) if i < start or v in read]
            if len(kept) < len(body.params):
                attrs = Attrs(op.attrs)
                attrs["body"] = body.replace(
                    params=tuple(body.params[i] for i in kept),
                    param_types=tuple(body.param_types[i] for i in kept),
                )
                inputs = tuple(op.inputs[i] for i in kept)
                op = Op("scan", inputs, op.outputs, op.types, attrs, op.loc)
        ops.append(op)
    return graph.replace(ops=tuple(ops))


def merge_all(graph: Graph) -> Graph:
    """Merge the scans of graph, then those of its sub-graphs."""
    renamed: dict[int, int] = {}
    ops: list[Op] = []
    scans: dict[Any, list[int]] = {}
    for op in graph.ops:
        op = rename_inputs(op, renamed)
        if op.name != "scan":
            ops.append(op)
            continue
        key = (
            op.inputs,
            op.attrs["num_consts"],
            op.attrs["num_carry"],
            op.attrs["length"],
            op.attrs["reverse"],
        )
        for index in scans.get(key, []):
            merged = merge_scans(ops[index], op, renamed)
            if merged is not None:
                ops[index] = merged
                break
        else:
            scans.setdefault(key, []).append(len(ops))
            ops.append(op)
    results = tuple(renamed.get(v, v) for v in graph.results)
    # Inner scans merge after the outer ones: both outer bodies still hold them unchanged.
    return graph.replace(ops=tuple(map_subgraphs(op, merge_all) for op in ops), results=results)


def drop_unread_ys(graph: Graph) -> Graph:
    """Each scan without the ys nothing reads (and the body ops only they needed)."""
    read = set(graph.results).union(*(op.inputs for op in graph.ops))
    ops = []
    for op in graph.ops:
        if op.name != "scan" or all(v in read for v in op.outputs[op.attrs["num_carry"] :]):
            ops.append(op)
            continue
        kept = [i for i, v in enumerate(op.outputs) if i < op.attrs["num_carry"] or v in read]
        body = op.attrs["body"]
        attrs = Attrs(op.attrs)
        attrs["body"] = dce(body.replace(results=tuple(body.results[i] for i in kept)))
        ops.append(
            Op(
                "scan",
                op.inputs,
                tuple(op.outputs[i] for i in kept),
                tuple(op.types[i] for i in kept),
                attrs,
                op.loc,
            )
        )
    return graph.replace(ops=tuple(map_subgraphs(op, drop_unread_ys) for op in ops))


def merge_scans(first: Op, second: Op, renamed: dict[int, int]) -> Op | None:
    """`first` extended with the ys of `second`, or None when their carries differ.

    On success `renamed` maps each output of `second` to the merged op's output with the
    same value (its own ys keep their ids where `first` has no equal y)."""
    body, other = first.attrs["body"], second.attrs["body"]
    if body.param_types != other.param_types:
        return None
    num_carry = first.attrs["num_carry"]
    numbering = ValueNumbering(body)
    mapped = numbering.absorb(other)
    if any(
        numbering.find(a) != mapped[b]
        for a, b in zip(body.results[:num_carry], other.results[:num_carry])
    ):
        return None
    outputs = list(first.outputs)
    types = list(first.types)
    results = list(body.results)
    where = {
        numbering.find(v): out
        for v, out in zip(body.results[num_carry:], first.outputs[num_carry:])
    }
    new_names = dict(zip(second.outputs[:num_carry], first.outputs[:num_carry]))
    ys = zip(other.results[num_carry:], second.outputs[num_carry:], second.types[num_carry:])
    for value, output, output_type in ys:
        value = mapped[value]
        if value not in where:
            where[value] = output
            outputs.append(output)
            types.append(output_type)
            results.append(value)
        new_names[output] = where[value]
    merged_body = dce(body.replace(ops=body.ops + tuple(numbering.added), results=tuple(results)))
    renamed.update(new_names)
    attrs = Attrs(first.attrs)
    attrs["body"] = merged_body
    return Op("scan", first.inputs, tuple(outputs), tuple(types), attrs, first.loc)


class ValueNumbering:
    """Values of a body graph keyed by what computes them (modulo value ids), so that ops
    of a second graph over the same params can reuse them."""

    def __init__(self, graph: Graph):
        self.representative: dict[int, int] = {v: v for v in graph.params}
        self.params = graph.params
        self.computed: dict[Any, tuple[int, ...]] = {}
        self.added: list[Op] = []
        for op in graph.ops:
            key = self.key(op, self.representative)
            known = self.computed.get(key) if key is not None else None
            if known is None:
                if key is not None:
                    self.computed[key] = op.outputs
                known = op.outputs
            self.representative.update(zip(op.outputs, known))

    def find(self, value: int) -> int:
        return self.representative.get(value, value)

    def key(self, op: Op, names: dict[int, int]) -> Any:
        """What op computes, or None for an op that must never be shared (rng, effects)."""
        if is_impure(op.name) or not op.outputs:
            return None
        inputs = tuple(names.get(v, ("free", v)) for v in op.inputs)
        return (op.name, inputs, op.types, attrs_key(op.attrs))

    def absorb(self, graph: Graph) -> dict[int, int]:
        """Map graph's values onto ours (params by position); ops we lack are copied into
        `added` with fresh output ids. Returns graph's value id -> our value id."""
        names = dict(zip(graph.params, self.params))
        for op in graph.ops:
            key = self.key(op, names)
            known = self.computed.get(key) if key is not None else None
            if known is None:
                known = tuple(fresh_id() for _ in op.outputs)
                inputs = tuple(names.get(v, v) for v in op.inputs)
                self.added.append(Op(op.name, inputs, known, op.types, op.attrs, op.loc))
                if key is not None:
                    self.computed[key] = known
                    self.representative.update((v, v) for v in known)
            names.update(zip(op.outputs, known))
        return {v: names.get(v, v) for v in graph.results}


def canonical(graph: Graph) -> tuple:
    """A hashable form of graph equal for graphs that differ only in value ids."""
    number: dict[int, int] = {v: i for i, v in enumerate(graph.params)}
    ops = []
    for op in graph.ops:
        inputs = tuple(number.get(v, ("free", v)) for v in op.inputs)
        for v in op.outputs:
            number[v] = len(number)
        ops.append((op.name, inputs, op.types, attrs_key(op.attrs)))
    results = tuple(number.get(v, ("free", v)) for v in graph.results)
    return (graph.param_types, tuple(ops), results)


def attrs_key(attrs: Attrs) -> tuple:
    return tuple((name, _value_key(attrs[name])) for name in sorted(attrs))


def _value_key(value: Any) -> Any:
    if isinstance(value, Graph):
        return ("graph", canonical(value))
    if isinstance(value, tuple) and any(isinstance(v, Graph) for v in value):
        return tuple(_value_key(v) for v in value)
    return freeze(value)

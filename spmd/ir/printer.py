"""IR text: prints a Graph as readable StableHLO-like text that spmd.ir.parser reads back.

Value ids are printed as they are (`%1234`, process-unique), not renumbered, so that
`parse_graph(print_graph(g)) == g` holds exactly. Imports only the IR and spmd.named_sharding.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

from spmd import dtypes
from spmd.ir.graph import Graph, Op
from spmd.ir.types import TensorType

INDENT = "  "
LIST_LIMIT = 32  # arrays with more elements than this print as hex of their raw bytes


def print_graph(graph: Graph, name: str = "main") -> str:
    """The IR text of `graph` as `func @name(...) -> (...) { ... }`.

    >>> from spmd.ir.graph import Graph
    >>> print_graph(Graph((), (), (), ()))
    'func @main() -> () {\\n  return\\n}'
    """
    return Printer().function(graph, name)


def op_lines(graph: Graph, name: str = "main") -> dict[int, int]:
    """1-based line of each op in `print_graph(graph)`, keyed by id(op) (nested ops too)."""
    printer = Printer()
    printer.function(graph, name)
    return printer.line_of


class Printer:
    """Writes text line by line; records the line of every op it prints."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.current = ""
        self.line_of: dict[int, int] = {}

    def write(self, text: str) -> None:
        self.current += text

    def newline(self) -> None:
        self.lines.append(self.current)
        self.current = ""

    def function(self, graph: Graph, name: str) -> str:
        results = ", ".join(_type_or_unknown(graph, v) for v in graph.results)
        symbol = name if re.fullmatch(r"[A-Za-z_][\w.$-]*", name) else json.dumps(name)
        self.write(f"func @{symbol}({_params(graph)}) -> ({results}) {{")
        self.newline()
        self.body(graph, 1)
        self.write("}")
        self.newline()
        return "\n".join(self.lines)

    def body(self, graph: Graph, depth: int) -> None:
        for op in graph.ops:
            self.op(op, depth)
        returned = ", ".join(f"%{v}" for v in graph.results)
        self.write(f"{INDENT * depth}return {returned}".rstrip())
        self.newline()

    def op(self, op: Op, depth: int) -> None:
        self.line_of[id(op)] = len(self.lines) + 1
        head = ", ".join(f"%{v}" for v in op.outputs)
        head = f"{head} = " if head else ""
        args = ", ".join(f"%{v}" for v in op.inputs)
        self.write(f"{INDENT * depth}{head}{op.name}({args})")
        if op.attrs:
            self.write(" {")
            for i, (key, value) in enumerate(op.attrs.items()):
                self.write(f"{', ' if i else ''}{key} = ")
                self.value(value, depth)
            self.write("}")
        types = ", ".join(str(t) for t in op.types)
        self.write(f" : {types}" if len(op.types) == 1 else f" : ({types})")
        if op.loc:
            self.write(f" loc({json.dumps(op.loc)})")
        self.newline()

    def value(self, value: Any, depth: int) -> None:
        """One attribute value; a sub-graph prints as a nested `graph(...) { ... }` region."""
        if isinstance(value, Graph):
            self.write(f"graph({_params(value)}) {{")
            self.newline()
            self.body(value, depth + 1)
            self.write(INDENT * depth + "}")
            return
        if not isinstance(value, (tuple, list)):
            self.write(format_scalar_attr(value))
            return
        self.write("(")
        for i, item in enumerate(value):
            self.write(", " if i else "")
            self.value(item, depth)
        self.write("," if len(value) == 1 else "")
        self.write(")")


def format_scalar_attr(value: Any) -> str:
    """Any attribute value other than a tuple or a Graph."""
    from spmd.named_sharding import ShardingAttr

    if value is None:
        return "none"
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return format_float(float(value))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, np.ndarray):
        return format_array(value)
    if isinstance(value, TensorType):
        return str(value)
    if isinstance(value, ShardingAttr):
        return str(value)
    if isinstance(value, frozenset):
        return "#set(" + ", ".join(sorted(format_scalar_attr(v) for v in value)) + ")"
    return f"#opaque<{json.dumps(repr(value))}>"


def format_float(value: float) -> str:
    """repr, which round-trips exactly; inf and nan spelled bare."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)


def format_array(array: np.ndarray) -> str:
    """`dense<[[1, 2], [3, 4]] : tensor<2x2xint32>>`, or the raw bytes in hex when large
    or when the list form would not give back the same bytes (NaN payloads)."""
    t = TensorType(array.shape, dtypes.canonical(array.dtype))
    if array.size <= LIST_LIMIT:
        listed = _nested(array)
        if literal_to_array(listed, t).tobytes() == array.tobytes():
            return f"dense<{listed} : {t}>"
    return f"dense<0x{array.tobytes().hex().upper()} : {t}>"


def _nested(array: np.ndarray) -> str:
    if array.ndim == 0:
        item = array.item() if array.dtype.kind in "biuf" else float(array)
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, int):
            return str(item)
        return format_float(float(item))
    return "[" + ", ".join(_nested(sub) for sub in array) + "]"


def literal_to_array(listed: str, t: TensorType) -> np.ndarray:
    """Inverse of the list form: `[[1.0, nan], [-inf, 2.5]]` to an array of type t."""
    text = re.sub(r"\bnan\b", "NaN", listed)
    text = re.sub(r"\binf\b", "Infinity", text)
    value = json.loads(text)
    return np.array(value, dtype=dtypes.to_numpy(t.dtype)).reshape(t.shape)


def _params(graph: Graph) -> str:
    return ", ".join(f"%{v}: {t}" for v, t in zip(graph.params, graph.param_types))


def _type_or_unknown(graph: Graph, vid: int) -> str:
    t = graph.types.get(vid)
    return str(t) if t is not None else "?"

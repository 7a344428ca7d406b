"""Parses the IR text of spmd.ir.printer back into a Graph equal to the one printed.

Value ids in the text are kept as they are (see printer); parsing reserves them, so
later fresh ids never collide with them. Malformed text raises IRParseError with line
and column.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from typing import Any

from spmd import dtypes
from spmd.errors import IRParseError
from spmd.ir import graph as graph_module
from spmd.ir.graph import Attrs, Graph, Op
from spmd.ir.printer import literal_to_array
from spmd.ir.types import TensorType

TOKEN_PATTERNS = [
    ("space", r"\s+|//[^\n]*"),
    ("type", r"tensor<[^>]*>"),
    ("dense", r"dense<[^:>]*:\s*tensor<[^>]*>>"),
    ("sharding", r"#sharding<[^>]*>"),
    ("opaque", r'#opaque<"(?:[^"\\]|\\.)*">'),
    ("set", r"#set\("),
    ("value", r"%\d+"),
    ("symbol", r'@(?:[A-Za-z_][\w.$-]*|"(?:[^"\\]|\\.)*")'),
    ("string", r'"(?:[^"\\]|\\.)*"'),
    ("number", r"-?(?:inf|nan|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)(?![\w.])"),
    ("ident", r"[A-Za-z_][\w.]*"),
    ("punct", r"->|[(){}\[\],=:?]"),
]
TOKEN_RE = re.compile("|".join(f"(?P<{name}>{pattern})" for name, pattern in TOKEN_PATTERNS))
KEYWORDS = {"none": None, "true": True, "false": False}


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    line: int
    column: int


def tokenize(text: str) -> list[Token]:
    """Split IR text into tokens; an unknown character is an IRParseError."""
    tokens: list[Token] = []
    position, line, line_start = 0, 1, 0
    while position < len(text):
        match = TOKEN_RE.match(text, position)
        if match is None:
            raise _error(
                text, line, position - line_start + 1, f"unexpected character {text[position]!r}"
            )
        kind = match.lastgroup or ""
        if kind != "space":
            tokens.append(Token(kind, match.group(), line, position - line_start + 1))
        newlines = match.group().count("\n")
        if newlines:
            line += newlines
            line_start = position + match.group().rindex("\n") + 1
        position = match.end()
    tokens.append(Token("end", "", line, position - line_start + 1))
    return tokens


def parse_graph(text: str) -> Graph:
    """The Graph of the one `func` in `text` (as print_graph writes it)."""
    return parse_function(text)[1]


def parse_function(text: str) -> tuple[str, Graph]:
    """(name, graph) of the one `func @name(...) { ... }` in `text`."""
    parser = Parser(text)
    name, graph = parser.function()
    parser.expect("end")
    _reserve_ids(parser.max_id)
    return name, graph


class Parser:
    """Recursive descent over the token list."""

    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.position = 0
        self.max_id = 0

    # -- token helpers ------------------------------------------------------------------------
    def peek(self, offset: int = 0) -> Token:
        return self.tokens[min(self.position + offset, len(self.tokens) - 1)]

    def next(self) -> Token:
        token = self.peek()
        self.position += 1
        return token

    def at(self, text: str) -> bool:
        token = self.peek()
        return token.text == text and token.kind in ("punct", "ident", "set")

    def accept(self, text: str) -> bool:
        if self.at(text):
            self.position += 1
            return True
        return False

    def expect(self, kind_or_text: str) -> Token:
        token = self.peek()
        if token.kind == kind_or_text or (token.text == kind_or_text and token.kind != "string"):
            return self.next()
        raise self.error(f"expected {kind_or_text!r}, got {token.text or 'end of text'!r}", token)

    def error(self, problem: str, token: Token | None = None) -> IRParseError:
        token = token or self.peek()
        return _error(self.text, token.line, token.column, problem)

    # -- grammar ------------------------------------------------------------------------------
    def function(self) -> tuple[str, Graph]:
        self.expect("func")
        name = self.expect("symbol").text[1:]
        name = json.loads(name) if name.startswith('"') else name
        params, types = self.params()
        self.expect("->")
        self.expect("(")
        while not self.accept(")"):
            self.parse_type(self.next())
            self.accept(",")
        return name, self.block(params, types)

    def params(self) -> tuple[tuple[int, ...], tuple[TensorType, ...]]:
        self.expect("(")
        ids: list[int] = []
        types: list[TensorType] = []
        while not self.accept(")"):
            if ids:
                self.expect(",")
            ids.append(self.value_id())
            self.expect(":")
            types.append(self.parse_type(self.expect("type")))
        return tuple(ids), tuple(types)

    def block(self, params: tuple[int, ...], types: tuple[TensorType, ...]) -> Graph:
        """`{ op* return %a, %b }` after a param list."""
        self.expect("{")
        ops: list[Op] = []
        while not self.at("return"):
            ops.append(self.op())
        self.expect("return")
        results: list[int] = []
        while self.peek().kind == "value":
            results.append(self.value_id())
            if not self.accept(","):
                break
        self.expect("}")
        return Graph(params, types, tuple(ops), tuple(results))

    def op(self) -> Op:
        outputs: list[int] = []
        while self.peek().kind == "value":
            outputs.append(self.value_id())
            if not self.accept(","):
                self.expect("=")
                break
        name_token = self.expect("ident")
        self.expect("(")
        inputs: list[int] = []
        while not self.accept(")"):
            if inputs:
                self.expect(",")
            inputs.append(self.value_id())
        attrs = self.attrs() if self.at("{") else Attrs()
        self.expect(":")
        types = self.op_types()
        if len(types) != len(outputs):
            raise self.error(
                f"op {name_token.text} defines {len(outputs)} values but lists {len(types)} types",
                name_token,
            )
        loc = ""
        if self.accept("loc"):
            self.expect("(")
            loc = json.loads(self.expect("string").text)
            self.expect(")")
        return Op(name_token.text, tuple(inputs), tuple(outputs), types, attrs, loc)

    def op_types(self) -> tuple[TensorType, ...]:
        if self.peek().kind == "type":
            return (self.parse_type(self.next()),)
        self.expect("(")
        types: list[TensorType] = []
        while not self.accept(")"):
            if types:
                self.expect(",")
            types.append(self.parse_type(self.expect("type")))
        return tuple(types)

    def attrs(self) -> Attrs:
        self.expect("{")
        attrs = Attrs()
        while not self.accept("}"):
            if attrs:
                self.expect(",")
            key = self.expect("ident")
            if key.text in attrs:
                raise self.error(f"attribute {key.text!r} given twice", key)
            self.expect("=")
            attrs[key.text] = self.attr_value()
        return attrs

    def attr_value(self) -> Any:
        token = self.next()
        if token.kind == "ident" and token.text in KEYWORDS:
            return KEYWORDS[token.text]
        if token.kind == "number":
            return parse_number(token.text)
        if token.kind == "string":
            return json.loads(token.text)
        if token.kind == "type":
            return self.parse_type(token)
        if token.kind == "dense":
            return self.dense(token)
        if token.kind == "sharding":
            return parse_sharding(token.text, lambda msg: self.error(msg, token))
        if token.kind == "set":
            return frozenset(self.sequence())
        if token.text == "(":
            return tuple(self.sequence())
        if token.text == "graph":
            params, types = self.params()
            return self.block(params, types)
        if token.kind == "opaque":
            raise self.error(f"cannot read back the opaque attribute {token.text}", token)
        raise self.error(f"expected an attribute value, got {token.text!r}", token)

    def sequence(self) -> list[Any]:
        """Values up to a closing ')', with an optional trailing comma."""
        items: list[Any] = []
        while not self.accept(")"):
            if items:
                self.expect(",")
                if self.accept(")"):
                    break
            items.append(self.attr_value())
        return items

    def value_id(self) -> int:
        vid = int(self.expect("value").text[1:])
        self.max_id = max(self.max_id, vid)
        return vid

    def parse_type(self, token: Token) -> TensorType:
        if token.kind != "type":
            raise self.error(f"expected a type like tensor<4x8xfloat32>, got {token.text!r}", token)
        *dims, dtype = token.text[len("tensor<") : -1].split("x")
        weak = dtype.startswith("~")
        dtype = dtype.lstrip("~")
        if dtype not in dtypes.ALL or not all(d.isdigit() for d in dims):
            raise self.error(f"malformed type {token.text!r}", token)
        return TensorType(tuple(int(d) for d in dims), dtype, weak)

    def dense(self, token: Token) -> Any:
        body, _, type_text = token.text[len("dense<") : -1].rpartition(":")
        t = self.parse_type(Token("type", type_text.strip(), token.line, token.column))
        body = body.strip()
        try:
            if body.startswith("0x"):
                import numpy as np

                raw = bytes.fromhex(body[2:])
                return np.frombuffer(raw, dtype=dtypes.to_numpy(t.dtype)).reshape(t.shape).copy()
            return literal_to_array(body, t)
        except ValueError as err:
            raise self.error(f"malformed constant {token.text[:60]!r}: {err}", token) from None


def parse_number(text: str) -> int | float:
    if any(c in text for c in ".eEin"):
        return float(text)
    return int(text)


def parse_sharding(text: str, error: Any) -> Any:
    """`#sharding<[data=2,model=4] [{data}, {}]>` to a ShardingAttr."""
    from spmd.named_sharding import ShardingAttr

    match = re.fullmatch(r"#sharding<\[([^\]]*)\]\s*\[([^\]]*)\]>", text)
    if match is None:
        raise error(f"malformed sharding {text!r}")
    names: list[str] = []
    sizes: list[int] = []
    for item in filter(None, match.group(1).split(",")):
        name, _, size = item.partition("=")
        if not size.strip().isdigit():
            raise error(f"malformed mesh axis {item!r} in {text!r}")
        names.append(name.strip())
        sizes.append(int(size))
    dims = tuple(
        tuple(a.strip() for a in d.split(",") if a.strip())
        for d in re.findall(r"\{([^}]*)\}", match.group(2))
    )
    return ShardingAttr(tuple(names), tuple(sizes), dims)


def _error(text: str, line: int, column: int, problem: str) -> IRParseError:
    lines = text.split("\n")
    source = lines[line - 1] if 0 < line <= len(lines) else ""
    caret = " " * (column - 1) + "^"
    err = IRParseError(
        f"line {line}, column {column}: {problem}\n    {source}\n    {caret}",
        f"<ir>:{line}:{column}",
        "IR text must look like print_graph's output",
    )
    err.line = line  # type: ignore[attr-defined]
    err.column = column  # type: ignore[attr-defined]
    return err


def _reserve_ids(max_id: int) -> None:
    """Make fresh_id() return ids above every id just parsed."""
    current = graph_module.fresh_id()
    if current <= max_id:
        graph_module._ids = itertools.count(max_id + 1)

"""The registry entry of an op: everything true of it on every device, in one place.

`infer` works on types only, `reference` on numpy arrays (the oracle, never calls spmd),
`vjp` is written with spmd.lax so it is traced like user code, and `factors` gives the
op's sharding rule as an einsum-like factor signature.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from spmd.ir.types import TensorType

Dims = tuple[str | None, ...]  # one factor name per dim; None: the dim maps to no factor


@dataclass(frozen=True)
class Factors:
    """Sharding rule: which factor each operand and result dim is.

    A factor in `reduce` is summed (or maxed...) away: if it is sharded, the result is
    partial over those mesh axes. A factor in `blocked` must not be sharded: the
    partitioner gathers it first. Elementwise ops map each factor to itself.
    """

    operands: tuple[Dims, ...]
    results: tuple[Dims, ...]
    reduce: frozenset[str] = frozenset()
    reduce_kind: str = "sum"
    blocked: frozenset[str] = frozenset()

    @staticmethod
    def parse(signature: str, reduce: str = "", blocked: str = "", kind: str = "sum") -> Factors:
        """Factors.parse("bmk,bkn->bmn", reduce="k"); '_' marks a dim with no factor."""
        lhs, rhs = signature.split("->")

        def dims(s: str) -> Dims:
            return tuple(None if c == "_" else c for c in s)

        return Factors(tuple(dims(s) for s in lhs.split(",")) if lhs else (),
                       tuple(dims(s) for s in rhs.split(",")),
                       frozenset(reduce), kind, frozenset(blocked))

    def __str__(self) -> str:
        def fmt(d: Dims) -> str:
            return "".join(c or "_" for c in d)

        text = ",".join(map(fmt, self.operands)) + "->" + ",".join(map(fmt, self.results))
        if self.reduce:
            text += f" reduce[{self.reduce_kind}]=" + "".join(sorted(self.reduce))
        if self.blocked:
            text += " blocked=" + "".join(sorted(self.blocked))
        return text


class _NonDiff:
    def __repr__(self) -> str:
        return "NONDIFF"


NONDIFF: Any = _NonDiff()  # marks an op without a derivative (grad through it is an error)
ZERO_GRAD: Any = "zero_grad"  # marks an op whose derivative is zero (comparisons, iota, ...)


@dataclass(frozen=True)
class OpDef:
    """One op's registry entry."""

    name: str
    infer: Callable[..., TensorType | tuple[TensorType, ...]]
    reference: Callable[..., Any]
    vjp: Any  # callable(ct, *primals, out=..., **attrs) | NONDIFF | ZERO_GRAD
    factors: Callable[..., Factors | None]  # (*in_types, **attrs) -> Factors; None: see partition
    partition: Callable[..., Any] | None = None  # hand-written rule where factors cannot say it
    multi_output: bool = False
    # How a partial (pending-sum) operand passes through: "all" = linear in all operands
    # jointly (add, neg, transpose); "each" = linear in each one with the others fixed (mul, dot).
    linear: str = "none"
    # How it runs on operands with a leading batch dim of size n (device batching):
    # batch(n, batched, **attrs) -> the batched op's attrs (batched[i]: operand i has that
    # dim), or None where it cannot (spmd/ops/batching.py; elementwise ops need none).
    batch: Callable[..., dict[str, Any] | None] | None = None
    doc: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

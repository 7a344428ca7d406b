"""Shared helpers of the ops holding sub-graphs (scan, cond, while_loop): checks, factor names."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from spmd import dtypes
from spmd import primitives as prim
from spmd.errors import ShapeError
from spmd.interpreter import evaluate
from spmd.ir.graph import Graph
from spmd.ir.types import TensorType
from spmd.ops.common import LETTERS


def evaluate_graph(graph: Graph, args: Sequence[np.ndarray]) -> list[np.ndarray]:
    return evaluate(graph, args)


def same_type(a: TensorType, b: TensorType) -> bool:
    """Equal shape and dtype (the weak bit may differ)."""
    return a.shape == b.shape and a.dtype == b.dtype


def check_params(name: str, graph: Graph, types: Sequence[TensorType]) -> None:
    if len(graph.params) != len(types):
        raise ShapeError(f"{name} sub-graph takes {len(graph.params)} values, got {len(types)}")
    for i, (want, got) in enumerate(zip(graph.param_types, types)):
        if not same_type(want, got):
            raise ShapeError(f"{name} operand {i} has type {got}, its sub-graph expects {want}")


def factor_names() -> Iterator[str]:
    """Factor names: a..Z, then a1..Z1, and so on."""
    for round_ in itertools.count():
        for c in LETTERS:
            yield c if round_ == 0 else f"{c}{round_}"


def fresh_dims(names: Iterator[str], t: TensorType) -> tuple[str, ...]:
    return tuple(next(names) for _ in t.shape)


def is_diff(t: TensorType) -> bool:
    return dtypes.is_differentiable(t.dtype)


def ct_or_zeros(ct: Any, t: TensorType) -> Any:
    """A cotangent, or zeros of type t for a None (zero) cotangent."""
    return prim.full(t.shape, 0, t.dtype) if ct is None else ct

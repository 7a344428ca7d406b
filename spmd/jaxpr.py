"""Inspecting traced programs as JAX users do: make_jaxpr and jit(f).trace(...).

The "jaxpr" here is spmd's IR graph (printed as its IR text); `.eqns` are its ops.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from spmd.ir.graph import Graph
from spmd.tree import tree_unflatten


class ClosedJaxpr:
    """A traced program: `str()` prints it, `.eqns` lists its ops, avals give its types."""

    def __init__(self, graph: Graph, name: str = "main"):
        self.graph = graph
        self.name = name

    @property
    def jaxpr(self) -> ClosedJaxpr:
        return self

    @property
    def eqns(self) -> list[Any]:
        return list(self.graph.ops)

    @property
    def in_avals(self) -> list[Any]:
        return list(self.graph.param_types)

    @property
    def out_avals(self) -> list[Any]:
        return list(self.graph.result_types)

    def pretty_print(self) -> str:
        from spmd.ir.printer import print_graph

        return print_graph(self.graph, name=self.name)

    def __str__(self) -> str:
        return self.pretty_print()

    def __repr__(self) -> str:
        return self.pretty_print()


class Traced:
    """What jit(f).trace(*args) returns: the program before optimization and partitioning."""

    def __init__(self, jitted: Any, graph: Graph, out_tree: Any, args: tuple, kwargs: dict):
        self.jitted = jitted
        self.graph = graph
        self.out_tree = out_tree
        self.args = args
        self.kwargs = kwargs

    @property
    def jaxpr(self) -> ClosedJaxpr:
        return ClosedJaxpr(self.graph, self.jitted.__name__)

    @property
    def fun_name(self) -> str:
        return self.jitted.__name__

    @property
    def out_info(self) -> Any:
        from spmd.api import ShapeDtypeStruct

        outs = [ShapeDtypeStruct(t.shape, t.dtype, None, t.weak) for t in self.graph.result_types]
        return tree_unflatten(self.out_tree, outs)

    def lower(self) -> Any:
        return self.jitted.lower(*self.args, **self.kwargs)


def make_jaxpr(
    fun: Callable[..., Any], static_argnums: Any = (), return_shape: bool = False
) -> Callable[..., Any]:
    """JAX's make_jaxpr: make_jaxpr(f)(*args) traces f for args and returns its program.

    >>> import spmd, spmd.numpy as snp
    >>> print(spmd.make_jaxpr(lambda x: snp.sin(x) * 2)(1.0))  # doctest: +ELLIPSIS
    func...sin...
    """
    from spmd.api import JitFunction
    from spmd.validate import check_callable

    check_callable("make_jaxpr", fun)
    jitted = JitFunction(fun, static_argnums=static_argnums)

    @functools.wraps(fun)
    def run(*args: Any, **kwargs: Any) -> Any:
        traced = jitted.trace(*args, **kwargs)
        return (traced.jaxpr, traced.out_info) if return_shape else traced.jaxpr

    return run

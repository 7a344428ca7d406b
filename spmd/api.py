"""spmd.jit: trace once per signature, optimize, compile (spmd.executables), run.

The cache key is the pytree structure, each leaf's shape/dtype/weak type/sharding, and
the static arguments; a cached call never retraces (see `trace_count`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optree

import spmd.numpy  # noqa: F401  (installs Array's and Tracer's operators: spmd/array_methods.py)
from spmd import config, dtypes
from spmd.array import Array
from spmd.autodiff import _as_traced
from spmd.errors import ShapeError, ShardingError
from spmd.executables import compile_graph
from spmd.ir.graph import Graph
from spmd.ir.printer import print_graph
from spmd.ir.types import TensorType
from spmd.mesh import current_mesh
from spmd.named_sharding import NamedSharding, PartitionSpec, Sharding
from spmd.passes import optimize
from spmd.shape_dtype import ShapeDtypeStruct
from spmd.tracing import (
    Trace,
    Tracer,
    current_trace,
    describe_loc,
    trace_counter,
    trace_scope,
    type_of,
)
from spmd.tree import tree_flatten, tree_unflatten
from spmd.validate import check_argnums, check_argnums_in_call, check_callable


def _leaf_type(x: Any) -> TensorType:
    if isinstance(x, ShapeDtypeStruct):
        return x.aval
    return type_of(x)


def _leaf_sharding(x: Any) -> Any:
    if isinstance(x, ShapeDtypeStruct):
        return x.sharding
    if isinstance(x, Array) and x.committed:
        return x.sharding
    return None


class Lowered:
    """A traced, optimized global program: `.as_text()` prints it, `.compile()` builds it."""

    def __init__(
        self,
        jitted: JitFunction,
        graph: Graph,
        out_tree: Any,
        in_shardings: tuple[Any, ...],
        donate: tuple[bool, ...],
    ):
        self.jitted = jitted
        self.graph = graph
        self.out_tree = out_tree
        self.in_shardings = in_shardings
        self.donate = donate

    def as_text(self) -> str:
        return print_graph(self.graph, name=self.jitted.__name__)

    def compile(self) -> Compiled:
        out_shardings = self.jitted.out_shardings_for(self.graph)
        executable = compile_graph(self.graph, self.in_shardings, out_shardings, self.donate)
        return Compiled(self, executable)


class Compiled:
    """A compiled program: call it with the same kinds of arguments it was lowered for."""

    def __init__(self, lowered: Lowered, executable: Any):
        self.lowered = lowered
        self.executable = executable

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        leaves = self.lowered.jitted.dynamic_leaves(args, kwargs)
        return self.call_flat(leaves)

    def call_flat(self, leaves: Sequence[Any]) -> Any:
        outs = self.executable(list(leaves))
        types = self.lowered.graph.result_types
        outs = [
            o if isinstance(o, (Array, ShapeDtypeStruct)) else Array(o, weak=t.weak)
            for o, t in zip(outs, types)
        ]
        for leaf, donated in zip(leaves, self.lowered.donate):
            if donated and isinstance(leaf, Array):
                leaf.delete()
        return tree_unflatten(self.lowered.out_tree, outs)

    def as_text(self) -> str:
        if hasattr(self.executable, "as_text"):
            return self.executable.as_text()
        return self.lowered.as_text()

    def collectives(self) -> list[Any]:
        return list(getattr(self.executable, "collectives", list)())

    def memory_per_device(self) -> int:
        return self.executable.memory_per_device()

    def simulate(self, **options: Any) -> Any:
        if any(self.lowered.donate):  # donated buffers are reused, as XLA does
            options.setdefault("donate", self.lowered.donate)
        return self.executable.simulate(**options)


class JitFunction:
    """The object `spmd.jit(f)` returns."""

    def __init__(
        self,
        fun: Callable[..., Any],
        *,
        static_argnums: Any = (),
        static_argnames: Any = (),
        donate_argnums: Any = (),
        in_shardings: Any = None,
        out_shardings: Any = None,
    ):
        check_callable("jit", fun)
        functools.update_wrapper(self, fun)
        self.fun = fun
        self.static_argnums = check_argnums("static_argnums", static_argnums, fun)
        self.static_argnames = _as_tuple(static_argnames)
        self.donate_argnums = check_argnums("donate_argnums", donate_argnums, fun)
        self.in_shardings = in_shardings
        self.out_shardings = out_shardings
        self.trace_count = 0
        self._cache: dict[Any, Compiled] = {}
        try:
            self._signature: inspect.Signature | None = inspect.signature(fun)
        except (TypeError, ValueError):
            self._signature = None

    # -- argument handling ------------------------------------------------------------------
    def _split(self, args: tuple, kwargs: dict) -> tuple[tuple, dict, tuple]:
        check_argnums_in_call(self.static_argnums, len(args), "static_argnums")
        nums = {i % len(args) if args else i for i in self.static_argnums}
        dyn_args = tuple(a for i, a in enumerate(args) if i not in nums)
        static = tuple((i, _hashable(a)) for i, a in enumerate(args) if i in nums)
        dyn_kwargs = {k: v for k, v in kwargs.items() if k not in self.static_argnames}
        static += tuple(
            sorted((k, _hashable(v)) for k, v in kwargs.items() if k in self.static_argnames)
        )
        return dyn_args, dyn_kwargs, static

    def dynamic_leaves(self, args: tuple, kwargs: dict) -> list[Any]:
        dyn_args, dyn_kwargs, _ = self._split(args, kwargs)
        leaves, _ = tree_flatten((dyn_args, dyn_kwargs))
        return leaves

    def _donated_leaves(self, args: tuple, kwargs: dict) -> tuple[bool, ...]:
        flags: list[bool] = []
        nums = {i % len(args) if args else i for i in self.static_argnums}
        for i, a in enumerate(args):
            if i in nums:
                continue
            n = len(tree_flatten(a)[0])
            flags += [i in self.donate_argnums] * n
        flags += [False] * len(tree_flatten(self._split(args, kwargs)[1])[0])
        return tuple(flags)

    # -- tracing ----------------------------------------------------------------------------
    def _trace(self, args: tuple, kwargs: dict) -> tuple[Graph, Any]:
        dyn_args, dyn_kwargs, _ = self._split(args, kwargs)
        leaves, treedef = tree_flatten((dyn_args, dyn_kwargs))
        nums = {i % len(args) if args else i for i in self.static_argnums}
        trace = Trace()
        params = [trace.new_param(_leaf_type(x)) for x in leaves]
        # typeof(x).sharding inside the function reads the inputs' shardings from here
        shardings = self._in_shardings_for(leaves, args, kwargs)
        trace.param_shardings = {p.id: s for p, s in zip(params, shardings) if s is not None}
        d_args, d_kwargs = tree_unflatten(treedef, params)
        it = iter(d_args)
        full_args = [args[i] if i in nums else next(it) for i in range(len(args))]
        full_kwargs = dict(kwargs)
        full_kwargs.update(d_kwargs)
        self.trace_count += 1
        trace_counter["count"] += 1
        with trace_scope(trace):
            out = self.fun(*full_args, **full_kwargs)
            out_leaves, out_tree = tree_flatten(out)
            out_leaves = [_as_traced(trace, x) for x in out_leaves]
        return trace.to_graph(out_leaves), out_tree

    def trace(self, *args: Any, **kwargs: Any) -> Any:
        """JAX's jit(f).trace(*args): the traced program (`.jaxpr`, `.out_info`, `.lower()`)."""
        from spmd.jaxpr import Traced

        graph, out_tree = self._trace(args, kwargs)
        return Traced(self, graph, out_tree, args, kwargs)

    def lower(self, *args: Any, **kwargs: Any) -> Lowered:
        """Trace for these (possibly abstract) arguments and optimize the global program."""
        config.check_environment()
        from spmd.autoshard import AUTO, lower_auto

        if self.in_shardings is AUTO:  # issue 20: the plan chooses every layout
            return lower_auto(self, args, kwargs)
        graph, out_tree = self._trace(args, kwargs)
        graph = optimize(graph)
        leaves = self.dynamic_leaves(args, kwargs)
        in_shardings = self._in_shardings_for(leaves, args, kwargs)
        return Lowered(self, graph, out_tree, in_shardings, self._donated_leaves(args, kwargs))

    def _in_shardings_for(self, leaves: list[Any], args: tuple, kwargs: dict) -> tuple[Any, ...]:
        """One sharding (or None) per leaf: jit's in_shardings (JAX's form: one sharding for
        every argument, or one entry per positional argument, each a sharding, None or a
        pytree of them matching the argument), else the committed inputs' own."""
        found = [_leaf_sharding(x) for x in leaves]
        if self.in_shardings is None:
            return tuple(found)
        dyn_args, _, _ = self._split(args, kwargs)
        given = self.in_shardings
        if not isinstance(given, (tuple, list)) or isinstance(given, PartitionSpec):
            given = (given,) * len(dyn_args)
        if len(given) != len(dyn_args):
            raise ShardingError(
                f"in_shardings has {len(given)} entries but the function takes "
                f"{len(dyn_args)} positional arguments",
                hint="give one entry per positional argument, or one sharding",
            )
        per_leaf: list[Any] = []
        for arg, spec in zip(dyn_args, given):
            n = len(tree_flatten(arg)[0])
            if spec is None or isinstance(spec, (Sharding, PartitionSpec)):
                per_leaf += [_as_sharding(spec)] * n
                continue
            flat = optree.tree_leaves(spec, none_is_leaf=True, namespace="spmd")
            if len(flat) != n:
                raise ShardingError(
                    f"in_shardings entry {spec!r} has {len(flat)} shardings for "
                    f"an argument with {n} arrays"
                )
            per_leaf += [_as_sharding(s) for s in flat]
        per_leaf += [None] * (len(leaves) - len(per_leaf))  # keyword arguments
        return tuple(p if p is not None else f for p, f in zip(per_leaf, found))

    def out_shardings_for(self, graph: Graph) -> tuple[Any, ...]:
        n = len(graph.results)
        if self.out_shardings is None:
            return (None,) * n
        flat = [self.out_shardings]
        if isinstance(self.out_shardings, (list, dict)) or (
            isinstance(self.out_shardings, tuple)
            and not isinstance(self.out_shardings, PartitionSpec)
        ):
            flat = optree.tree_leaves(self.out_shardings, none_is_leaf=True, namespace="spmd")
        flat = [_as_sharding(s) for s in flat]
        if len(flat) == 1:
            return tuple(flat) * n
        if len(flat) != n:
            raise ShapeError(
                f"out_shardings has {len(flat)} entries but the function returns {n} arrays",
                describe_loc(),
            )
        return tuple(flat)

    # -- calling ----------------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if current_trace() is not None:
            return self.fun(*args, **kwargs)  # nested jit: inline into the enclosing trace
        dyn_args, dyn_kwargs, static = self._split(args, kwargs)
        leaves, structure = tree_flatten((dyn_args, dyn_kwargs))
        if any(isinstance(x, Tracer) for x in leaves):
            return self.fun(*args, **kwargs)
        key = (
            structure,
            tuple((_leaf_type(x), _leaf_sharding(x)) for x in leaves),
            static,
            dtypes.X64["enabled"],
        )  # as JAX: a trace made with x64 on is not reused off
        compiled = self._cache.get(key)
        if compiled is None:
            compiled = self.lower(*args, **kwargs).compile()
            self._cache[key] = compiled
        return compiled.call_flat(leaves)

    def clear_cache(self) -> None:
        self._cache.clear()


def _as_sharding(s: Any) -> Any:
    """A bare P(...) means the mesh of the enclosing `with mesh:` block (JAX's habit)."""
    if not isinstance(s, PartitionSpec):
        if s is not None and not isinstance(s, Sharding):
            raise ShardingError(
                f"expected a Sharding, a PartitionSpec or None, got {s!r}",
                hint="use NamedSharding(mesh, P(...))",
            )
        return s
    mesh = current_mesh()
    if mesh is None:
        raise ShardingError(
            f"a bare {s!r} needs a mesh",
            hint="use NamedSharding(mesh, spec) or call inside `with mesh:`",
        )
    return NamedSharding(mesh, s)


def _as_tuple(x: Any) -> tuple:
    if x is None:
        return ()
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _hashable(x: Any) -> Any:
    try:
        hash(x)
        return x
    except TypeError:
        if isinstance(x, np.ndarray):
            return ("ndarray", x.shape, x.dtype.str, x.tobytes())
        raise ShapeError(
            f"static argument {x!r} is not hashable",
            describe_loc(),
            "pass a tuple instead of a list, or make the argument dynamic",
        ) from None


def jit(
    fun: Callable[..., Any] | None = None,
    *,
    static_argnums: Any = (),
    static_argnames: Any = (),
    donate_argnums: Any = (),
    in_shardings: Any = None,
    out_shardings: Any = None,
) -> Any:
    """Compile `fun` for the mesh its inputs live on; usable as @jit or @jit(...)."""
    if fun is None:
        return functools.partial(
            jit,
            static_argnums=static_argnums,
            static_argnames=static_argnames,
            donate_argnums=donate_argnums,
            in_shardings=in_shardings,
            out_shardings=out_shardings,
        )
    return JitFunction(
        fun,
        static_argnums=static_argnums,
        static_argnames=static_argnames,
        donate_argnums=donate_argnums,
        in_shardings=in_shardings,
        out_shardings=out_shardings,
    )

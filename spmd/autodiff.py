"""Reverse-mode autodiff as a graph transformation: vjp, grad, value_and_grad, jvp.

`vjp` traces the function to a graph, replays it in the caller's context (a trace or
eager), and runs each op's registry VJP rule backwards. Rules are written with
spmd.lax, so the backward pass is traced (or run) like user code. This engine binds its own
few ops (zeros, sums, casts) and imports the registry alone (spmd/ir/opdef.py), so the
rules of the ops holding sub-graphs (scan, cond, remat) import it. `jvp` transposes
the (linear) VJP once more, so no separate forward-mode rules are needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from spmd import dtypes
from spmd.array import Array
from spmd.errors import DTypeError, InternalError, NonDifferentiableError, ShapeError
from spmd.ir.graph import Graph, Op
from spmd.ir.opdef import NONDIFF, REGISTRY, ZERO_GRAD
from spmd.ir.types import TensorType
from spmd.tracing import (
    Trace,
    Tracer,
    bind,
    concrete_value,
    current_trace,
    describe_loc,
    loc_scope,
    trace_scope,
    type_of,
)
from spmd.tree import tree_flatten, tree_map, tree_unflatten


def trace_to_graph(
    fun: Callable[..., Any],
    leaves: Sequence[Any],
    treedef: Any,
) -> tuple[Graph, Any, list[Any]]:
    """Trace fun(*unflatten(leaves)) in a child trace; returns (graph, out_treedef, captured).

    The graph's params are the leaves, then values captured from enclosing traces.
    """
    trace = Trace(parent=current_trace())
    params = [trace.new_param(type_of(x)) for x in leaves]
    with trace_scope(trace):
        out = fun(*tree_unflatten(treedef, params))
        out_leaves, out_tree = tree_flatten(out)
        out_leaves = [as_result(trace, x) for x in out_leaves]
    return trace.to_graph(out_leaves), out_tree, trace.captured_values()


def trace_flat(
    fun: Callable[..., Sequence[Any]],
    in_types: Sequence[TensorType],
) -> tuple[Graph, list[Any]]:
    """Trace fun(*params) (a flat list of results) in a child trace: (graph, captured).

    The graph's params are one per type in `in_types`, then the captured outer values.
    """
    trace = Trace(parent=current_trace())
    params = [trace.new_param(t) for t in in_types]
    with trace_scope(trace):
        outs = [as_result(trace, x) for x in fun(*params)]
    return trace.to_graph(outs), trace.captured_values()


def as_result(trace: Trace, x: Any) -> Tracer:
    """x as a value of `trace`: an outer tracer is captured (so gradients still reach it)."""
    if isinstance(x, Tracer) and x.trace is not trace:
        return Tracer(trace, trace.capture(x), x.type)
    return _as_traced(trace, x)


def vjp_graph(graph: Graph, wrt_mask: Sequence[bool]) -> Graph:
    """The VJP of `graph` as a graph.

    Params: graph's params, then one cotangent per differentiable result. Results: the
    cotangents of the params where wrt_mask is true (zeros where none reaches them).
    """
    n = len(graph.params)
    diff = [dtypes.is_differentiable(t.dtype) for t in graph.result_types]

    def run(*args: Any) -> list[Any]:
        env = replay(graph, args[:n])
        cts = iter(args[n:])
        param_cts = backward(graph, env, [next(cts) if d else None for d in diff])
        return [ct for ct, wanted in zip(param_cts, wrt_mask) if wanted]

    ct_types = [t for t, d in zip(graph.result_types, diff) if d]
    out, captured = trace_flat(run, list(graph.param_types) + ct_types)
    if captured:
        raise InternalError("the VJP of a sub-graph captured outer values")
    return out


def _as_traced(trace: Trace, x: Any) -> Tracer:
    if isinstance(x, Tracer) and x.trace is trace:
        return x
    return bind("stop_gradient", x) if isinstance(x, Tracer) else _constant_in(trace, x)


def _constant_in(trace: Trace, x: Any) -> Tracer:
    t = type_of(x)
    return bind("constant", value=np.asarray(x, dtype=dtypes.to_numpy(t.dtype)), weak=t.weak)


def _full(t: TensorType, fill: float) -> Any:
    """fill in every element of type t (lax.full, bound here: this engine is below spmd.lax)."""
    value = bind("constant", value=np.asarray(fill, dtype=dtypes.to_numpy(t.dtype)), weak=False)
    if not t.shape:
        return value
    return bind("broadcast_in_dim", value, shape=t.shape, broadcast_dimensions=())


def replay(graph: Graph, args: Sequence[Any]) -> dict[Any, Any]:
    """Run graph's ops with `bind` in the current context; returns value id -> value
    (and ("residuals", id) -> what an op with a residual_vjp saved for its backward)."""
    env: dict[Any, Any] = {
        v: _as_value(x, t) for v, x, t in zip(graph.params, args, graph.param_types)
    }
    for op in graph.ops:
        with loc_scope(op.loc):
            ins = [env[v] for v in op.inputs]
            residual_vjp = REGISTRY[op.name].residual_vjp
            if residual_vjp is not None:  # the forward that also returns its residuals
                outs, env[("residuals", op.outputs[0])] = residual_vjp[0](op, ins)
            else:
                outs = bind(op.name, *ins, **op.attrs)
        outs = outs if REGISTRY[op.name].multi_output else (outs,)
        env.update(zip(op.outputs, outs))
    return env


def _as_value(x: Any, t: TensorType) -> Any:
    """A Tracer or Array for x (VJP rules read `.type` off their primals)."""
    if isinstance(x, (Tracer, Array)):
        return x
    value = concrete_value(x, t)
    if current_trace() is None:
        return Array(value, weak=t.weak)
    return bind("constant", value=value, weak=t.weak)


def backward(graph: Graph, env: dict[int, Any], result_cts: Sequence[Any]) -> list[Any]:
    """Cotangents of graph.params given cotangents of graph.results (None means zero)."""
    cts: dict[int, Any] = {}
    for vid, ct in zip(graph.results, result_cts):
        if ct is not None:
            ct = _as_value(ct, graph.types[vid])
        _accumulate(cts, vid, ct, graph)
    for op in reversed(graph.ops):
        out_cts = [cts.pop(v, None) for v in op.outputs]
        if all(ct is None for ct in out_cts):
            continue
        with loc_scope(op.loc):
            in_cts = _op_vjp(op, out_cts, env)
        for vid, ct in zip(op.inputs, in_cts):
            _accumulate(cts, vid, ct, graph)
    out = []
    for vid, t in zip(graph.params, graph.param_types):
        ct = cts.get(vid)
        out.append(ct if ct is not None else _full(t, 0))
    return out


def _accumulate(cts: dict[int, Any], vid: int, ct: Any, graph: Graph) -> None:
    if ct is None or not dtypes.is_differentiable(graph.types[vid].dtype):
        return
    t = graph.types[vid]
    if type_of(ct).dtype != t.dtype:
        ct = bind("convert_element_type", ct, new_dtype=t.dtype, weak=False)
    cts[vid] = ct if vid not in cts else bind("add", cts[vid], ct)


def _op_vjp(op: Op, out_cts: list[Any], env: dict[int, Any]) -> Sequence[Any]:
    opdef = REGISTRY[op.name]
    if opdef.vjp is ZERO_GRAD:
        return [None] * len(op.inputs)
    if opdef.vjp is NONDIFF:
        if not any(
            dtypes.is_differentiable(op.types[i].dtype) and ct is not None
            for i, ct in enumerate(out_cts)
        ):
            return [None] * len(op.inputs)
        raise NonDifferentiableError(
            f"cannot differentiate through {op.name!r}",
            op.loc or describe_loc(),
            "wrap its input in spmd.lax.stop_gradient, or move it out of the differentiated "
            "function",
        )
    primals = [env[v] for v in op.inputs]
    if opdef.residual_vjp is not None:
        replay_op, backward_op = opdef.residual_vjp
        residuals = env.get(("residuals", op.outputs[0]))
        if residuals is None:
            residuals = replay_op(op, primals)[1]
        return backward_op(op, out_cts, primals, residuals)
    outs = [env[v] for v in op.outputs]
    if opdef.multi_output:
        result = opdef.vjp(tuple(out_cts), *primals, out=tuple(outs), **op.attrs)
    else:
        result = opdef.vjp(out_cts[0], *primals, out=outs[0], **op.attrs)
    if not isinstance(result, (tuple, list)):
        result = (result,)
    return result


# Set by spmd.shard_map while it traces a body: (primal leaves, their cotangents) -> the
# cotangents to return (JAX's rule: a value the same on every device gets a summed ct).
cotangent_hook: Callable[[Sequence[Any], list[Any]], list[Any]] | None = None


def vjp(fun: Callable[..., Any], *primals: Any, has_aux: bool = False) -> tuple[Any, ...]:
    """(out, vjp_fn) or (out, vjp_fn, aux): vjp_fn(ct) gives one cotangent per primal."""
    leaves, treedef = tree_flatten(primals)
    wrapped = (lambda *a: fun(*a)[0]) if has_aux else fun
    aux_box: list[Any] = []
    if has_aux:

        def wrapped(*a: Any) -> Any:
            pair = fun(*a)
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ShapeError(
                    f"has_aux=True needs the function to return (output, aux), "
                    f"got {type(pair).__name__}",
                    describe_loc(),
                    "return a pair, or drop has_aux=True",
                )
            out, aux = pair
            aux_box.append(aux)
            return out

    graph, out_tree, captured = trace_to_graph(wrapped, leaves, treedef)
    env = replay(graph, list(leaves) + captured)
    out = tree_unflatten(out_tree, [env[v] for v in graph.results])
    n = len(leaves)

    def vjp_fn(ct: Any) -> tuple[Any, ...]:
        ct_leaves, ct_tree = tree_flatten(ct)
        if ct_tree != out_tree:
            raise ShapeError(
                f"vjp_fn got a cotangent with structure {ct_tree}, the function's "
                f"output has {out_tree}",
                describe_loc(),
            )
        param_cts = backward(graph, env, ct_leaves)
        if cotangent_hook is not None:  # shard_map: an invariant primal's ct is psum'd
            param_cts = cotangent_hook(leaves, param_cts)
        return tree_unflatten(treedef, param_cts[:n])

    if has_aux:
        aux = _replay_aux(aux_box[0], graph, env) if aux_box else None
        return out, vjp_fn, aux
    return out, vjp_fn


def _replay_aux(aux: Any, graph: Graph, env: dict[int, Any]) -> Any:
    """aux was traced in the child trace; map its tracers to the replayed values."""

    def convert(x: Any) -> Any:
        if isinstance(x, Tracer) and x.id in env:
            return env[x.id]
        if isinstance(x, Tracer):
            sub = Graph(graph.params, graph.param_types, graph.ops, (x.id,))
            return replay(sub, [env[p] for p in graph.params])[x.id]
        return x

    return tree_map(convert, aux)


def value_and_grad(
    fun: Callable[..., Any], argnums: int | Sequence[int] = 0, has_aux: bool = False
) -> Callable[..., Any]:
    """Like jax.value_and_grad: f must return a float scalar (or (scalar, aux))."""
    from spmd.validate import check_argnums, check_callable  # the API's argument checks

    check_callable("grad", fun)
    many = isinstance(argnums, (tuple, list))
    nums = check_argnums("argnums", argnums, fun, required=True)

    def run(*args: Any, **kwargs: Any) -> Any:
        for i in nums:
            if not -len(args) <= i < len(args):
                raise ShapeError(
                    f"argnums={argnums!r} but the function got {len(args)} positional args",
                    describe_loc(),
                )
        chosen = tuple(args[i] for i in nums)

        def partial(*picked: Any) -> Any:
            full = list(args)
            for i, v in zip(nums, picked):
                full[i] = v
            return fun(*full, **kwargs)

        _check_differentiable(chosen)
        result = vjp(partial, *chosen, has_aux=has_aux)
        out, vjp_fn = result[0], result[1]
        t = type_of(out) if not isinstance(out, (tuple, list, dict)) else None
        if t is None or t.shape != () or not dtypes.is_float(t.dtype):
            raise ShapeError(
                f"grad needs a function returning a float scalar, got "
                f"{t if t is not None else type(out).__name__}",
                describe_loc(),
                "reduce the output first (e.g. .sum() or .mean()), or use vjp",
            )
        grads = vjp_fn(_full(TensorType((), t.dtype), 1.0))
        grads = grads if many else grads[0]
        value = (out, result[2]) if has_aux else out
        return value, grads

    return run


def grad(
    fun: Callable[..., Any], argnums: int | Sequence[int] = 0, has_aux: bool = False
) -> Callable[..., Any]:
    """The gradient of a scalar function, as jax.grad."""
    vg = value_and_grad(fun, argnums, has_aux)

    def run(*args: Any, **kwargs: Any) -> Any:
        value, grads = vg(*args, **kwargs)
        return (grads, value[1]) if has_aux else grads

    return run


def _check_differentiable(args: Sequence[Any]) -> None:
    leaves, _ = tree_flatten(args)
    for leaf in leaves:
        t = type_of(leaf)
        if not dtypes.is_float(t.dtype):
            raise DTypeError(
                f"grad needs float inputs, got {t.dtype}",
                describe_loc(),
                "differentiate only float arguments (argnums=...), or cast with .astype('float32')",
            )


def jvp(
    fun: Callable[..., Any],
    primals: Sequence[Any],
    tangents: Sequence[Any],
) -> tuple[Any, Any]:
    """(f(primals), J @ tangents), by transposing the linear VJP map."""
    out, vjp_fn = vjp(fun, *primals)
    ct_zero = tree_map(lambda o: _full(type_of(o), 0), out)
    _, vjp_of_vjp = vjp(vjp_fn, ct_zero)
    (tangent_out,) = vjp_of_vjp(tuple(tangents))
    return out, tangent_out

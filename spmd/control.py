"""User-facing control flow, as in jax.lax: cond, switch, scan, fori_loop, while_loop.

Each traces its Python callables into sub-graphs of one control-flow op (spmd.ops.control);
values the callables close over become extra operands. Imports only the compiler core.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optree

from spmd import dtypes
from spmd.autodiff import trace_flat
from spmd.errors import DTypeError, ShapeError
from spmd.ir.graph import Graph, fresh_id
from spmd.ir.types import TensorType
from spmd.ops.control import hoist_captures
from spmd.tracing import Tracer, bind, describe_loc, type_of
from spmd.tree import NAMESPACE, tree_flatten, tree_unflatten

__all__ = ["cond", "fori_loop", "scan", "switch", "while_loop"]


def _keys(tree: Any) -> list[str]:
    """Readable paths of a pytree's leaves, e.g. "['h']" or "[0]"."""
    paths = optree.tree_paths(tree, namespace=NAMESPACE)
    return ["".join(f"[{key!r}]" for key in path) for path in paths]


def _convert(x: Any, t: TensorType) -> Any:
    from spmd import lax

    return lax.convert_element_type(x, t.dtype, t.weak)


def _settle_types(
    what: str,
    in_tree: Any,
    in_types: list[TensorType],
    out_tree: Any,
    out_types: Sequence[TensorType],
    names: list[str],
) -> list[TensorType] | None:
    """Check a loop carry keeps its structure and types; weak inputs that come out strong
    are promoted (returns the new input types), like JAX. None: nothing to change."""
    if out_tree != in_tree:
        raise ShapeError(
            f"{what} must return a carry with the structure of its input: it went "
            f"in as {in_tree} and came out as {out_tree}",
            describe_loc(),
            "return the carry with the same containers and number of leaves",
        )
    promoted = list(in_types)
    for i, (t_in, t_out) in enumerate(zip(in_types, out_types)):
        if t_in.shape == t_out.shape and t_in.dtype == t_out.dtype:
            if t_in.weak and not t_out.weak:
                promoted[i] = t_out
            continue
        raise ShapeError(
            f"{what} changed the type of carry{names[i]}: it went in as {t_in} and came out "
            f"as {t_out}",
            describe_loc(),
            "the carry must keep its shape and dtype on every iteration: initialize it with "
            "the final shape and dtype, or cast inside the body with .astype(...)",
        )
    return promoted if promoted != list(in_types) else None


# scan -----------------------------------------------------------------------------------


def _scan_length(x_leaves: list[Any], length: int | None) -> int:
    lengths = set()
    for x in x_leaves:
        t = type_of(x)
        if t.ndim == 0:
            raise ShapeError(
                f"scan needs xs with a leading dim to scan over, got a scalar {t}",
                describe_loc(),
                "stack the xs along a new leading axis",
            )
        lengths.add(t.shape[0])
    if length is not None:
        lengths.add(int(length))
    if len(lengths) > 1:
        raise ShapeError(
            f"scan got xs (and length) with different leading sizes {sorted(lengths)}",
            describe_loc(),
            "every xs leaf must have the scan length as its leading dim",
        )
    if not lengths:
        raise ShapeError(
            "scan needs xs or an explicit length", describe_loc(), "pass length=n when xs is None"
        )
    return lengths.pop()


def scan(
    f: Callable[[Any, Any], tuple[Any, Any]],
    init: Any,
    xs: Any = None,
    length: int | None = None,
    reverse: bool = False,
    unroll: int | bool = 1,
) -> Any:
    """Loop f(carry, x) -> (carry, y) over the leading axis of xs; returns (carry, stacked ys).

    `unroll` is accepted for JAX compatibility and ignored.

        >>> import numpy as np
        >>> from spmd import control
        >>> carry, ys = control.scan(lambda c, x: (c + x, c), np.float32(0), np.arange(3.0))
        >>> float(carry), ys.tolist()
        (3.0, [0.0, 0.0, 1.0])
    """
    carry_leaves, carry_tree = tree_flatten(init)
    x_leaves, x_tree = tree_flatten(xs)
    n = _scan_length(x_leaves, length)
    carry_types = [type_of(c) for c in carry_leaves]
    x_types = [type_of(x) for x in x_leaves]
    slice_types = [TensorType(t.shape[1:], t.dtype, t.weak) for t in x_types]
    names = _keys(init)
    trees: dict[str, Any] = {}

    def body(*args: Any) -> list[Any]:
        carry = tree_unflatten(carry_tree, args[: len(carry_types)])
        x = tree_unflatten(x_tree, args[len(carry_types) :])
        out = f(carry, x)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise ShapeError(
                f"scan's function must return a pair (carry, y), got {type(out).__name__}",
                describe_loc(),
            )
        new_leaves, trees["carry"] = tree_flatten(out[0])
        y_leaves, trees["y"] = tree_flatten(out[1])
        return list(new_leaves) + list(y_leaves)

    while True:
        graph, captured = trace_flat(body, carry_types + slice_types)
        out_types = graph.result_types[: len(carry_types)]
        promoted = _settle_types(
            "scan's function", carry_tree, carry_types, trees["carry"], out_types, names
        )
        if promoted is None:
            break
        carry_types = promoted
    carry_leaves = [_convert(c, t) for c, t in zip(carry_leaves, carry_types)]
    outs = bind(
        "scan",
        *captured,
        *carry_leaves,
        *x_leaves,
        body=hoist_captures(graph, len(captured)),
        num_consts=len(captured),
        num_carry=len(carry_leaves),
        length=n,
        reverse=bool(reverse),
    )
    k = len(carry_leaves)
    return tree_unflatten(carry_tree, outs[:k]), tree_unflatten(trees["y"], outs[k:])


# cond / switch ---------------------------------------------------------------------------


def _branch_index(index: Any, n: int, is_pred: bool) -> Any:
    from spmd import lax

    t = type_of(index)
    if t.shape != ():
        raise ShapeError(
            f"{'cond' if is_pred else 'switch'} needs a scalar "
            f"{'predicate' if is_pred else 'index'}, got shape {t.shape}",
            describe_loc(),
            "reduce it to a scalar first, e.g. with .all()",
        )
    if t.dtype != "bool" and not dtypes.is_int(t.dtype):
        raise DTypeError(
            f"cond/switch needs a bool or integer index, got {t.dtype}",
            describe_loc(),
            "compare first, e.g. x > 0",
        )
    if is_pred and t.dtype != "bool":
        index = lax.ne(index, 0)
    return lax.convert_element_type(index, "int32")


def cond(
    pred: Any, true_fun: Callable[..., Any], false_fun: Callable[..., Any], *operands: Any
) -> Any:
    """true_fun(*operands) if pred else false_fun(*operands), with pred traced.

    >>> from spmd import control
    >>> float(control.cond(True, lambda x: x + 1, lambda x: x - 1, 1.0))
    2.0
    """
    return _switch(_branch_index(pred, 2, True), (false_fun, true_fun), operands)


def switch(index: Any, branches: Sequence[Callable[..., Any]], *operands: Any) -> Any:
    """branches[index](*operands), with index traced and clamped into range (as JAX)."""
    if not branches:
        raise ShapeError("switch needs at least one branch", describe_loc())
    return _switch(_branch_index(index, len(branches), False), tuple(branches), operands)


def _switch(index: Any, branches: tuple[Callable[..., Any], ...], operands: tuple) -> Any:
    leaves, tree = tree_flatten(operands)
    types = [type_of(x) for x in leaves]
    cast: list[TensorType] | None = None
    while True:
        traced = [_trace_branch(fun, tree, types, cast) for fun in branches]
        out_trees = [t for _, t, _ in traced]
        if any(t != out_trees[0] for t in out_trees):
            raise ShapeError(
                "cond/switch branches must return the same structure, got "
                + " vs ".join(map(str, out_trees)),
                describe_loc(),
            )
        common = _common_types([g.result_types for g, _, _ in traced])
        if cast is not None or all(g.result_types == tuple(common) for g, _, _ in traced):
            break
        cast = common
    graphs, captured = _unify_captures([(g, c) for g, _, c in traced], len(leaves))
    outs = bind("cond", index, *leaves, *captured, branches=graphs)
    return tree_unflatten(out_trees[0], outs)


def _trace_branch(
    fun: Callable[..., Any], tree: Any, types: list[TensorType], cast: list[TensorType] | None
) -> tuple[Graph, Any, list[Any]]:
    box: dict[str, Any] = {}

    def run(*args: Any) -> list[Any]:
        out_leaves, box["tree"] = tree_flatten(fun(*tree_unflatten(tree, args)))
        if cast is None:
            return out_leaves
        return [_convert(x, t) for x, t in zip(out_leaves, cast)]

    graph, captured = trace_flat(run, types)
    return graph, box["tree"], captured


def _common_types(per_branch: list[tuple[TensorType, ...]]) -> list[TensorType]:
    """One result type per position; branches may differ only in the weak bit."""
    common = []
    for i, t in enumerate(per_branch[0]):
        others = [types[i] for types in per_branch]
        if any(o.shape != t.shape or o.dtype != t.dtype for o in others):
            raise ShapeError(
                "cond/switch branches return different types at output "
                f"{i}: {', '.join(str(o) for o in others)}",
                describe_loc(),
                "make every branch return the same shapes and dtypes",
            )
        common.append(TensorType(t.shape, t.dtype, all(o.weak for o in others)))
    return common


def _unify_captures(
    traced: list[tuple[Graph, list[Any]]],
    n_explicit: int,
) -> tuple[tuple[Graph, ...], list[Any]]:
    """Give every branch the same params: the explicit ones, then every branch's captures."""
    union: dict[int, Any] = {}
    for _, captured in traced:
        for value in captured:
            union.setdefault(value.id, value)
    graphs = []
    for graph, captured in traced:
        own = dict(zip((v.id for v in captured), graph.params[n_explicit:]))
        extra = tuple(own.get(key, fresh_id()) for key in union)
        graphs.append(
            graph.replace(
                params=graph.params[:n_explicit] + extra,
                param_types=graph.param_types[:n_explicit] + tuple(v.type for v in union.values()),
            )
        )
    return tuple(graphs), list(union.values())


# while_loop / fori_loop -------------------------------------------------------------------


def while_loop(
    cond_fun: Callable[[Any], Any], body_fun: Callable[[Any], Any], init_val: Any
) -> Any:
    """Repeat val = body_fun(val) while cond_fun(val); reverse-mode grad is unsupported.

    >>> from spmd import control
    >>> int(control.while_loop(lambda i: i < 10, lambda i: i * 2, 1))
    16
    """
    leaves, tree = tree_flatten(init_val)
    types = [type_of(x) for x in leaves]
    names = _keys(init_val)
    trees: dict[str, Any] = {}

    def body(*args: Any) -> list[Any]:
        out, trees["body"] = tree_flatten(body_fun(tree_unflatten(tree, args)))
        return out

    while True:
        body_graph, body_captured = trace_flat(body, types)
        promoted = _settle_types(
            "while_loop's body_fun", tree, types, trees["body"], body_graph.result_types, names
        )
        if promoted is None:
            break
        types = promoted
    cond_graph, cond_captured = trace_flat(
        lambda *args: tree_flatten(cond_fun(tree_unflatten(tree, args)))[0], types
    )
    pred = cond_graph.result_types
    if len(pred) != 1 or pred[0].shape != () or pred[0].dtype != "bool":
        raise DTypeError(
            f"while_loop's cond_fun must return a bool scalar, got "
            f"{', '.join(map(str, pred)) or 'nothing'}",
            describe_loc(),
            "compare to get a bool, e.g. lambda c: c[0] < 10",
        )
    leaves = [_convert(x, t) for x, t in zip(leaves, types)]
    outs = bind(
        "while_loop",
        *cond_captured,
        *body_captured,
        *leaves,
        cond_graph=hoist_captures(cond_graph, len(cond_captured)),
        body_graph=hoist_captures(body_graph, len(body_captured)),
        cond_num_consts=len(cond_captured),
        body_num_consts=len(body_captured),
    )
    return tree_unflatten(tree, outs)


def _static_int(x: Any) -> int | None:
    if isinstance(x, Tracer):
        return None
    if isinstance(x, (int, np.integer)) or (hasattr(x, "shape") and x.shape == ()):
        return int(x)
    return None


def fori_loop(
    lower: Any,
    upper: Any,
    body_fun: Callable[[Any, Any], Any],
    init_val: Any,
    *,
    unroll: int | bool | None = None,
) -> Any:
    """for i in range(lower, upper): val = body_fun(i, val). Static (Python) bounds lower to
    a scan, so it is differentiable; traced bounds lower to a while_loop.

        >>> from spmd import control
        >>> float(control.fori_loop(0, 4, lambda i, x: x * 2.0, 1.0))
        16.0
    """
    from spmd import lax

    lo, hi = _static_int(lower), _static_int(upper)
    if lo is not None and hi is not None:

        def step(carry: tuple[Any, Any], _: Any) -> tuple[tuple[Any, Any], None]:
            i, val = carry
            return (lax.add(i, 1), body_fun(i, val)), None

        (_, out), _ = scan(step, (np.int32(lo), init_val), None, length=max(hi - lo, 0))
        return out
    bound = lax.convert_element_type(upper, "int32")
    start = lax.convert_element_type(lower, "int32")

    def loop_body(carry: tuple[Any, Any]) -> tuple[Any, Any]:
        i, val = carry
        return lax.add(i, 1), body_fun(i, val)

    _, out = while_loop(lambda carry: lax.lt(carry[0], bound), loop_body, (start, init_val))
    return out

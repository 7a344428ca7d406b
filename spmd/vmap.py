"""spmd.vmap: JAX's vectorizing map, as a tracing transform over the op registry.

f is traced once on one example's types into a graph; the graph is then replayed on the
batched values, each op by its batching rule (spmd/vmap_rules.py): an op whose OpDef says
it batches (`shared_operands`: elementwise ops, shape ops, reductions, contractions, sort...)
runs once on the batched operands with its dim attributes shifted past the batch dim, as
device batching runs it; any other op (control flow, scatter, collectives...) runs once per
example and the results are stacked. Every op is bound with spmd.lax, so vmap composes with
jit, grad and sharded arrays. The batch dim is kept first.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from spmd import lax
from spmd.autodiff import trace_to_graph
from spmd.collective_api import current_mesh_axes, mesh_axes
from spmd.errors import ShapeError
from spmd.ir.graph import Graph, Op
from spmd.ir.types import TensorType
from spmd.tracing import bind, describe_loc, loc_scope, type_of
from spmd.tree import tree_flatten, tree_unflatten
from spmd.validate import check_callable
from spmd.vmap_rules import batch, named_axis_collective

Value = tuple[Any, bool]  # (value, has the batch dim first)


class _Abstract:
    """A stand-in argument with only a type (trace_to_graph reads `.aval`)."""

    def __init__(self, aval: TensorType):
        self.aval = aval


def vmap(
    fun: Callable[..., Any],
    in_axes: Any = 0,
    out_axes: Any = 0,
    axis_name: Any = None,
    axis_size: int | None = None,
    spmd_axis_name: Any = None,
) -> Callable[..., Any]:
    """Map fun over a new leading (or `in_axes`) dim of its arguments, as jax.vmap.

    >>> import spmd, spmd.numpy as snp, numpy as np
    >>> rows = spmd.vmap(lambda v: snp.dot(v, v))(np.arange(6.0).reshape(3, 2))
    >>> np.asarray(rows).tolist()
    [1.0, 13.0, 41.0]
    """
    check_callable("vmap", fun)
    if axis_name is not None and not isinstance(axis_name, str):
        raise ShapeError(f"vmap axis_name must be a string, got {axis_name!r}", describe_loc())

    @functools.wraps(fun)
    def run(*args: Any) -> Any:
        leaves, treedef = tree_flatten(args)
        axes = _axes_per_leaf(in_axes, args, "in_axes")
        size = _batch_size(leaves, axes, axis_size)
        moved = [_to_front(x, a) for x, a in zip(leaves, axes)]
        examples = [_Abstract(_example_type(x, a is not None)) for x, a in zip(moved, axes)]
        with _named_axis(axis_name, size):
            graph, out_tree, captured = trace_to_graph(fun, examples, treedef)
        ins = [(x, a is not None) for x, a in zip(moved, axes)] + [(c, False) for c in captured]
        outs = replay_batched(graph, ins, size, axis_name)
        out_axes_leaves = _axes_per_leaf(out_axes, tree_unflatten(out_tree, outs), "out_axes")
        results = [_from_front(v, b, a, size) for (v, b), a in zip(outs, out_axes_leaves)]
        return tree_unflatten(out_tree, results)

    return run


@contextlib.contextmanager
def _named_axis(axis_name: str | None, size: int) -> Iterator[None]:
    """While tracing f: collectives may name the vmapped axis (beside any shard_map's)."""
    if axis_name is None:
        yield
        return
    outer = current_mesh_axes()
    names = (outer.axis_names if outer else ()) + (axis_name,)
    sizes = (outer.axis_sizes if outer else ()) + (size,)
    with mesh_axes(names, sizes):
        yield


def _axes_per_leaf(spec: Any, tree: Any, what: str) -> list[int | None]:
    """One axis (or None) per leaf of `tree`; `spec` is a pytree prefix of it."""
    n = len(tree_flatten(tree)[0])
    if spec is None or isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        return [None if spec is None else int(spec)] * n
    if isinstance(spec, (tuple, list)) and isinstance(tree, (tuple, list)):
        if len(spec) != len(tree):
            raise ShapeError(
                f"vmap {what} {spec!r} has {len(spec)} entries for {len(tree)} values",
                describe_loc(),
                f"give one entry per value in {what}, or one int for all",
            )
        return [a for s, sub in zip(spec, tree) for a in _axes_per_leaf(s, sub, what)]
    if isinstance(spec, dict) and isinstance(tree, dict) and set(spec) == set(tree):
        return [a for k in sorted(tree) for a in _axes_per_leaf(spec[k], tree[k], what)]
    raise ShapeError(
        f"vmap {what} {spec!r} does not match the structure of the values",
        describe_loc(),
        f"make {what} an int, None, or a pytree prefix of the values with int/None leaves",
    )


def _batch_size(leaves: list[Any], axes: list[int | None], axis_size: int | None) -> int:
    sizes = set()
    for i, (x, a) in enumerate(zip(leaves, axes)):
        if a is None:
            continue
        shape = type_of(x).shape
        if not -len(shape) <= a < len(shape):
            raise ShapeError(
                f"vmap in_axes {a} is out of range for argument leaf {i} of shape {shape}",
                describe_loc(),
                f"use an axis from {-len(shape)} to {len(shape) - 1}, or None",
            )
        sizes.add(shape[a])
    if len(sizes) > 1:
        raise ShapeError(
            f"vmap got mapped axes of different sizes {sorted(sizes)}",
            describe_loc(),
            "every mapped argument needs the same size along its in_axes",
        )
    if not sizes:
        if axis_size is None:
            raise ShapeError(
                "vmap has no mapped argument (every in_axes is None)",
                describe_loc(),
                "map at least one argument, or pass axis_size=",
            )
        return int(axis_size)
    return sizes.pop()


def _to_front(x: Any, axis: int | None) -> Any:
    if axis is None:
        return x
    ndim = type_of(x).ndim
    axis %= ndim
    if axis == 0:
        return x
    perm = (axis, *[d for d in range(ndim) if d != axis])
    return lax.transpose(x, perm)


def _example_type(x: Any, batched: bool) -> TensorType:
    t = type_of(x)
    return t.with_shape(t.shape[1:]) if batched else t


def _from_front(x: Any, batched: bool, axis: int | None, size: int) -> Any:
    if axis is None:
        if batched:
            raise ShapeError(
                "vmap out_axes=None needs an output that does not depend on the mapped axis",
                describe_loc(),
                "use out_axes=0",
            )
        return x
    if not batched:
        x = _broadcast_front(x, size)
    ndim = type_of(x).ndim
    if not -ndim <= axis < ndim:
        raise ShapeError(
            f"vmap out_axes {axis} is out of range for an output of rank {ndim}",
            describe_loc(),
            f"use an axis from {-ndim} to {ndim - 1}",
        )
    axis %= ndim
    if axis == 0:
        return x
    perm = [d for d in range(1, ndim)]
    perm.insert(axis, 0)
    return lax.transpose(x, tuple(perm))


def _broadcast_front(x: Any, size: int) -> Any:
    t = type_of(x)
    return lax.broadcast_in_dim(x, (size, *t.shape), tuple(range(1, t.ndim + 1)))


def replay_batched(
    graph: Graph, ins: Sequence[Value], size: int, axis_name: str | None = None
) -> list[Value]:
    """Run `graph` (traced on one example) on batched inputs: (value, batched) per result.
    Collectives over `axis_name` become reductions over the batch dim."""
    env: dict[int, Value] = dict(zip(graph.params, ins))
    for op in graph.ops:
        args = [env[v] for v in op.inputs]
        with loc_scope(op.loc):
            if axis_name is not None and axis_name in (op.attrs.get("axes") or ()):
                outs = named_axis_collective(op, args, size, axis_name)
            else:
                outs = _batch_op(op, args, size)
        env.update(zip(op.outputs, outs))
    return [env[r] for r in graph.results]


def _batch_op(op: Op, args: list[Value], size: int) -> list[Value]:
    attrs = dict(op.attrs)
    if not any(b for _, b in args):
        out = bind(op.name, *[v for v, _ in args], **attrs)
        return [(o, False) for o in _as_list(out)]
    got = batch(op.name, args, attrs, size)
    if got is not None:
        return [(o, True) for o in _as_list(got)]
    return _per_example(op, args, attrs, size)


def _per_example(op: Op, args: list[Value], attrs: dict[str, Any], size: int) -> list[Value]:
    """The fallback rule: the op once per example, results stacked on a new first dim."""
    if size == 0:
        return [(lax.full((0, *t.shape), 0, t.dtype), True) for t in op.types]
    per_out: list[list[Any]] = []
    for i in range(size):
        row = [_take(v, i) if b else v for v, b in args]
        per_out.append(_as_list(bind(op.name, *row, **attrs)))
    return [(_stack([r[k] for r in per_out]), True) for k in range(len(per_out[0]))]


def _take(x: Any, i: int) -> Any:
    t = type_of(x)
    piece = lax.slice(x, (i,) + (0,) * (t.ndim - 1), (i + 1, *t.shape[1:]))
    return lax.reshape(piece, t.shape[1:])


def _stack(values: list[Any]) -> Any:
    return lax.concatenate([lax.expand_dims(v, (0,)) for v in values], 0)


def _as_list(out: Any) -> list[Any]:
    return list(out) if isinstance(out, (tuple, list)) else [out]

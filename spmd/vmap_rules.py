"""Batching rules of spmd.vmap: an op on operands whose first dim is the batch (unbatched
operands are broadcast to it first). A rule returns the batched results, or None to fall back
to running the op once per example.

The rule of most ops is their registry facts, the same ones device batching uses
(partitioner/device_batching.py): an op with `shared_operands` runs once over the batch, its
attributes shifted by `attr_kinds` (spmd/ops/attrs.py with_leading_axis), its shared operands
unbatched. RULES holds what vmap does better than that, per op: a dot_general or gather with
one batched side batches without broadcasting the other, and a sharding constraint gains a
replicated batch dim.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from spmd import lax
from spmd.errors import ShapeError
from spmd.ir.graph import Op
from spmd.ir.types import TensorType
from spmd.named_sharding import ShardingAttr
from spmd.ops import REGISTRY
from spmd.ops.attrs import with_leading_axis
from spmd.tracing import bind, describe_loc, type_of

Args = list[tuple[Any, bool]]
Rule = Callable[[Args, dict[str, Any], int], Any]


def _batched(v: Any, b: bool, size: int) -> Any:
    """v with the batch dim first (broadcast when it has none)."""
    if b:
        return v
    t: TensorType = type_of(v)
    return lax.broadcast_in_dim(v, (size, *t.shape), tuple(range(1, t.ndim + 1)))


def batch(name: str, args: Args, attrs: dict[str, Any], size: int) -> Any:
    """The op batched: its own rule in RULES, else its registry facts; None: per example."""
    rule = RULES.get(name)
    if rule is not None:
        return rule(args, attrs, size)
    return leading_axis(name, args, attrs, size)


def leading_axis(name: str, args: Args, attrs: dict[str, Any], size: int) -> Any:
    """The op once over the batch dim, by its OpDef (as device batching runs it)."""
    opdef = REGISTRY[name]
    shifted = with_leading_axis(opdef, attrs, size)
    shared = opdef.shared_operands or ()
    if shifted is None or any(args[i][1] for i in shared):
        return None
    operands = [v if i in shared else _batched(v, b, size) for i, (v, b) in enumerate(args)]
    return bind(name, *operands, **shifted)


def _shift(dims: Any) -> tuple[int, ...]:
    return tuple(int(d) + 1 for d in dims)


def _dot_general(args: Args, attrs: dict[str, Any], size: int) -> Any:
    """Both batched: a new batch dim; one batched: its batch dim is a free dim, moved first."""
    (lhs, lb_), (rhs, rb_) = args
    if lb_ and rb_:
        return leading_axis("dot_general", args, attrs, size)
    (lc, rc), (lb, rb) = attrs["dimension_numbers"]
    pet = attrs.get("preferred_element_type")
    if lb_:
        dn = ((_shift(lc), tuple(rc)), (_shift(lb), tuple(rb)))
        at = len(lb)  # result: batch dims, then lhs free dims (ours first among them)
    else:
        dn = ((tuple(lc), _shift(rc)), (tuple(lb), _shift(rb)))
        lhs_free = type_of(lhs).ndim - len(lc) - len(lb)
        at = len(lb) + lhs_free
    out = bind("dot_general", lhs, rhs, dimension_numbers=dn, preferred_element_type=pet)
    return _front(out, at)


def _front(x: Any, at: int) -> Any:
    if at == 0:
        return x
    ndim = type_of(x).ndim
    return lax.transpose(x, (at, *[d for d in range(ndim) if d != at]))


def _gather(args: Args, attrs: dict[str, Any], size: int) -> Any:
    """x[..., indices, ...] along `axis`: a batched x gathers past its batch dim; batched
    indices put the batch where the indices go, then first. Both batched: per example."""
    (x, xb), (indices, ib) = args
    axis = int(attrs["axis"]) % max(type_of(x).ndim - (1 if xb else 0), 1)
    if xb and ib:
        return None
    if xb:
        return bind("gather", x, indices, axis=axis + 1)
    return _front(bind("gather", x, indices, axis=axis), axis)


def _sharding_constraint(args: Args, attrs: dict[str, Any], size: int) -> Any:
    ((x, b),) = args
    s = attrs["sharding"]
    batched = ShardingAttr(s.axis_names, s.axis_sizes, ((), *s.dims))
    return bind("sharding_constraint", _batched(x, b, size), sharding=batched)


RULES: dict[str, Rule] = {
    "dot_general": _dot_general,
    "gather": _gather,
    "sharding_constraint": _sharding_constraint,
}


def named_axis_collective(op: Op, args: Args, size: int, name: str) -> list[tuple[Any, bool]]:
    """A collective over vmap's axis_name: psum/pmax/pmin reduce the batch dim, axis_index is
    the example's position, all_gather concatenates the examples (results are unbatched)."""
    if tuple(op.attrs["axes"]) != (name,):
        raise ShapeError(
            f"{op.name} over {op.attrs['axes']!r} mixes vmap's axis {name!r} with shard_map axes",
            describe_loc(),
            "do the two collectives one by one",
        )
    rule = NAMED_AXIS_RULES.get(op.name)
    got = None if rule is None else rule(op, args, size)
    if got is None:
        raise ShapeError(
            f"{op.name} over vmap's axis {name!r} is not supported",
            describe_loc(),
            "use psum, pmean, pmax, pmin, axis_index or all_gather over a vmapped axis",
        )
    return [got]


def _axis_index(op: Op, args: Args, size: int) -> tuple[Any, bool]:
    return lax.iota("int32", (size,)), True


def _all_reduce(op: Op, args: Args, size: int) -> tuple[Any, bool] | None:
    ((x, batched),) = args
    kind = op.attrs.get("kind")
    if kind not in ("sum", "max", "min"):
        return None
    if batched:
        return lax.reduce(x, kind, (0,)), False
    return (lax.mul(x, size) if kind == "sum" else x), False


def _all_gather(op: Op, args: Args, size: int) -> tuple[Any, bool]:
    ((x, batched),) = args
    x = _batched(x, batched, size)
    t = type_of(x)
    dim = int(op.attrs["dim"])
    moved = (
        _front(x, 0)
        if dim == 0
        else lax.transpose(x, (*range(1, dim + 1), 0, *range(dim + 1, t.ndim)))
    )
    shape = list(t.shape[1:])
    shape[dim] *= size
    return lax.reshape(moved, shape), False


# What an op over vmap's named axis becomes on the batch dim (None: not supported).
NAMED_AXIS_RULES: dict[str, Callable[[Op, Args, int], tuple[Any, bool] | None]] = {
    "axis_index": _axis_index,
    "all_reduce": _all_reduce,
    "all_gather": _all_gather,
}

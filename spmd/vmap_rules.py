"""Batching rules of spmd.vmap, one per op name: the op on operands whose first dim is the
batch (unbatched operands are broadcast to it first). A rule returns the batched results, or
None to fall back to running the op once per example. Ops without a rule fall back too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from spmd import lax
from spmd.ir.types import TensorType
from spmd.tracing import bind, type_of

Args = list[tuple[Any, bool]]
Rule = Callable[[Args, dict[str, Any], int], Any]


def _batched(v: Any, b: bool, size: int) -> Any:
    """v with the batch dim first (broadcast when it has none)."""
    if b:
        return v
    t: TensorType = type_of(v)
    return lax.broadcast_in_dim(v, (size, *t.shape), tuple(range(1, t.ndim + 1)))


def _all(args: Args, size: int) -> list[Any]:
    return [_batched(v, b, size) for v, b in args]


def elementwise(name: str, args: Args, attrs: dict[str, Any], size: int) -> Any:
    """Same-shape operands: the batch dim is one more dim mapped to itself."""
    return bind(name, *_all(args, size), **attrs)


def _shift(dims: Any) -> tuple[int, ...]:
    return tuple(int(d) + 1 for d in dims)


def _unary(name: str, fix: Callable[[dict[str, Any], Any], dict[str, Any]]) -> Rule:
    def rule(args: Args, attrs: dict[str, Any], size: int) -> Any:
        (x, b), *rest = args
        if any(rb for _, rb in rest):
            return None
        x = _batched(x, b, size)
        return bind(name, x, *[v for v, _ in rest], **fix(attrs, x))

    return rule


def _dot_general(args: Args, attrs: dict[str, Any], size: int) -> Any:
    """Both batched: a new batch dim; one batched: its batch dim is a free dim, moved first."""
    (lhs, lb_), (rhs, rb_) = args
    (lc, rc), (lb, rb) = attrs["dimension_numbers"]
    pet = attrs.get("preferred_element_type")
    if lb_ and rb_:
        dn = ((_shift(lc), _shift(rc)), ((0, *_shift(lb)), (0, *_shift(rb))))
        return bind("dot_general", lhs, rhs, dimension_numbers=dn, preferred_element_type=pet)
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


def _concatenate(args: Args, attrs: dict[str, Any], size: int) -> Any:
    return bind("concatenate", *_all(args, size), dimension=int(attrs["dimension"]) + 1)


def _select(args: Args, attrs: dict[str, Any], size: int) -> Any:
    pred, on_true, on_false = _all(args, size)
    return bind("select", pred, on_true, on_false)


def _pad(args: Args, attrs: dict[str, Any], size: int) -> Any:
    (x, b), (value, vb) = args
    if vb:
        return None
    config = ((0, 0, 0), *attrs["padding_config"])
    return bind("pad", _batched(x, b, size), value, padding_config=config)


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
    from spmd.sharding import ShardingAttr

    ((x, b),) = args
    s = attrs["sharding"]
    batched = ShardingAttr(s.axis_names, s.axis_sizes, ((), *s.dims))
    return bind("sharding_constraint", _batched(x, b, size), sharding=batched)


def _with(**fixes: Callable[[Any, Any], Any]) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    def fix(attrs: dict[str, Any], x: Any) -> dict[str, Any]:
        out = dict(attrs)
        for key, f in fixes.items():
            out[key] = f(out[key], x)
        return out

    return fix


def _size_first(shape: Any, x: Any) -> tuple[int, ...]:
    return (type_of(x).shape[0], *shape)


def named_axis_collective(op: Any, args: Args, size: int, name: str) -> list[tuple[Any, bool]]:
    """A collective over vmap's axis_name: psum/pmax/pmin reduce the batch dim, axis_index is
    the example's position, all_gather concatenates the examples (results are unbatched)."""
    from spmd.errors import ShapeError
    from spmd.tracing import describe_loc

    if tuple(op.attrs["axes"]) != (name,):
        raise ShapeError(
            f"{op.name} over {op.attrs['axes']!r} mixes vmap's axis {name!r} with shard_map axes",
            describe_loc(),
            "do the two collectives one by one",
        )
    if op.name == "axis_index":
        return [(lax.iota("int32", (size,)), True)]
    ((x, batched),) = args
    kind = op.attrs.get("kind")
    if op.name == "all_reduce" and kind in ("sum", "max", "min"):
        if batched:
            return [(lax.reduce(x, kind, (0,)), False)]
        return [(lax.mul(x, size) if kind == "sum" else x, False)]
    if op.name == "all_gather":
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
        return [(lax.reshape(moved, shape), False)]
    raise ShapeError(
        f"{op.name} over vmap's axis {name!r} is not supported",
        describe_loc(),
        "use psum, pmean, pmax, pmin, axis_index or all_gather over a vmapped axis",
    )


RULES: dict[str, Rule] = {
    "dot_general": _dot_general,
    "concatenate": _concatenate,
    "select": _select,
    "gather": _gather,
    "pad": _pad,
    "sharding_constraint": _sharding_constraint,
    "broadcast_in_dim": _unary(
        "broadcast_in_dim",
        _with(shape=_size_first, broadcast_dimensions=lambda d, x: (0, *_shift(d))),
    ),
    "reshape": _unary("reshape", _with(new_sizes=_size_first)),
    "transpose": _unary("transpose", _with(permutation=lambda p, x: (0, *_shift(p)))),
    "reduce": _unary("reduce", _with(axes=lambda a, x: _shift(a))),
    "argmax": _unary("argmax", _with(axis=lambda a, x: int(a) + 1)),
    "argmin": _unary("argmin", _with(axis=lambda a, x: int(a) + 1)),
    "cumsum": _unary("cumsum", _with(axis=lambda a, x: int(a) + 1)),
    "sort": _unary("sort", _with(dimension=lambda a, x: int(a) + 1)),
    "argsort": _unary("argsort", _with(dimension=lambda a, x: int(a) + 1)),
    "rev": _unary("rev", _with(dimensions=lambda d, x: _shift(d))),
    "slice": _unary(
        "slice",
        _with(
            start_indices=lambda s, x: (0, *s),
            limit_indices=_size_first,
            strides=lambda s, x: None if s is None else (1, *s),
        ),
    ),
}

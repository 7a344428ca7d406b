"""Attribute rewrites written once from each op's `attr_kinds`: the attributes of an op that
runs on shards (the partitioner's local attributes), and of an op run once over a new
leading axis of independent instances (device batching)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spmd.ops.opdef import AttrKind, OpDef


def _shift_one(d: int) -> int:
    """A dim index past a new leading axis: one more, or as it is when it counts from the end."""
    return int(d) + 1 if int(d) >= 0 else int(d)


def _shift(dims: Sequence[int]) -> tuple[int, ...]:
    return tuple(_shift_one(d) for d in dims)


def with_leading_axis(opdef: OpDef, attrs: dict[str, Any], n: int) -> dict[str, Any] | None:
    """The attributes of the op when every operand but opdef.shared_operands gains a leading
    axis of n instances (the result has it too); None when the op does not batch so."""
    if opdef.shared_operands is None:
        return None
    out = dict(attrs)
    for key, kind in opdef.attr_kinds.items():
        if key not in attrs:
            continue
        a = attrs[key]
        if kind is AttrKind.DIM:
            out[key] = _shift_one(a)
        elif kind is AttrKind.DIMS:
            out[key] = _shift(a)
        elif kind is AttrKind.DIM_MAP:
            out[key] = (0, *_shift(a))
        elif kind in (AttrKind.SHAPE, AttrKind.WINDOW):
            out[key] = (n, *a)
        elif kind is AttrKind.STARTS:
            out[key] = (0, *a)
        elif kind is AttrKind.STRIDES:
            out[key] = (1, *a)
        elif kind is AttrKind.PADDING:
            out[key] = ((0, 0, 0), *a)
        elif kind is AttrKind.DOT_DIMS:
            (lc, rc), (lb, rb) = a
            out[key] = ((_shift(lc), _shift(rc)), ((0, *_shift(lb)), (0, *_shift(rb))))
    return out


def local_attrs(
    opdef: OpDef,
    attrs: dict[str, Any],
    in_global: tuple[int, ...],
    in_local: tuple[int, ...],
    out_local: tuple[int, ...],
) -> dict[str, Any]:
    """The attributes of the op on one shard: a result shape becomes the local one; a window
    over a whole operand dim covers the whole local dim (a cut dim is never sharded)."""
    out = dict(attrs)
    for key, kind in opdef.attr_kinds.items():
        if key not in attrs:
            continue
        if kind is AttrKind.SHAPE:
            out[key] = tuple(out_local)
        elif kind is AttrKind.WINDOW:
            out[key] = tuple(
                in_local[d] if s == in_global[d] else s for d, s in enumerate(attrs[key])
            )
    return out

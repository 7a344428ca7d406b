"""Attribute rewrites written once from each op's `attr_kinds`: the attributes of an op that
runs on shards (the partitioner's local attributes)."""

from __future__ import annotations

from typing import Any

from spmd.ops.opdef import AttrKind, OpDef


def local_attrs(opdef: OpDef, attrs: dict[str, Any], in_global: tuple[int, ...],
                in_local: tuple[int, ...], out_local: tuple[int, ...]) -> dict[str, Any]:
    """The attributes of the op on one shard: a result shape becomes the local one; a window
    over a whole operand dim covers the whole local dim (a cut dim is never sharded)."""
    out = dict(attrs)
    for key, kind in opdef.attr_kinds.items():
        if key not in attrs:
            continue
        if kind is AttrKind.SHAPE:
            out[key] = tuple(out_local)
        elif kind is AttrKind.WINDOW:
            out[key] = tuple(in_local[d] if s == in_global[d] else s
                             for d, s in enumerate(attrs[key]))
    return out

"""spmd.lax: the primitive ops, one thin function per registry entry (JAX's names).

Binary ops need equal shapes and dtypes, except that a Python scalar takes the
other operand's type. The builders live in spmd.primitives (below the op families, whose
derivative rules emit with them); control flow (cond, scan, fori_loop) lives in spmd.control
and collectives for shard_map in spmd.collective_api; all are re-exported here.
"""

from __future__ import annotations

from typing import Any

import spmd.ops  # noqa: F401 (fills the registry the elementwise functions are made from)
from spmd import primitives
from spmd.primitives import (  # noqa: F401 (re-exported: spmd.lax's names)
    argmax,
    argmin,
    broadcast,
    broadcast_in_dim,
    concatenate,
    constant,
    convert_element_type,
    cumsum,
    dot_general,
    dynamic_index_in_dim,
    dynamic_slice,
    dynamic_slice_in_dim,
    dynamic_update_index_in_dim,
    dynamic_update_slice,
    dynamic_update_slice_in_dim,
    expand_dims,
    full,
    full_like,
    gather,
    iota,
    pad,
    reduce,
    reduce_max,
    reduce_min,
    reduce_prod,
    reduce_sum,
    reshape,
    rev,
    scatter_add,
    select,
    slice,
    slice_in_dim,
    squeeze,
    stop_gradient,
    transpose,
    zeros_like,
)
from spmd.tracing import bind, type_of

# add, sub, exp, bitwise_and, ...: one per registry entry naming one (a new op: no line here)
globals().update(primitives.elementwise_functions())


def pvary(x: Any, axis_name: Any) -> Any:
    """Inside shard_map: mark x as varying over `axis_name` (JAX's lax.pvary; values are
    unchanged, only the varying-axes check of out_specs and scan carries sees it)."""
    from spmd.shard_map import mark_varying

    return mark_varying(x, axis_name)


def pcast(x: Any, axis_name: Any, *, to: str) -> Any:
    """JAX's lax.pcast(x, axes, to='varying'): the newer spelling of pvary."""
    from spmd.errors import ShardingError

    if to != "varying":
        raise ShardingError(f"pcast(to={to!r}) is not supported", hint="use to='varying'")
    return pvary(x, axis_name)


def with_sharding_constraint(x: Any, sharding: Any) -> Any:
    """Ask the partitioner to lay x out as `sharding` here (identity on values)."""
    from spmd.named_sharding import sharding_attr

    return bind("sharding_constraint", x, sharding=sharding_attr(sharding, type_of(x)))


def __getattr__(name: str) -> Any:
    # cond/scan/fori_loop/while_loop and shard_map collectives are defined elsewhere.
    from spmd import collective_api, control

    public = {
        "cond",
        "switch",
        "scan",
        "fori_loop",
        "while_loop",
        "psum",
        "pmean",
        "pmax",
        "pmin",
        "all_gather",
        "psum_scatter",
        "all_to_all",
        "ppermute",
        "axis_index",
        "axis_size",
    }
    for module in (control, collective_api):
        if name in public and hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module 'spmd.lax' has no attribute {name!r}")

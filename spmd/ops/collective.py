"""Collective ops of per-device programs (inserted by the partitioner, or written in
shard_map bodies): all_reduce, all_gather, reduce_scatter, all_to_all,
collective_permute, axis_index.

Every collective runs over a group of mesh axes (`axes`, major first) of `group_size`
devices. `reference` is the one-device case; `extra["group_reference"]` maps the list of
every member's input (in group order) to every member's output: it is the oracle for
transports and the lockstep runtime.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from spmd import primitives as prim
from spmd.errors import InternalError, ShapeError
from spmd.ir.types import TensorType
from spmd.ops.common import letters
from spmd.ops.elementwise import elementwise_factors
from spmd.ops.opdef import ZERO_GRAD, AttrKind, Factors, OpDef, Trait
from spmd.tracing import bind

REDUCERS = {"sum": np.add, "max": np.maximum, "min": np.minimum, "prod": np.multiply}


def _single(name: str) -> Any:
    def ref(*xs: np.ndarray, group_size: int, **attrs: Any) -> Any:
        if group_size != 1:
            raise InternalError(f"{name} over {group_size} devices needs a runtime")
        return GROUP_REFERENCES[name]([x for x in xs], group_size=1, **attrs)[0]

    return ref


def _reduce(xs: list[np.ndarray], kind: str) -> np.ndarray:
    out = np.array(xs[0], copy=True)
    with np.errstate(all="ignore"):
        for x in xs[1:]:
            REDUCERS[kind](out, x, out=out)
    return out


def group_all_reduce(
    xs: list[np.ndarray], *, axes: Any, group_size: int, kind: str = "sum"
) -> list[np.ndarray]:
    total = _reduce(xs, kind)
    return [total] * len(xs)


def group_all_gather(
    xs: list[np.ndarray], *, axes: Any, group_size: int, dim: int
) -> list[np.ndarray]:
    full = np.concatenate(xs, axis=dim)
    return [full] * len(xs)


def group_reduce_scatter(
    xs: list[np.ndarray], *, axes: Any, group_size: int, dim: int, kind: str = "sum"
) -> list[np.ndarray]:
    total = _reduce(xs, kind)
    return list(np.split(total, group_size, axis=dim))


def group_all_to_all(
    xs: list[np.ndarray], *, axes: Any, group_size: int, split_dim: int, concat_dim: int
) -> list[np.ndarray]:
    blocks = [np.split(x, group_size, axis=split_dim) for x in xs]
    return [
        np.concatenate([blocks[src][dst] for src in range(group_size)], axis=concat_dim)
        for dst in range(group_size)
    ]


def group_permute(
    xs: list[np.ndarray],
    *,
    axes: Any,
    group_size: int,
    pairs: tuple[tuple[int, int], ...],
    reason: str = "",
) -> list[np.ndarray]:
    out = [np.zeros_like(x) for x in xs]
    for src, dst in pairs:
        out[dst] = xs[src]
    return out


def group_axis_index(xs: list[Any], *, axes: Any, group_size: int) -> list[np.ndarray]:
    return [np.asarray(i, dtype=np.int32) for i in range(group_size)]


GROUP_REFERENCES = {
    "all_reduce": group_all_reduce,
    "all_gather": group_all_gather,
    "reduce_scatter": group_reduce_scatter,
    "all_to_all": group_all_to_all,
    "collective_permute": group_permute,
    "axis_index": group_axis_index,
}


def _dim_check(name: str, x: TensorType, dim: int) -> None:
    if not 0 <= dim < x.ndim:
        raise ShapeError(f"{name}: dim {dim} out of range for {x}")


def _gather_type(x: TensorType, *, axes: Any, group_size: int, dim: int) -> TensorType:
    _dim_check("all_gather", x, dim)
    shape = list(x.shape)
    shape[dim] *= group_size
    return x.with_shape(tuple(shape))


def _scatter_type(
    x: TensorType, *, axes: Any, group_size: int, dim: int, kind: str = "sum"
) -> TensorType:
    _dim_check("reduce_scatter", x, dim)
    if x.shape[dim] % group_size:
        raise ShapeError(
            f"reduce_scatter: dim {dim} of {x} does not split into {group_size} equal blocks",
            hint="pad the dim to a multiple first",
        )
    shape = list(x.shape)
    shape[dim] //= group_size
    return x.with_shape(tuple(shape))


def _all_to_all_type(
    x: TensorType, *, axes: Any, group_size: int, split_dim: int, concat_dim: int
) -> TensorType:
    _dim_check("all_to_all", x, split_dim)
    _dim_check("all_to_all", x, concat_dim)
    if x.shape[split_dim] % group_size:
        raise ShapeError(
            f"all_to_all: split dim {split_dim} of {x} does not split into {group_size} blocks"
        )
    shape = list(x.shape)
    shape[split_dim] //= group_size
    shape[concat_dim] *= group_size
    return x.with_shape(tuple(shape))


def _blocked_factors(*dim_attrs: str) -> Any:
    def factors(x: TensorType, **attrs: Any) -> Factors:
        dims = letters(x.ndim)
        blocked = "".join(dims[attrs[a]] for a in dim_attrs)
        return Factors.parse(f"{dims}->{dims}", blocked=blocked)

    return factors


def _all_reduce_vjp(
    ct: Any, x: Any, *, out: Any, axes: Any, group_size: int, kind: str = "sum"
) -> Any:
    summed = bind("all_reduce", ct, axes=axes, group_size=group_size, kind="sum")
    if kind == "sum":
        return summed
    hit = prim.convert_element_type(prim.eq(x, out), x.type.dtype)
    return prim.mul(summed, hit)


OPS = [
    OpDef(
        "all_reduce",
        lambda x, **_: x,
        _single("all_reduce"),
        _all_reduce_vjp,
        elementwise_factors,
        extra={"group_reference": group_all_reduce},
        traits=Trait.COLLECTIVE | Trait.PER_DEVICE,
    ),
    OpDef(
        "all_gather",
        _gather_type,
        _single("all_gather"),
        lambda ct, x, *, out, axes, group_size, dim: bind(
            "reduce_scatter", ct, axes=axes, group_size=group_size, dim=dim, kind="sum"
        ),
        _blocked_factors("dim"),
        extra={"group_reference": group_all_gather},
        traits=Trait.COLLECTIVE | Trait.PER_DEVICE,
        attr_kinds={"dim": AttrKind.DIM},
    ),
    OpDef(
        "reduce_scatter",
        _scatter_type,
        _single("reduce_scatter"),
        lambda ct, x, *, out, axes, group_size, dim, kind="sum": bind(
            "all_gather", ct, axes=axes, group_size=group_size, dim=dim
        ),
        _blocked_factors("dim"),
        extra={"group_reference": group_reduce_scatter},
        traits=Trait.COLLECTIVE | Trait.PER_DEVICE,
        attr_kinds={"dim": AttrKind.DIM},
    ),
    OpDef(
        "all_to_all",
        _all_to_all_type,
        _single("all_to_all"),
        lambda ct, x, *, out, axes, group_size, split_dim, concat_dim: bind(
            "all_to_all",
            ct,
            axes=axes,
            group_size=group_size,
            split_dim=concat_dim,
            concat_dim=split_dim,
        ),
        _blocked_factors("split_dim", "concat_dim"),
        extra={"group_reference": group_all_to_all},
        traits=Trait.COLLECTIVE | Trait.PER_DEVICE,
        attr_kinds={"split_dim": AttrKind.DIM, "concat_dim": AttrKind.DIM},
    ),
    OpDef(
        "collective_permute",
        lambda x, **_: x,
        _single("collective_permute"),
        lambda ct, x, *, out, axes, group_size, pairs, reason="": bind(
            "collective_permute",
            ct,
            axes=axes,
            group_size=group_size,
            pairs=tuple((d, s) for s, d in pairs),
            **({"reason": f"backward of {reason}"} if reason else {}),
        ),
        elementwise_factors,
        extra={"group_reference": group_permute},
        traits=Trait.COLLECTIVE | Trait.PER_DEVICE,
    ),
    OpDef(
        "axis_index",
        lambda *, axes, group_size: TensorType((), "int32"),
        _single("axis_index"),
        ZERO_GRAD,
        lambda **_: Factors((), ((),)),
        extra={"group_reference": group_axis_index},
        traits=Trait.PER_DEVICE,
    ),
]
# The ops that communicate (Trait.COLLECTIVE), for launch/ until it asks the trait.
COLLECTIVES = tuple(d.name for d in OPS if d.has(Trait.COLLECTIVE))

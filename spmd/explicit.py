"""Sharding in types (JAX's explicit-sharding API): typeof, reshard, auto_axes, explicit_axes,
the placement that device_put and `out_sharding=` share.

Inside jit, `typeof(x).sharding` is read off the trace so far: each op's factor signature
(its registry entry) carries the operands' dim shardings to its results, as JAX's sharding
rules do for explicit axes; a factor summed away leaves its dims replicated.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import optree

from spmd import dtypes
from spmd.errors import ShardingError
from spmd.mesh import AxisType, Device, current_mesh
from spmd.named_sharding import (
    DimSpec,
    NamedSharding,
    PartitionSpec,
    Sharding,
    ShardingAttr,
    SingleDeviceSharding,
)
from spmd.ops import REGISTRY, Trait
from spmd.tracing import Tracer, current_trace, describe_loc, type_of


@dataclass(frozen=True)
class ShapedArray:
    """What `typeof(x)` returns: shape, dtype, weak type and (when known) sharding."""

    shape: tuple[int, ...]
    dtype: np.dtype
    weak_type: bool = False
    sharding: Any = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def __str__(self) -> str:
        dims = _dims_of(self.sharding, len(self.shape))
        parts = []
        for size, axes in zip(self.shape, dims):
            if not axes:
                parts.append(str(size))
            elif len(axes) == 1:
                parts.append(f"{size}@{axes[0]}")
            else:
                parts.append(f"{size}@({','.join(axes)})")
        return f"{dtypes.canonical(self.dtype)}[{','.join(parts)}]"

    def __repr__(self) -> str:
        return f"ShapedArray({self})"


def _dims_of(sharding: Any, ndim: int) -> tuple[DimSpec, ...]:
    if isinstance(sharding, NamedSharding):
        return sharding.dim_axes(ndim)
    return ((),) * ndim


def typeof(x: Any) -> ShapedArray:
    """JAX's jax.typeof: the abstract value of x (an Array, a traced value, a numpy value)."""
    t = type_of(x)
    sharding = None
    if isinstance(x, Tracer):
        sharding = _traced_sharding(x)
    elif hasattr(x, "sharding") and isinstance(x.sharding, Sharding):
        sharding = x.sharding
    return ShapedArray(tuple(t.shape), dtypes.to_numpy(t.dtype), t.weak, sharding)


def _traced_sharding(x: Tracer) -> Any:
    """The NamedSharding factor propagation gives x in its trace (None: no mesh in sight)."""
    known: dict[int, Any] = dict(getattr(x.trace, "param_shardings", {}) or {})
    mesh = next((s.mesh for s in known.values() if isinstance(s, NamedSharding)), None)
    mesh = mesh or current_mesh()
    if mesh is None:
        return None
    types = dict(zip(x.trace.params, x.trace.param_types))
    dims = {
        vid: s.dim_axes(len(types[vid].shape))
        for vid, s in known.items()
        if isinstance(s, NamedSharding) and vid in types
    }
    for op in x.trace.ops:
        outs = _propagate(op, dims, [types.get(v) for v in op.inputs])
        types.update(zip(op.outputs, op.types))
        for vid, d in zip(op.outputs, outs):
            if d is not None:
                dims[vid] = d
        if x.id in op.outputs:
            break
    found = dims.get(x.id, ((),) * x.ndim)
    return NamedSharding(mesh, _user_spec(found))


def _propagate(op: Any, dims: dict[int, tuple[DimSpec, ...]], in_types: list[Any]) -> list[Any]:
    """Result dim shardings of one op from its operands' (factor signature; see module doc)."""
    attr = op.attrs.get("sharding")
    if REGISTRY[op.name].has(Trait.ANNOTATION) and isinstance(attr, ShardingAttr):
        return [attr.dims]  # an annotation that spells its layout: sharding_constraint
    if not any(i in dims for i in op.inputs):
        return [None] * len(op.outputs)
    if any(t is None for t in in_types):
        return [None] * len(op.outputs)
    factors = REGISTRY[op.name].factors(*in_types, **op.attrs)
    if factors is None:  # reshape & co. have hand-written rules: no sharding reported
        return [None] * len(op.outputs)
    axes_of: dict[str, DimSpec] = {}
    for vid, names in zip(op.inputs, factors.operands):
        for factor, axes in zip(names, dims.get(vid, ())):
            if factor is not None and axes and factor not in axes_of:
                axes_of[factor] = axes
    outs = []
    for names in factors.results:
        used: set[str] = set()
        result: list[DimSpec] = []
        for factor in names:
            axes = () if factor is None or factor in factors.reduce else axes_of.get(factor, ())
            axes = () if used & set(axes) else axes
            used |= set(axes)
            result.append(axes)
        outs.append(tuple(result))
    return outs


def _user_spec(dims: tuple[DimSpec, ...]) -> PartitionSpec:
    return PartitionSpec(*[None if not d else d[0] if len(d) == 1 else tuple(d) for d in dims])


# -- placement --------------------------------------------------------------------------------


def as_sharding(s: Any, what: str = "sharding") -> Any:
    """A Sharding from a Sharding, a bare P (the current mesh's), a Device, or None."""
    if s is None or isinstance(s, Sharding):
        return s
    if isinstance(s, Device):
        return SingleDeviceSharding(s)
    if isinstance(s, PartitionSpec):
        mesh = current_mesh()
        if mesh is None:
            raise ShardingError(
                f"{what} {s!r} is a bare PartitionSpec but no mesh is set",
                describe_loc(),
                "call it under `with spmd.set_mesh(mesh):`, or pass NamedSharding(mesh, spec)",
            )
        return NamedSharding(mesh, s)
    raise ShardingError(
        f"{what} must be a NamedSharding, a PartitionSpec or a Device, got {s!r}",
        describe_loc(),
        "use NamedSharding(mesh, P('data', None))",
    )


def _is_spec_leaf(s: Any) -> bool:
    return s is None or isinstance(s, (Sharding, PartitionSpec, Device))


def device_put(
    x: Any, device: Any = None, *, src: Any = None, donate: bool = False, may_alias: Any = None
) -> Any:
    """JAX's jax.device_put: x (a pytree) onto a Sharding, a bare P under a mesh, a Device,
    or a pytree of those matching x; padded per shard when the shape does not divide."""
    from spmd import dispatch

    if _is_spec_leaf(device):
        sharding = as_sharding(device, "device_put's sharding")
        return _on_device(dispatch.device_put(x, sharding), sharding)
    leaves, spec_tree = optree.tree_flatten(
        device, is_leaf=_is_spec_leaf, none_is_leaf=True, namespace="spmd"
    )
    shardings = [as_sharding(s, "device_put's sharding") for s in leaves]
    return dispatch.device_put(x, optree.tree_unflatten(spec_tree, shardings))


def _on_device(out: Any, sharding: Any) -> Any:
    """An array put on one Device records that device (the local runtime keeps every
    single-device array in this process's memory, so only the label changes)."""
    if not isinstance(sharding, SingleDeviceSharding):
        return out

    def label(a: Any) -> Any:
        if hasattr(a, "sharding"):
            a.sharding = sharding
        return a

    return optree.tree_map(label, out, namespace="spmd")


def place(
    x: Any, out_sharding: Any = None, device: Any = None, *, explicit_only: bool = True
) -> Any:
    """The result of a creation or contraction function, laid out as asked (JAX's
    `out_sharding=` / `device=`): a constraint inside jit, a device_put outside it."""
    target = out_sharding if out_sharding is not None else device
    if target is None:
        return x
    sharding = as_sharding(target, "out_sharding")
    if out_sharding is not None and explicit_only and isinstance(sharding, NamedSharding):
        _check_explicit(sharding)
    if current_trace() is None:
        return device_put(x, sharding)
    if isinstance(sharding, SingleDeviceSharding):
        return x  # inside jit a program runs on its mesh; one device means no constraint
    from spmd.lax import with_sharding_constraint

    return with_sharding_constraint(x, sharding)


def _check_explicit(sharding: NamedSharding) -> None:
    """JAX's rule: out_sharding may only name Explicit mesh axes."""
    types = dict(zip(sharding.mesh.axis_names, sharding.mesh.axis_types))
    for dim in sharding.dim_axes(len(sharding.spec)):
        for axis in dim:
            if types[axis] != AxisType.Explicit:
                raise ShardingError(
                    f"out_sharding {sharding.spec!r} names mesh axis {axis!r}, which is "
                    f"{types[axis].value}",
                    describe_loc(),
                    "make the axis Explicit (make_mesh(..., axis_types=(AxisType.Explicit, "
                    "...)), or spmd.sharding.explicit_axes), or use reshard / "
                    "with_sharding_constraint",
                )


def reshard(x: Any, out_shardings: Any) -> Any:
    """JAX's jax.reshard: x (a pytree) laid out as out_shardings (a sharding, a bare P, or a
    matching pytree), inside jit or outside it."""
    if _is_spec_leaf(out_shardings):
        return optree.tree_map(
            lambda v: place(v, out_shardings, explicit_only=False), x, namespace="spmd"
        )
    specs = optree.tree_flatten(
        out_shardings, is_leaf=_is_spec_leaf, none_is_leaf=True, namespace="spmd"
    )[0]
    leaves, tree = optree.tree_flatten(x, namespace="spmd")
    if len(specs) != len(leaves):
        raise ShardingError(
            f"reshard got {len(leaves)} arrays but {len(specs)} shardings",
            describe_loc(),
            "give one sharding, or a pytree matching x",
        )
    return optree.tree_unflatten(
        tree, [place(v, s, explicit_only=False) for v, s in zip(leaves, specs)]
    )


def _with_axis_types(
    f: Callable[..., Any], kind: AxisType, axes: Any, reshard_out: Any, reshard_in: Any
) -> Callable[..., Any]:
    @functools.wraps(f)
    def run(*args: Any, **kwargs: Any) -> Any:
        mesh = current_mesh()
        if mesh is None:
            raise ShardingError(
                f"{kind.value.lower()}_axes needs a mesh",
                describe_loc(),
                "call it under `with spmd.set_mesh(mesh):`",
            )
        names = mesh.axis_names if axes is None else (axes,) if isinstance(axes, str) else axes
        for name in names:
            if name not in mesh.axis_names:
                raise ShardingError(
                    f"unknown mesh axis {name!r}",
                    describe_loc(),
                    f"the mesh's axes are {mesh.axis_names!r}",
                )
        types = [kind if n in names else t for n, t in zip(mesh.axis_names, mesh.axis_types)]
        if reshard_in is not None:
            args = reshard(args, reshard_in) if len(args) != 1 else (reshard(args[0], reshard_in),)
        with mesh.with_axis_types(types):
            out = f(*args, **kwargs)
        return out if reshard_out is None else reshard(out, reshard_out)

    return run


def auto_axes(
    f: Callable[..., Any] | None = None, *, axes: Any = None, out_sharding: Any = None
) -> Any:
    """JAX's auto_axes: run f with mesh axes Auto (the compiler chooses layouts), then lay
    the result out as out_sharding."""
    if f is None:
        return functools.partial(auto_axes, axes=axes, out_sharding=out_sharding)
    return _with_axis_types(f, AxisType.Auto, axes, out_sharding, None)


def explicit_axes(
    f: Callable[..., Any] | None = None, *, axes: Any = None, in_sharding: Any = None
) -> Any:
    """JAX's explicit_axes: run f with mesh axes Explicit, its inputs laid out as
    in_sharding."""
    if f is None:
        return functools.partial(explicit_axes, axes=axes, in_sharding=in_sharding)
    return _with_axis_types(f, AxisType.Explicit, axes, None, in_sharding)

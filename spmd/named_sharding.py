"""Shardings (JAX's names): PartitionSpec, NamedSharding, SingleDeviceSharding, and the
ShardingAttr the IR carries. Pure data: imports only spmd.errors and spmd.mesh.

A NamedSharding is a Mesh plus a PartitionSpec; `dim_axes` normalizes it to one tuple of
mesh axes per dim, which is what the partitioner reasons about. The library imports them
from here; users import the public `spmd.sharding` (as jax._src.sharding_impls sits under
jax.sharding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np

from spmd.errors import ShardingError
from spmd.mesh import Device, Mesh, current_mesh


class PartitionSpec(tuple):
    """Per dim: a mesh axis name, a tuple of names (major first), or None.

    `unreduced` names axes over which the value is a pending sum (each device holds an
    addend); `reduced` names axes over which it is replicated and whose cotangent becomes
    unreduced (JAX's P(..., unreduced=, reduced=)). Values read back are always the summed
    ones: the pending sum is resolved when an array leaves the program.
    """

    unreduced: frozenset[str]
    reduced: frozenset[str]

    def __new__(
        cls, *entries: Any, unreduced: Any = frozenset(), reduced: Any = frozenset()
    ) -> Self:
        self = super().__new__(cls, entries)
        self.unreduced = _axis_set("unreduced", unreduced)
        self.reduced = _axis_set("reduced", reduced)
        return self

    def __eq__(self, other: object) -> bool:
        if not tuple.__eq__(self, other):
            return False
        return (
            getattr(other, "unreduced", frozenset()) == self.unreduced
            and getattr(other, "reduced", frozenset()) == self.reduced
        )

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        if not self.unreduced and not self.reduced:
            return tuple.__hash__(self)
        return hash((tuple(self), self.unreduced, self.reduced))

    def __reduce__(self) -> Any:
        return (_make_spec, (tuple(self), self.unreduced, self.reduced))

    def __repr__(self) -> str:
        parts = [repr(e) for e in self]
        for name in ("unreduced", "reduced"):
            axes = getattr(self, name)
            if axes:
                parts.append(f"{name}={{{', '.join(repr(a) for a in sorted(axes))}}}")
        return "P(" + ", ".join(parts) + ")"


def _make_spec(entries: tuple, unreduced: frozenset[str], reduced: frozenset[str]) -> Any:
    return PartitionSpec(*entries, unreduced=unreduced, reduced=reduced)


def _axis_set(what: str, axes: Any) -> frozenset[str]:
    axes = (axes,) if isinstance(axes, str) else axes
    try:
        found = frozenset(axes)
    except TypeError:
        raise ShardingError(
            f"P({what}={axes!r}) must be a set of mesh axis names",
            hint=f"e.g. P(None, {what}={{'data'}})",
        ) from None
    if not all(isinstance(a, str) for a in found):
        raise ShardingError(
            f"P({what}={axes!r}) must be a set of mesh axis names",
            hint=f"e.g. P(None, {what}={{'data'}})",
        )
    return found


P = PartitionSpec
DimSpec = tuple[str, ...]  # the mesh axes of one dim, major first


def normalize_spec(spec: Sequence[Any], ndim: int, mesh: Mesh) -> tuple[DimSpec, ...]:
    """One tuple of mesh axes per dim; checks names, repeats and rank."""
    if len(spec) > ndim:
        raise ShardingError(
            f"partition spec {PartitionSpec(*spec)!r} has {len(spec)} entries but the array "
            f"has rank {ndim}",
            hint="give at most one entry per dim",
        )
    out: list[DimSpec] = []
    seen: set[str] = set()
    for entry in tuple(spec) + (None,) * (ndim - len(spec)):
        axes: DimSpec = (
            ()
            if entry is None
            else (entry,)
            if isinstance(entry, str)
            else tuple(entry)
            if isinstance(entry, (tuple, list))
            else (entry,)
        )
        for axis in axes:
            if not isinstance(axis, str):
                raise ShardingError(
                    f"partition spec {PartitionSpec(*spec)!r} has the entry "
                    f"{axis!r}, which is not a mesh axis name",
                    hint=f"use axis names of the mesh {mesh.axis_names!r}, "
                    "a tuple of them, or None",
                )
            if axis not in mesh.axis_names:
                raise ShardingError(
                    f"unknown mesh axis {axis!r} in {PartitionSpec(*spec)!r}",
                    hint=f"the mesh's axes are {mesh.axis_names!r}",
                )
            if axis in seen:
                raise ShardingError(
                    f"mesh axis {axis!r} is used twice in {PartitionSpec(*spec)!r}",
                    hint="each mesh axis may shard at most one dim",
                )
            seen.add(axis)
        out.append(axes)
    return tuple(out)


class Sharding:
    """Base of shardings: how an array is laid out on devices."""

    mesh: Mesh

    def dim_axes(self, ndim: int) -> tuple[DimSpec, ...]:
        raise NotImplementedError


class NamedSharding(Sharding):
    """NamedSharding(mesh, P("data", None))."""

    def __init__(self, mesh: Mesh, spec: Any = ()):
        if not isinstance(mesh, Mesh):
            raise ShardingError(f"NamedSharding needs a Mesh, got {type(mesh).__name__}")
        self.mesh = mesh
        if not isinstance(spec, (PartitionSpec, tuple, list)):
            raise ShardingError(
                f"NamedSharding needs a PartitionSpec, got {spec!r}",
                hint="use NamedSharding(mesh, P('data', None))",
            )
        self.spec = spec if isinstance(spec, PartitionSpec) else PartitionSpec(*spec)
        normalize_spec(self.spec, len(self.spec), mesh)
        for axis in sorted(self.spec.unreduced | self.spec.reduced):
            if axis not in mesh.axis_names:
                raise ShardingError(
                    f"unknown mesh axis {axis!r} in {self.spec!r}",
                    hint=f"the mesh's axes are {mesh.axis_names!r}",
                )
        self._dims: dict[int, tuple[DimSpec, ...]] = {}

    def dim_axes(self, ndim: int) -> tuple[DimSpec, ...]:
        if ndim not in self._dims:
            self._dims[ndim] = normalize_spec(self.spec, ndim, self.mesh)
        return self._dims[ndim]

    def _key(self) -> tuple:
        return (self.mesh, tuple(self.dim_axes(len(self.spec))))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NamedSharding) or other.mesh != self.mesh:
            return False
        n = max(len(self.spec), len(other.spec))
        return self.dim_axes(n) == other.dim_axes(n)

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"NamedSharding({self.mesh!r}, {self.spec!r})"


class SingleDeviceSharding(Sharding):
    """The whole array on one device."""

    def __init__(self, device: Device | None = None):
        self.device = device or Device(0)
        self.mesh = Mesh(np.array([self.device], dtype=object), ("_single",))

    def dim_axes(self, ndim: int) -> tuple[DimSpec, ...]:
        return ((),) * ndim

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SingleDeviceSharding) and other.device == self.device

    def __hash__(self) -> int:
        return hash(("single", self.device))

    def __repr__(self) -> str:
        return f"SingleDeviceSharding({self.device!r})"


@dataclass(frozen=True)
class ShardingAttr:
    """A sharding as an IR attribute: mesh axis names and sizes plus per-dim axes."""

    axis_names: tuple[str, ...]
    axis_sizes: tuple[int, ...]
    dims: tuple[DimSpec, ...]

    def __str__(self) -> str:
        mesh = ",".join(f"{n}={s}" for n, s in zip(self.axis_names, self.axis_sizes))
        dims = ", ".join("{" + ",".join(d) + "}" for d in self.dims)
        return f"#sharding<[{mesh}] [{dims}]>"


def sharding_attr(sharding: Any, t: Any) -> ShardingAttr:
    """Check `sharding` against a value's type and freeze it for the IR."""
    if isinstance(sharding, PartitionSpec):
        mesh = current_mesh()
        if mesh is None:
            raise ShardingError(
                "with_sharding_constraint got a bare PartitionSpec outside a `with mesh:` block",
                hint="pass NamedSharding(mesh, spec)",
            )
        sharding = NamedSharding(mesh, sharding)
    if not isinstance(sharding, Sharding):
        raise ShardingError(
            f"expected a Sharding, got {type(sharding).__name__}",
            hint="use NamedSharding(mesh, P(...))",
        )
    dims = sharding.dim_axes(t.ndim)
    mesh = sharding.mesh
    return ShardingAttr(mesh.axis_names, mesh.axis_sizes, dims)

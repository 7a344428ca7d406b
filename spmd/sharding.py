"""Devices, meshes and shardings (JAX's names): pure data, no runtime.

A NamedSharding is a Mesh plus a PartitionSpec; `spec_of` normalizes it to one tuple of
mesh axes per dim, which is what the partitioner reasons about.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np

from spmd.errors import MeshError, ShardingError


@dataclass(frozen=True)
class Device:
    """One logical device of a runtime."""

    id: int
    platform: str = "cpu"
    process_index: int = 0

    def __repr__(self) -> str:
        return f"{self.platform.upper()}Device(id={self.id})"


def device_count() -> int:
    """Logical devices of the local runtime: SPMD_NUM_DEVICES (default 8)."""
    from spmd import dispatch

    return dispatch.device_count()


def devices() -> list[Device]:
    from spmd import dispatch

    return dispatch.devices()


class Mesh:
    """An n-d array of devices with a name per axis: Mesh(devices, ("data", "model"))."""

    def __init__(self, devices: Any, axis_names: Sequence[str], *, device_kind: str = "cpu",
                 topology: str | None = None):
        arr = np.asarray(devices, dtype=object)
        names = tuple(axis_names)
        if arr.ndim != len(names):
            raise MeshError(f"mesh of shape {arr.shape} needs {arr.ndim} axis names, "
                            f"got {names!r}")
        if len(set(names)) != len(names):
            raise MeshError(f"mesh axis names must be distinct, got {names!r}")
        self.devices = arr
        self.axis_names = names
        self._hash_key = (names, arr.shape, tuple(int(d.id) for d in arr.flat), device_kind)
        self.device_kind = device_kind
        self.topology = topology

    @property
    def shape(self) -> dict[str, int]:
        return dict(zip(self.axis_names, self.devices.shape))

    @property
    def axis_sizes(self) -> tuple[int, ...]:
        return tuple(self.devices.shape)

    @property
    def size(self) -> int:
        return int(self.devices.size)

    @property
    def device_ids(self) -> tuple[int, ...]:
        return tuple(int(d.id) for d in self.devices.flat)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mesh) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple:
        return self._hash_key

    def __enter__(self) -> Self:
        _mesh_stack.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _mesh_stack.pop()

    def __repr__(self) -> str:
        axes = ", ".join(f"{n!r}: {s}" for n, s in self.shape.items())
        return f"Mesh({axes})"


_mesh_stack: list[Mesh] = []


def current_mesh() -> Mesh | None:
    return _mesh_stack[-1] if _mesh_stack else None


def make_mesh(axis_shapes: Sequence[int], axis_names: Sequence[str] | None = None, *,
              device: str = "cpu", devices: Sequence[Device] | None = None,
              topology: str | None = None) -> Mesh:
    """make_mesh((2, 4), ("data", "model")): a mesh over the first devices available."""
    shape = tuple(int(s) for s in axis_shapes)
    names = tuple(axis_names) if axis_names is not None else tuple(
        ("data", "model", "pipe", "extra")[i] if i < 4 else f"axis{i}" for i in range(len(shape)))
    if any(s < 1 for s in shape):
        raise MeshError(f"mesh shape {shape} has a dim smaller than 1")
    n = math.prod(shape)
    if device.startswith("tpu-sim"):
        pool = [Device(i, "tpu_sim") for i in range(n)]
    else:
        pool = list(devices) if devices is not None else globals()["devices"]()
    if n > len(pool):
        raise MeshError(
            f"mesh {shape} needs {n} devices but only {len(pool)} are available",
            hint="set SPMD_NUM_DEVICES before importing spmd (the local runtime then "
                 "creates that many), or use a smaller mesh")
    return Mesh(np.array(pool[:n], dtype=object).reshape(shape), names, device_kind=device,
                topology=topology)


class PartitionSpec(tuple):
    """Per dim: a mesh axis name, a tuple of names (major first), or None."""

    def __new__(cls, *entries: Any) -> Self:
        return super().__new__(cls, entries)

    def __repr__(self) -> str:
        return "P(" + ", ".join(repr(e) for e in self) + ")"


P = PartitionSpec
DimSpec = tuple[str, ...]  # the mesh axes of one dim, major first


def normalize_spec(spec: Sequence[Any], ndim: int, mesh: Mesh) -> tuple[DimSpec, ...]:
    """One tuple of mesh axes per dim; checks names, repeats and rank."""
    if len(spec) > ndim:
        raise ShardingError(
            f"partition spec {PartitionSpec(*spec)!r} has {len(spec)} entries but the array "
            f"has rank {ndim}", hint="give at most one entry per dim")
    out: list[DimSpec] = []
    seen: set[str] = set()
    for entry in tuple(spec) + (None,) * (ndim - len(spec)):
        axes: DimSpec = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        for axis in axes:
            if axis not in mesh.axis_names:
                raise ShardingError(f"unknown mesh axis {axis!r} in {PartitionSpec(*spec)!r}",
                                    hint=f"the mesh's axes are {mesh.axis_names!r}")
            if axis in seen:
                raise ShardingError(f"mesh axis {axis!r} is used twice in "
                                    f"{PartitionSpec(*spec)!r}",
                                    hint="each mesh axis may shard at most one dim")
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
        self.spec = spec if isinstance(spec, PartitionSpec) else PartitionSpec(*spec)
        normalize_spec(self.spec, len(self.spec), mesh)
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
            raise ShardingError("with_sharding_constraint got a bare PartitionSpec outside a "
                                "`with mesh:` block", hint="pass NamedSharding(mesh, spec)")
        sharding = NamedSharding(mesh, sharding)
    if not isinstance(sharding, Sharding):
        raise ShardingError(f"expected a Sharding, got {type(sharding).__name__}",
                            hint="use NamedSharding(mesh, P(...))")
    dims = sharding.dim_axes(t.ndim)
    mesh = sharding.mesh
    return ShardingAttr(mesh.axis_names, mesh.axis_sizes, dims)


def env_device_count() -> int:
    return int(os.environ.get("SPMD_NUM_DEVICES", "8"))

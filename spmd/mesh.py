"""Devices and meshes (JAX's names): Mesh, make_mesh, AxisType, and the current-mesh context
(`with mesh:`, set_mesh, get_abstract_mesh). Pure data, no runtime; imports only errors.
Re-exports the mesh-group arithmetic of spmd/mesh_groups.py, whose callers import it from here.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np

from spmd import config, runtime_state
from spmd.errors import MeshError
from spmd.mesh_groups import (  # noqa: F401  (re-exported: the home callers import from)
    axis_groups,
    check_axes,
    coords_index,
    device_coords,
    group_index,
    group_key,
    group_members,
    group_size,
    mesh_coords,
)


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
    return len(devices())


def local_device_count() -> int:
    """Devices this process drives (all of them on the local runtime)."""
    installed = runtime_state.current_runtime()
    return len(devices() if installed is None else installed.local_devices())


def devices() -> list[Device]:
    """The installed runtime's devices, else the local runtime's SPMD_NUM_DEVICES."""
    found = runtime_state.known_devices()
    if found is None:
        found = runtime_state.remember_devices([Device(i) for i in range(env_device_count())])
    return found


class AxisType(enum.Enum):
    """How a mesh axis takes part in sharding (JAX's jax.sharding.AxisType).

    Explicit: an array's sharding over the axis is part of its type (`typeof(x).sharding`);
    Auto: the compiler chooses; Manual: inside shard_map, the program is per device.
    The partitioner treats Explicit and Auto alike (it propagates either way); the type
    decides what `typeof` reports and how creation functions place their results.
    """

    Auto = "Auto"
    Explicit = "Explicit"
    Manual = "Manual"

    def __repr__(self) -> str:
        return self.value


def _axis_types(given: Any, n: int, default: AxisType) -> tuple[AxisType, ...]:
    if given is None:
        return (default,) * n
    types = (
        (given,)
        if isinstance(given, AxisType)
        else tuple(given)
        if isinstance(given, (tuple, list))
        else (given,)
    )
    if len(types) != n or not all(isinstance(t, AxisType) for t in types):
        raise MeshError(
            f"axis_types {given!r} must be {n} AxisType values, one per mesh axis",
            hint="e.g. axis_types=(AxisType.Explicit,) * len(axis_names)",
        )
    return types


class Mesh:
    """An n-d array of devices with a name per axis: Mesh(devices, ("data", "model"))."""

    def __init__(
        self,
        devices: Any,
        axis_names: Sequence[str] | str,
        axis_types: Any = None,
        *,
        device_kind: str = "cpu",
        topology: str | None = None,
    ):
        arr = np.asarray(devices, dtype=object)
        names = (axis_names,) if isinstance(axis_names, str) else tuple(axis_names)
        if arr.ndim != len(names):
            raise MeshError(f"mesh of shape {arr.shape} needs {arr.ndim} axis names, got {names!r}")
        if not all(isinstance(n, str) for n in names):
            raise MeshError(
                f"mesh axis names must be strings, got {names!r}",
                hint='name each axis, e.g. ("data", "model")',
            )
        if len(set(names)) != len(names):
            raise MeshError(f"mesh axis names must be distinct, got {names!r}")
        self.devices = arr
        self.axis_names = names
        # JAX: Mesh(...) defaults to Auto axes, make_mesh(...) to Explicit ones.
        self.axis_types = _axis_types(axis_types, len(names), AxisType.Auto)
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
        return f"Mesh({axes}, axis_types={self.axis_types!r})"

    def with_axis_types(self, axis_types: Sequence[AxisType]) -> Mesh:
        """The same devices and names with other axis types (auto_axes, shard_map)."""
        return Mesh(
            self.devices,
            self.axis_names,
            tuple(axis_types),
            device_kind=self.device_kind,
            topology=self.topology,
        )

    @property
    def abstract_mesh(self) -> AbstractMesh:
        return AbstractMesh(self.axis_sizes, self.axis_names, self.axis_types)

    @property
    def empty(self) -> bool:
        return not self.axis_names


@dataclass(frozen=True)
class AbstractMesh:
    """A mesh's axis names, sizes and types without devices (JAX's AbstractMesh)."""

    axis_sizes: tuple[int, ...]
    axis_names: tuple[str, ...]
    axis_types: tuple[AxisType, ...] = ()

    @property
    def shape(self) -> dict[str, int]:
        return dict(zip(self.axis_names, self.axis_sizes))

    @property
    def size(self) -> int:
        return math.prod(self.axis_sizes)

    @property
    def empty(self) -> bool:
        return not self.axis_names

    @property
    def explicit_axes(self) -> tuple[str, ...]:
        return tuple(n for n, t in zip(self.axis_names, self.axis_types) if t == AxisType.Explicit)

    @property
    def auto_axes(self) -> tuple[str, ...]:
        return tuple(n for n, t in zip(self.axis_names, self.axis_types) if t == AxisType.Auto)

    @property
    def manual_axes(self) -> tuple[str, ...]:
        return tuple(n for n, t in zip(self.axis_names, self.axis_types) if t == AxisType.Manual)


_mesh_stack: list[Mesh] = []
_global_mesh: list[Mesh | None] = [None]  # set by set_mesh(mesh) outside any `with`


def current_mesh() -> Mesh | None:
    """The mesh of the innermost `with mesh:` / `with set_mesh(mesh):`, else set_mesh's."""
    return _mesh_stack[-1] if _mesh_stack else _global_mesh[0]


class set_mesh:
    """JAX's jax.set_mesh: `set_mesh(mesh)` sets the mesh that bare P(...) specs, shard_map
    and creation functions use; `with set_mesh(mesh):` sets it for the block only."""

    def __init__(self, mesh: Mesh | None):
        if mesh is not None and not isinstance(mesh, Mesh):
            raise MeshError(
                f"set_mesh needs a Mesh (or None), got {type(mesh).__name__}",
                hint="build one with spmd.make_mesh((2, 4), ('data', 'model'))",
            )
        self.mesh = mesh
        self.previous = _global_mesh[0]
        _global_mesh[0] = mesh

    def __enter__(self) -> Mesh | None:
        return self.mesh

    def __exit__(self, *exc: object) -> None:
        _global_mesh[0] = self.previous


use_mesh = set_mesh  # JAX's earlier name for the `with` form


def set_mesh_in_effect() -> Mesh | None:
    """The mesh of set_mesh when no `with mesh:` block overrides it: creation functions then
    place their results on it, replicated, as JAX does (a legacy `with mesh:` does not)."""
    return None if _mesh_stack else _global_mesh[0]


def get_abstract_mesh() -> AbstractMesh:
    """The current mesh's names, sizes and axis types; an empty mesh when none is set."""
    mesh = current_mesh()
    return AbstractMesh((), ()) if mesh is None else mesh.abstract_mesh


def _check_sizes(what: str, shape: Any) -> tuple[int, ...]:
    """Each entry a non-negative Python/numpy int (2.5, '2', True and -1 are refused)."""
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    try:
        entries = tuple(shape)
    except TypeError:
        raise MeshError(f"{what} must be a tuple of ints, got {shape!r}") from None
    for s in entries:
        if isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)):
            raise MeshError(
                f"{what} {entries!r} has a non-integer entry {s!r}",
                hint="give whole numbers of devices, e.g. (2, 4)",
            )
    return tuple(int(s) for s in entries)


def make_mesh(
    axis_shapes: Sequence[int],
    axis_names: Sequence[str] | None = None,
    axis_types: Any = None,
    *,
    device: str = "cpu",
    devices: Sequence[Device] | None = None,
    topology: str | None = None,
) -> Mesh:
    """make_mesh((2, 4), ("data", "model")): a mesh over the first devices available.

    As in JAX, its axes are Explicit unless axis_types says otherwise."""
    shape = _check_sizes("mesh shape", axis_shapes)
    if isinstance(axis_names, str):
        axis_names = (axis_names,)
    if axis_names is not None and (
        not isinstance(axis_names, (tuple, list)) or not all(isinstance(n, str) for n in axis_names)
    ):
        raise MeshError(
            f"axis_names must be a tuple of strings, got {axis_names!r}",
            hint='e.g. make_mesh((2, 4), ("data", "model"))',
        )
    names = (
        tuple(axis_names)
        if axis_names is not None
        else tuple(
            ("data", "model", "pipe", "extra")[i] if i < 4 else f"axis{i}"
            for i in range(len(shape))
        )
    )
    if len(names) != len(shape):
        raise MeshError(
            f"mesh shape {shape} has {len(shape)} axes but axis_names {names!r} has {len(names)}",
            hint="give one name per mesh axis",
        )
    if any(s < 1 for s in shape):
        raise MeshError(f"mesh shape {shape} has a dim smaller than 1")
    if math.prod(shape) > 1 << 20:
        raise MeshError(
            f"mesh shape {shape} asks for {math.prod(shape)} devices",
            hint="a mesh has at most 2**20 devices",
        )
    types = _axis_types(axis_types, len(shape), AxisType.Explicit)
    n = math.prod(shape)
    if device.startswith("tpu-sim"):
        pool = [Device(i, "tpu_sim") for i in range(n)]
    elif device != "cpu":
        runtime_state.check_device(
            device
        )  # gpu without cupy or a GPU: LaunchError, never a CPU run
        pool = list(devices) if devices is not None else globals()["devices"]()
    else:
        pool = list(devices) if devices is not None else globals()["devices"]()
    if n > len(pool):
        raise MeshError(
            f"mesh {shape} needs {n} devices but only {len(pool)} are available",
            hint="set SPMD_NUM_DEVICES before importing spmd (the local runtime then "
            "creates that many), or use a smaller mesh",
        )
    return Mesh(
        np.array(pool[:n], dtype=object).reshape(shape),
        names,
        types,
        device_kind=device,
        topology=topology,
    )


def env_device_count() -> int:
    return config.env("SPMD_NUM_DEVICES")

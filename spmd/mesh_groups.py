"""Mesh-group arithmetic, shared by the partitioner, the collectives, the backends and device
batching: devices are numbered row-major over the mesh shape; a collective over `axes` acts
within groups of devices that agree on every other axis, and a device's index in its group is
the row-major index of its coordinates on `axes` in the order given (major first).
Core: imports only spmd.errors; callers reach it through spmd.mesh."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np

from spmd.errors import MeshError


def check_axes(axes: str | Sequence[str], axis_names: Sequence[str]) -> tuple[str, ...]:
    """axes as a tuple of distinct names of the mesh (a single name becomes a 1-tuple)."""
    result = (axes,) if isinstance(axes, str) else tuple(axes)
    for name in result:
        if name not in axis_names:
            raise MeshError(
                f"unknown mesh axis {name!r} in collective axes {result!r}",
                hint=f"the mesh axes are {tuple(axis_names)!r}",
            )
    if len(set(result)) != len(result):
        raise MeshError(f"mesh axis used twice in collective axes {result!r}")
    return result


def mesh_coords(rank: int, mesh_shape: Sequence[int]) -> tuple[int, ...]:
    """Row-major coordinates of a device in the mesh."""
    return tuple(int(c) for c in np.unravel_index(rank, tuple(mesh_shape)))


def device_coords(axis_names: Sequence[str], mesh_shape: Sequence[int]) -> list[dict[str, int]]:
    """Every device's coordinates by axis name, in device order (row-major)."""
    return [dict(zip(axis_names, c)) for c in itertools.product(*(range(s) for s in mesh_shape))]


def coords_index(
    coords: Mapping[str, int],
    axes: Sequence[str],
    axis_names: Sequence[str],
    mesh_shape: Sequence[int],
) -> int:
    """Row-major index of coords on `axes`, in the order given (major first)."""
    index = 0
    for name in axes:
        index = index * mesh_shape[list(axis_names).index(name)] + coords[name]
    return index


def group_size(mesh_shape: Sequence[int], axis_names: Sequence[str], axes: Sequence[str]) -> int:
    """Devices in a group over axes."""
    axes = check_axes(axes, axis_names)
    return math.prod(mesh_shape[list(axis_names).index(a)] for a in axes)


def group_index(
    rank: int, mesh_shape: Sequence[int], axis_names: Sequence[str], axes: Sequence[str]
) -> int:
    """The device's index in its group over axes."""
    axes = check_axes(axes, axis_names)
    return coords_index(
        dict(zip(axis_names, mesh_coords(rank, mesh_shape))), axes, axis_names, mesh_shape
    )


def group_key(
    rank: int, mesh_shape: Sequence[int], axis_names: Sequence[str], axes: Sequence[str]
) -> int:
    """Which group over axes the device is in: its row-major index on the other axes."""
    axes = check_axes(axes, axis_names)
    others = [a for a in axis_names if a not in axes]
    return coords_index(
        dict(zip(axis_names, mesh_coords(rank, mesh_shape))), others, axis_names, mesh_shape
    )


def axis_groups(
    axis_names: Sequence[str], mesh_shape: Sequence[int], axes: Sequence[str]
) -> list[list[int]]:
    """Every group over axes (in group_key order), each its devices in group order."""
    axes = check_axes(axes, axis_names)
    names = list(axis_names)
    pos = [names.index(a) for a in axes]
    others = [i for i in range(len(mesh_shape)) if i not in pos]
    strides = [math.prod(mesh_shape[i + 1 :]) for i in range(len(mesh_shape))]
    groups = []
    for rest in itertools.product(*(range(mesh_shape[i]) for i in others)):
        base = sum(c * strides[i] for c, i in zip(rest, others))
        groups.append(
            [
                base + sum(c * strides[i] for c, i in zip(coord, pos))
                for coord in itertools.product(*(range(mesh_shape[i]) for i in pos))
            ]
        )
    return groups


def group_members(
    rank: int, mesh_shape: Sequence[int], axis_names: Sequence[str], axes: Sequence[str]
) -> list[int]:
    """The devices of rank's group over axes, in group order."""
    axes = check_axes(axes, axis_names)
    coords = list(mesh_coords(rank, mesh_shape))
    positions = [list(axis_names).index(a) for a in axes]
    sizes = tuple(mesh_shape[p] for p in positions)
    members = []
    for index in range(math.prod(sizes)):
        for position, coord in zip(positions, np.unravel_index(index, sizes)):
            coords[position] = int(coord)
        members.append(int(np.ravel_multi_index(tuple(coords), tuple(mesh_shape))))
    return members

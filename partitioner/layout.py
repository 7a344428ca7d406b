"""Host-side layout: split a global numpy array into per-device padded shards, and back."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from partitioner.spec import MeshShape, ShardSpec, shard_size
from spmd import mesh as mesh_groups


def device_coords(mesh: MeshShape) -> list[dict[str, int]]:
    """Mesh coordinates of each device, row-major (spmd.mesh: the one mesh-group arithmetic)."""
    return mesh_groups.device_coords(mesh.names, mesh.sizes)


def group_index(coords: dict[str, int], axes: Sequence[str], mesh: MeshShape) -> int:
    """The block index a device with coords holds over axes (major first)."""
    return mesh_groups.coords_index(coords, axes, mesh.names, mesh.sizes)


def shard_slices(
    shape: Sequence[int], spec: ShardSpec, mesh: MeshShape, coords: dict[str, int]
) -> tuple[slice, ...]:
    """The global index range a device holds (clipped to the array; padding is extra)."""
    out = []
    for n, axes in zip(shape, spec.dims):
        if not axes:
            out.append(slice(0, n))
            continue
        size = shard_size(n, mesh.size(axes))
        start = min(group_index(coords, axes, mesh) * size, n)
        out.append(slice(start, min(start + size, n)))
    return tuple(out)


def split(
    value: np.ndarray,
    spec: ShardSpec,
    mesh: MeshShape,
    stacked: bool = False,
) -> list[np.ndarray]:
    """One padded shard per device (padding filled with zeros). stacked: the shards are the
    rows of one [devices, *shard] buffer, which the stacked local runtime then takes as is
    instead of copying every shard into such a buffer on each call."""
    local = tuple(shard_size(n, mesh.size(a)) if a else n for n, a in zip(value.shape, spec.dims))
    coords_list = list(device_coords(mesh))
    rows = np.zeros((len(coords_list), *local), value.dtype) if stacked else None
    shards = []
    for k, coords in enumerate(coords_list):
        block = value[shard_slices(value.shape, spec, mesh, coords)]
        # rows[k, ...] keeps a 0-d row a writable view (rows[k] would be a numpy scalar).
        shard = rows[k, ...] if rows is not None else np.zeros(local, value.dtype)
        shard[tuple(slice(0, s) for s in block.shape)] = block
        shards.append(shard)
    return shards


def assemble(
    shards: Sequence[np.ndarray], shape: Sequence[int], spec: ShardSpec, mesh: MeshShape
) -> np.ndarray:
    """The global array from per-device shards; of replicated copies, device 0's wins (JAX)."""
    out = np.empty(tuple(shape), dtype=shards[0].dtype)
    for coords, shard in reversed(list(zip(device_coords(mesh), shards))):
        where = shard_slices(shape, spec, mesh, coords)
        out[where] = shard[tuple(slice(0, s.stop - s.start) for s in where)]
    return out

"""Arrays on devices: device_put splits a value into shards; assemble, split and
addressable_shards move between a mesh Array's global value and its shards (through the
installed runtime, which may hold the shards in other processes). Importing it registers
these with spmd.array (`use_placement`), so every maker of a mesh Array imports it."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from partitioner import layout
from spmd.array import Array, Shard, global_value, use_placement
from spmd.errors import ShardingError
from spmd.named_sharding import NamedSharding, Sharding, SingleDeviceSharding
from spmd.runtime_state import current_runtime, runtime_api
from spmd.specs import mesh_shape, spec_of
from spmd.tracing import type_of
from spmd.tree import tree_flatten, tree_unflatten


def assemble(array: Any) -> np.ndarray:
    sharding = array.sharding
    installed = current_runtime()
    if installed is not None:
        return runtime_api().assemble(installed, array)
    return layout.assemble(
        array._shards, array.shape, spec_of(sharding, array.ndim), mesh_shape(sharding.mesh)
    )


def split(array: Any) -> list[np.ndarray]:
    sharding = array.sharding
    return layout.split(
        array._value,
        spec_of(sharding, array.ndim),
        mesh_shape(sharding.mesh),
        stacked=current_runtime() is None,
    )


def addressable_shards(array: Any) -> list[Any]:
    sharding = array.sharding
    mesh = mesh_shape(sharding.mesh)
    spec = spec_of(sharding, array.ndim)
    out = []
    installed = current_runtime()
    buffers = (
        installed.fetch(array.device_buffers(), sharding.mesh)
        if installed
        else array.device_buffers()
    )
    for device, coords, buf in zip(sharding.mesh.devices.flat, layout.device_coords(mesh), buffers):
        if buf is None:
            continue
        index = layout.shard_slices(array.shape, spec, mesh, coords)
        out.append(Shard(device, index, buf[tuple(slice(0, s.stop - s.start) for s in index)]))
    return out


def device_put(x: Any, sharding: Any = None) -> Any:
    """Place x (an array or a pytree of them) on devices as `sharding` (one sharding, or a
    matching pytree of them); uneven shapes are padded per shard."""
    leaves, treedef = tree_flatten(x)
    if treedef.num_leaves == 1 and not treedef.num_nodes > 1:
        return _device_put_one(x, sharding)
    if isinstance(sharding, Sharding) or sharding is None:
        shardings = [sharding] * len(leaves)
    else:
        shardings, _ = tree_flatten(sharding)
        if len(shardings) != len(leaves):
            raise ShardingError(
                f"device_put got {len(leaves)} arrays but {len(shardings)} shardings",
                hint="give one sharding, or a matching pytree",
            )
    return tree_unflatten(treedef, [_device_put_one(v, s) for v, s in zip(leaves, shardings)])


def _device_put_one(x: Any, sharding: Any) -> Any:
    t = type_of(x)
    value = global_value(x, t)
    if sharding is None or isinstance(sharding, SingleDeviceSharding):
        return Array(value, weak=t.weak, committed=sharding is not None)
    if not isinstance(sharding, NamedSharding):
        raise ShardingError(
            f"device_put needs a NamedSharding, got {type(sharding).__name__}",
            hint="use NamedSharding(mesh, P(...))",
        )
    # one process holds every device: shards as rows of one buffer (see layout.split)
    installed = current_runtime()
    shards = layout.split(
        value, spec_of(sharding, t.ndim), mesh_shape(sharding.mesh), stacked=installed is None
    )
    if installed is not None:
        shards = installed.put(shards, sharding.mesh)
    return Array(shards=shards, sharding=sharding, aval=t.strong(), committed=True)


use_placement(sys.modules[__name__])  # assemble, split, addressable_shards: spmd.array.Placement

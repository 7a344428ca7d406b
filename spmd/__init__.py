"""spmd: a distributed SPMD compiler and runtime for numpy-style programs.

    >>> import spmd, spmd.numpy as snp
    >>> f = spmd.jit(lambda x: snp.tanh(x) * 2)
    >>> float(f(0.5))
    0.9242343306541443
"""

from __future__ import annotations

from spmd import errors
from spmd.api import Compiled, JitFunction, Lowered, ShapeDtypeStruct, jit
from spmd.array import Array, block_until_ready
from spmd.autodiff import grad, jvp, value_and_grad, vjp
from spmd.sharding import (Device, Mesh, NamedSharding, P, PartitionSpec, SingleDeviceSharding,
                           device_count, devices, make_mesh)
from spmd.tree import tree_flatten, tree_leaves, tree_map, tree_structure, tree_unflatten

__all__ = [
    "Array", "Compiled", "Device", "JitFunction", "Lowered", "Mesh", "NamedSharding", "P",
    "PartitionSpec", "ShapeDtypeStruct", "SingleDeviceSharding", "block_until_ready",
    "device_count", "devices", "errors", "grad", "jit", "jvp", "make_mesh", "tree_flatten",
    "tree_leaves", "tree_map", "tree_structure", "tree_unflatten", "value_and_grad", "vjp",
    "device_put", "with_sharding_constraint", "nn", "shard_map", "visualize_sharding",
    "checkpoint", "optim", "random",
]

from spmd.dispatch import device_put  # noqa: E402  (lazy bridge to the runtime)
from spmd.lax import with_sharding_constraint  # noqa: E402
from spmd import nn  # noqa: E402,F401  (needs spmd.numpy)
from spmd.shard_map import shard_map  # noqa: E402
from spmd.visualize import visualize_sharding  # noqa: E402
from spmd import checkpoint, optim, random  # noqa: E402,F401
from spmd import sim  # noqa: E402,F401  (the TPU simulator API: spmd.sim.abstract())

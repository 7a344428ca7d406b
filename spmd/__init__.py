"""spmd: a distributed SPMD compiler and runtime for numpy-style programs.

    >>> import spmd, spmd.numpy as snp
    >>> f = spmd.jit(lambda x: snp.tanh(x) * 2)
    >>> float(f(0.5))
    0.9242343306541443

JAX's names map one to one (`spmd.jit`, `spmd.vmap`, `spmd.shard_map`, `spmd.set_mesh`...).
One name is shared: `spmd.checkpoint` is the save/restore module (orbax's job in JAX), and
calling it, `spmd.checkpoint(f, policy=...)`, is `spmd.remat(f, policy=...)`, JAX's
`jax.checkpoint`, so code written for JAX keeps working with only its imports changed.
"""

from __future__ import annotations

from spmd import errors
from spmd.api import Compiled, JitFunction, Lowered, ShapeDtypeStruct, jit
from spmd.array import Array, block_until_ready
from spmd.autodiff import grad, jvp, value_and_grad, vjp
from spmd.explicit import ShapedArray, auto_axes, device_put, explicit_axes, reshard, typeof
from spmd.distributed import (
    launch_mesh,
    local_devices,
    make_array_from_callback,
    make_array_from_process_local_data,
    process_count,
    process_index,
)
from spmd.jacobian import device_get, eval_shape, hessian, jacfwd, jacrev
from spmd.jaxpr import make_jaxpr
from spmd.lax import with_sharding_constraint
from spmd.remat import checkpoint_name, checkpoint_policies, remat
from spmd.mesh import local_device_count
from spmd.sharding import (
    AbstractMesh,
    AxisType,
    Device,
    Mesh,
    NamedSharding,
    P,
    PartitionSpec,
    SingleDeviceSharding,
    device_count,
    devices,
    get_abstract_mesh,
    make_mesh,
    set_mesh,
)
from spmd.shard_map import shard_map
from spmd.pipeline_grad import pipeline, pipeline_value_and_grad
from spmd.autoshard import AUTO  # jit(f, in_shardings=AUTO)
from spmd.tree import tree_flatten, tree_leaves, tree_map, tree_structure, tree_unflatten
from spmd.visualize import visualize_sharding
from spmd.vmap import vmap

# Modules users reach as spmd.<name>; they import spmd.numpy, so they come last.
from spmd import checkpoint, distributed, nn, optim, random, sim  # isort: skip
from spmd import debug, scipy, sharding  # isort: skip
from spmd.config import config  # isort: skip
from spmd import tree as tree_util  # isort: skip  (JAX's jax.tree_util; spmd.tree is jax.tree)


class _CheckpointModule(type(checkpoint)):
    """spmd.checkpoint: the save/restore module, and callable as JAX's jax.checkpoint."""

    def __call__(self, fun: object = None, **options: object) -> object:
        return remat(fun, **options)


checkpoint.__class__ = _CheckpointModule

__all__ = [
    "AbstractMesh", "AxisType", "ShapedArray", "auto_axes", "debug", "explicit_axes",
    "get_abstract_mesh", "make_jaxpr", "reshard", "scipy", "set_mesh", "sharding", "typeof",
    "vmap", "config", "tree_util", "device_get", "eval_shape", "hessian", "jacfwd", "jacrev",
    "local_device_count",
    "Array", "Compiled", "Device", "JitFunction", "Lowered", "Mesh", "NamedSharding", "P",
    "PartitionSpec", "ShapeDtypeStruct", "SingleDeviceSharding", "block_until_ready",
    "checkpoint", "device_count", "device_put", "devices", "distributed", "errors", "grad",
    "jit", "jvp", "launch_mesh", "local_devices", "make_array_from_callback",
    "make_array_from_process_local_data", "process_count", "process_index",
    "make_mesh", "nn", "optim", "random", "shard_map", "sim", "tree_flatten", "tree_leaves",
    "tree_map", "tree_structure", "tree_unflatten", "value_and_grad", "vjp",
    "visualize_sharding", "with_sharding_constraint",
    "checkpoint_name", "checkpoint_policies", "remat", "pipeline", "pipeline_value_and_grad",
    "AUTO",
]

"""spmd: a distributed SPMD compiler and runtime for numpy-style programs.

    >>> import spmd, spmd.numpy as snp
    >>> f = spmd.jit(lambda x: snp.tanh(x) * 2)
    >>> float(f(0.5))
    0.9242343306541443

JAX's names map one to one (`spmd.jit`, `spmd.vmap`, `spmd.shard_map`, `spmd.set_mesh`...).
One name is shared: `spmd.checkpoint` is the save/restore module (orbax's job in JAX), and
calling it, `spmd.checkpoint(f, policy=...)`, is `spmd.remat(f, policy=...)`, JAX's
`jax.checkpoint`, so code written for JAX keeps working with only its imports changed.

This file is the facade and imports nothing at import time: each name loads its module on
first use, so the compiler core (`spmd.ir`, `spmd.ops`, `spmd.tracing`, `spmd.passes`...)
and the pipeline packages import without the public API (docs/architecture.md).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

# name -> the module that defines it; `spmd.<name>` loads that module on first use.
_FROM = {
    "Compiled": "api",
    "JitFunction": "api",
    "Lowered": "api",
    "ShapeDtypeStruct": "api",
    "jit": "api",
    "Array": "array",
    "block_until_ready": "array",
    "grad": "autodiff",
    "jvp": "autodiff",
    "value_and_grad": "autodiff",
    "vjp": "autodiff",
    "ShapedArray": "explicit",
    "auto_axes": "explicit",
    "device_put": "explicit",
    "explicit_axes": "explicit",
    "reshard": "explicit",
    "typeof": "explicit",
    "launch_mesh": "distributed",
    "local_devices": "distributed",
    "make_array_from_callback": "distributed",
    "make_array_from_process_local_data": "distributed",
    "process_count": "distributed",
    "process_index": "distributed",
    "device_get": "jacobian",
    "eval_shape": "jacobian",
    "hessian": "jacobian",
    "jacfwd": "jacobian",
    "jacrev": "jacobian",
    "make_jaxpr": "jaxpr",
    "with_sharding_constraint": "lax",
    "checkpoint_name": "remat",
    "checkpoint_policies": "remat",
    "remat": "remat",
    "local_device_count": "mesh",
    "AbstractMesh": "sharding",
    "AxisType": "sharding",
    "Device": "sharding",
    "Mesh": "sharding",
    "NamedSharding": "sharding",
    "P": "sharding",
    "PartitionSpec": "sharding",
    "SingleDeviceSharding": "sharding",
    "device_count": "sharding",
    "devices": "sharding",
    "get_abstract_mesh": "sharding",
    "make_mesh": "sharding",
    "set_mesh": "sharding",
    "shard_map": "shard_map",
    "pipeline": "pipeline_grad",
    "pipeline_value_and_grad": "pipeline_grad",
    "AUTO": "autoshard",  # jit(f, in_shardings=AUTO)
    "tree_flatten": "tree",
    "tree_leaves": "tree",
    "tree_map": "tree",
    "tree_structure": "tree",
    "tree_unflatten": "tree",
    "visualize_sharding": "visualize",
    "vmap": "vmap",
    "enable_x64": "config",
}
# Modules users reach as spmd.<name> (tree_util is JAX's jax.tree_util; spmd.tree is jax.tree).
_MODULES = {
    "checkpoint": "checkpoint",
    "config": "config",
    "debug": "debug",
    "distributed": "distributed",
    "errors": "errors",
    "nn": "nn",
    "optim": "optim",
    "random": "random",
    "scipy": "scipy",
    "sharding": "sharding",
    "sim": "sim",
    "tree_util": "tree",
}
# Names that are a function of the facade and also a submodule's name: the function keeps it.
_SHADOWED = frozenset(
    name for name, module in _FROM.items() if name == module or name == "pipeline"
)


def __getattr__(name: str) -> Any:
    if name in _FROM:
        # spmd.numpy installs Array's and Tracer's operators (spmd/array_methods.py), which
        # every public function may hand the user: load it with the first public name.
        importlib.import_module("spmd.numpy")
        value = getattr(importlib.import_module(f"spmd.{_FROM[name]}"), name)
    elif name in _MODULES:
        value = importlib.import_module(f"spmd.{_MODULES[name]}")
    else:
        try:
            value = importlib.import_module(f"spmd.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"spmd.{name}":
                raise
            raise AttributeError(f"module 'spmd' has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(__all__) | set(_FROM) | set(_MODULES))


class _CheckpointModule(types.ModuleType):
    """spmd.checkpoint: the save/restore module, and callable as JAX's jax.checkpoint."""

    def __call__(self, fun: object = None, **options: object) -> object:
        return __getattr__("remat")(fun, **options)


class _Package(types.ModuleType):
    """The import system binds spmd.<sub> when a submodule loads; where <sub> names a facade
    function too (spmd.vmap, spmd.shard_map ...) the function keeps the name, and the
    checkpoint module becomes callable however it was first imported."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and value.__name__ == f"spmd.{name}":
            if name in _SHADOWED:
                return
            if name == "checkpoint":
                value.__class__ = _CheckpointModule
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = [
    "AbstractMesh",
    "AxisType",
    "ShapedArray",
    "auto_axes",
    "debug",
    "explicit_axes",
    "get_abstract_mesh",
    "make_jaxpr",
    "reshard",
    "scipy",
    "set_mesh",
    "sharding",
    "typeof",
    "vmap",
    "config",
    "enable_x64",
    "tree_util",
    "device_get",
    "eval_shape",
    "hessian",
    "jacfwd",
    "jacrev",
    "local_device_count",
    "Array",
    "Compiled",
    "Device",
    "JitFunction",
    "Lowered",
    "Mesh",
    "NamedSharding",
    "P",
    "PartitionSpec",
    "ShapeDtypeStruct",
    "SingleDeviceSharding",
    "block_until_ready",
    "checkpoint",
    "device_count",
    "device_put",
    "devices",
    "distributed",
    "errors",
    "grad",
    "jit",
    "jvp",
    "launch_mesh",
    "local_devices",
    "make_array_from_callback",
    "make_array_from_process_local_data",
    "process_count",
    "process_index",
    "make_mesh",
    "nn",
    "optim",
    "random",
    "shard_map",
    "sim",
    "tree_flatten",
    "tree_leaves",
    "tree_map",
    "tree_structure",
    "tree_unflatten",
    "value_and_grad",
    "vjp",
    "visualize_sharding",
    "with_sharding_constraint",
    "checkpoint_name",
    "checkpoint_policies",
    "remat",
    "pipeline",
    "pipeline_value_and_grad",
    "AUTO",
]

"""The public `spmd.sharding` (JAX's jax.sharding): shardings, meshes, and reshard, auto_axes,
explicit_axes, where JAX users look for them. Names only: each is defined in spmd.named_sharding,
spmd.mesh or spmd.explicit. The library imports those modules, never this one, since it loads
spmd.explicit and with it the tracer (docs/architecture.md).
"""

from __future__ import annotations

from spmd.explicit import auto_axes, explicit_axes, reshard
from spmd.mesh import (
    AbstractMesh,
    AxisType,
    Device,
    Mesh,
    current_mesh,
    device_count,
    devices,
    env_device_count,
    get_abstract_mesh,
    make_mesh,
    set_mesh,
    use_mesh,
)
from spmd.named_sharding import (
    DimSpec,
    NamedSharding,
    P,
    PartitionSpec,
    Sharding,
    ShardingAttr,
    SingleDeviceSharding,
    normalize_spec,
    sharding_attr,
)

__all__ = [
    "AbstractMesh",
    "AxisType",
    "Device",
    "DimSpec",
    "Mesh",
    "NamedSharding",
    "P",
    "PartitionSpec",
    "Sharding",
    "ShardingAttr",
    "SingleDeviceSharding",
    "auto_axes",
    "current_mesh",
    "device_count",
    "devices",
    "env_device_count",
    "explicit_axes",
    "get_abstract_mesh",
    "make_mesh",
    "normalize_spec",
    "reshard",
    "set_mesh",
    "sharding_attr",
    "use_mesh",
]

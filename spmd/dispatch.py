"""The names older code imports from spmd.dispatch; each lives in the module of its job:

spmd/runtime_state.py  the installed runtime and its devices (the one global state), and
                       runtime_api(), the API's door to launch.runtime
spmd/executables.py    compile_graph: one-device and partitioned executables
spmd/placement.py      device_put, and an Array's shards <-> its global value
spmd/specs.py          API shardings <-> partitioner specs
spmd/eager.py          one op outside jit on sharded Arrays
launch/simulate.py     the TPU simulator as the API reaches it
"""

from __future__ import annotations

from spmd.executables import (  # noqa: F401
    ShardedExecutable,
    SingleDeviceExecutable,
    compile_graph,
    find_mesh,
)
from spmd.mesh import device_count, devices  # noqa: F401
from spmd.placement import addressable_shards, assemble, device_put, split  # noqa: F401
from spmd.runtime_state import (  # noqa: F401
    check_device,
    current_runtime,
    runtime,
    runtime_api,
    set_runtime,
    simulator,
)
from spmd.specs import mesh_shape, reshard_moved, spec_of, user_spec  # noqa: F401


def pipeline_timeline(
    schedule: object, forward_s: float, backward_s: float, shift_s: float = 0.0
) -> object:
    """A pipeline schedule table laid on the TPU simulator's timeline (spmd.pipeline_sim)."""
    return simulator().pipeline_timeline(schedule, forward_s, backward_s, shift_s)

"""The one bridge from the public API to the rest of the pipeline (partitioner,
backends, launch). Imported lazily by spmd.api and spmd.array, never by the core.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from spmd import dtypes
from spmd.errors import ShardingError
from spmd.ir.graph import Graph
from spmd.ir.types import TensorType
from spmd.sharding import (
    Device,
    Mesh,
    NamedSharding,
    PartitionSpec,
    Sharding,
    ShardingAttr,
    SingleDeviceSharding,
    env_device_count,
    make_mesh,
)

_DEVICES: list[Device] | None = None


def device_count() -> int:
    return len(devices())


def devices() -> list[Device]:
    global _DEVICES
    if _DEVICES is None:
        _DEVICES = [Device(i) for i in range(env_device_count())]
    return _DEVICES


def mesh_shape(mesh: Mesh) -> Any:
    from partitioner.spec import MeshShape

    return MeshShape(tuple(mesh.axis_names), tuple(mesh.axis_sizes))


def spec_of(sharding: Sharding, ndim: int) -> Any:
    from partitioner.spec import ShardSpec

    return ShardSpec(tuple(sharding.dim_axes(ndim)))


# -- compiling -----------------------------------------------------------------------------

class SingleDeviceExecutable:
    """A program with no mesh: runs on one device (the backend the registry picks)."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.program = runtime_api().compile_single_device(graph)

    def __call__(self, args: Sequence[Any]) -> list[Any]:
        from spmd.array import Array

        if (abstract := _simulated(self, args)) is not None:
            return abstract
        outs = self.program([_global(a, t) for a, t in zip(args, self.graph.param_types)])
        return [Array(o, weak=t.weak) for o, t in zip(outs, self.graph.result_types)]

    def collectives(self) -> list[Any]:
        return []

    def as_text(self) -> str:
        from spmd.ir.printer import print_graph

        return print_graph(self.graph)

    def memory_per_device(self) -> int:
        """The native backend's planned peak when it compiled the program, else liveness."""
        if hasattr(self.program, "memory_per_device"):
            return self.program.memory_per_device()
        from partitioner.memory import peak_bytes

        return peak_bytes(self.graph)

    def simulate(self, **options: Any) -> Any:
        """The TPU simulator's SimReport for one call (one chip; chip= picks it, default v5e)."""
        return simulate(self.graph, None, **options)


class ShardedExecutable:
    """A partitioned program on the local runtime's devices."""

    def __init__(self, graph: Graph, mesh: Mesh, partitioned: Any):
        self.graph = graph
        self.mesh = mesh
        self.partitioned = partitioned
        self._prepared: dict[int, tuple[Any, Any]] = {}  # id(runtime) -> (runtime, program)
        self.out_shardings = [NamedSharding(mesh, user_spec(s.dims))
                              for s in partitioned.result_specs]

    def __call__(self, args: Sequence[Any]) -> list[Any]:
        from spmd.array import Array

        if (abstract := _simulated(self, args)) is not None:
            return abstract
        per_param = [self._shards_for(a, t, spec) for a, t, spec in
                     zip(args, self.graph.param_types, self.partitioned.param_specs)]
        n = self.mesh.size
        per_device = [[shards[d] for shards in per_param] for d in range(n)]
        outs = self.prepared_on(runtime()).run(per_device)
        return [Array(shards=[outs[d][i] for d in range(n)], sharding=sharding, aval=t,
                      committed=True) for i, (t, sharding) in
                enumerate(zip(self.graph.result_types, self.out_shardings))]

    def _shards_for(self, a: Any, t: TensorType, spec: Any) -> list[np.ndarray]:
        from partitioner import layout
        from spmd.array import Array

        if isinstance(a, Array) and a._shards is not None and isinstance(
                a.sharding, NamedSharding) and a.sharding.mesh == self.mesh and \
                spec_of(a.sharding, t.ndim) == spec:
            return a._shards
        return runtime().put(layout.split(_global(a, t), spec, mesh_shape(self.mesh)), self.mesh)

    def prepared_on(self, on: Any) -> Any:
        """The per-device program as runtime `on` compiled it (once per runtime)."""
        found = self._prepared.get(id(on))
        if found is None or found[0] is not on:
            found = self._prepared[id(on)] = (on, on.compile(self.partitioned, self.mesh))
        return found[1]

    @property
    def local(self) -> Any:
        """The embedded runtime's prepared program (launch.local.LocalExecutable)."""
        return self.prepared_on(runtime_api().local_runtime())

    def collectives(self) -> list[Any]:
        return list(self.partitioned.records)

    def as_text(self) -> str:
        from spmd.ir.printer import print_graph

        return print_graph(self.partitioned.program, name="per_device")

    def memory_per_device(self) -> int:
        """The native backend's planned peak when it runs the program, else liveness."""
        kernel = getattr(self.prepared_on(runtime()), "compiled_program", lambda: None)()
        if kernel is not None:
            return kernel.memory_per_device()
        from partitioner.memory import peak_bytes

        return peak_bytes(self.partitioned.program)

    def simulate(self, **options: Any) -> Any:
        """The TPU simulator's SimReport for one call of the per-device program."""
        return simulate(self.partitioned.program, self.mesh, **options)


def simulate(program: Graph, mesh: Mesh | None, **options: Any) -> Any:
    """Simulate one call of a per-device program on the mesh's TPU slice (backends/tpu_sim)."""
    from backends.tpu_sim.abstract import simulate_program

    if mesh is None:
        return simulate_program(program, (), (), **options)
    return simulate_program(program, mesh.axis_names, mesh.axis_sizes, mesh.device_kind,
                            mesh.topology, **options)


def pipeline_timeline(schedule: Any, forward_s: float, backward_s: float,
                      shift_s: float = 0.0) -> Any:
    """A pipeline schedule table laid on the TPU simulator's timeline (spmd.pipeline_sim)."""
    from backends.tpu_sim.pipeline import schedule_timeline

    return schedule_timeline(schedule, forward_s, backward_s, shift_s)


def _simulated(executable: Any, args: Sequence[Any]) -> list[Any] | None:
    """Abstract calls (spmd.sim) get ShapeDtypeStruct results; tpu-sim meshes accrue time."""
    from spmd import sim

    return sim.on_call(executable, args)


def user_spec(dims: Sequence[tuple[str, ...]]) -> PartitionSpec:
    """P('data', None) rather than P(('data',), ()); trailing replicated dims dropped."""
    entries = [None if not d else d[0] if len(d) == 1 else tuple(d) for d in dims]
    while entries and entries[-1] is None:
        entries.pop()
    return PartitionSpec(*entries)


def _global(a: Any, t: TensorType) -> np.ndarray:
    if hasattr(a, "_global_value"):
        value = a._global_value()
    else:
        value = np.asarray(a)
    want = dtypes.to_numpy(t.dtype)
    return value if value.dtype == want else value.astype(want)


def find_mesh(graph: Graph, shardings: Sequence[Any]) -> Mesh | None:
    """The mesh of the shardings the program mentions (one mesh per program)."""
    meshes = {s.mesh for s in shardings if isinstance(s, NamedSharding)}
    if len(meshes) > 1:
        raise ShardingError(f"one program uses several meshes: {sorted(map(repr, meshes))}",
                            hint="put every input on the same Mesh")
    if meshes:
        return meshes.pop()
    for op in graph.walk():
        attr = op.attrs.get("sharding")
        if isinstance(attr, ShardingAttr):
            return make_mesh(attr.axis_sizes, attr.axis_names)
        if op.name == "shard_map":
            return make_mesh(op.attrs["axis_sizes"], op.attrs["axis_names"])
    return None


def compile_graph(graph: Graph, in_shardings: Sequence[Any], out_shardings: Sequence[Any],
                  donate: Sequence[bool]) -> Any:
    mesh = find_mesh(graph, list(in_shardings) + list(out_shardings))
    if mesh is None:
        return SingleDeviceExecutable(graph)
    from partitioner.partition import partition

    def dims(s: Any, t: TensorType) -> Any:
        if s is None or isinstance(s, SingleDeviceSharding):
            return None
        if isinstance(s, PartitionSpec):
            s = NamedSharding(mesh, s)
        return tuple(s.dim_axes(t.ndim))

    in_dims = [dims(s, t) for s, t in zip(in_shardings, graph.param_types)]
    out_dims = [dims(s, t) for s, t in zip(out_shardings, graph.result_types)]
    partitioned = partition(graph, mesh_shape(mesh), in_dims, out_dims)
    return ShardedExecutable(graph, mesh, partitioned)


# -- arrays --------------------------------------------------------------------------------

def assemble(array: Any) -> np.ndarray:
    from partitioner import layout

    sharding = array.sharding
    if isinstance(sharding, SingleDeviceSharding):
        return array._shards[0]
    if _RUNTIME is not None:
        return runtime_api().assemble(_RUNTIME, array)
    return layout.assemble(array._shards, array.shape, spec_of(sharding, array.ndim),
                           mesh_shape(sharding.mesh))


def split(array: Any) -> list[np.ndarray]:
    from partitioner import layout

    sharding = array.sharding
    if isinstance(sharding, SingleDeviceSharding):
        return [array._value]
    return layout.split(array._value, spec_of(sharding, array.ndim), mesh_shape(sharding.mesh),
                        stacked=_RUNTIME is None)


def addressable_shards(array: Any) -> list[Any]:
    from partitioner import layout
    from spmd.array import Shard

    sharding = array.sharding
    if isinstance(sharding, SingleDeviceSharding):
        value = array._global_value()
        return [Shard(sharding.device, tuple(slice(0, n) for n in value.shape), value)]
    mesh = mesh_shape(sharding.mesh)
    spec = spec_of(sharding, array.ndim)
    out = []
    buffers = _RUNTIME.fetch(array.device_buffers(), sharding.mesh) if _RUNTIME else \
        array.device_buffers()
    for device, coords, buf in zip(sharding.mesh.devices.flat, layout.device_coords(mesh),
                                   buffers):
        if buf is None:
            continue
        index = layout.shard_slices(array.shape, spec, mesh, coords)
        out.append(Shard(device, index, buf[tuple(slice(0, s.stop - s.start) for s in index)]))
    return out


def device_put(x: Any, sharding: Any = None) -> Any:
    """Place x (an array or a pytree of them) on devices as `sharding` (one sharding, or a
    matching pytree of them); uneven shapes are padded per shard."""
    from spmd.tree import tree_flatten, tree_unflatten

    leaves, treedef = tree_flatten(x)
    if treedef.num_leaves == 1 and not treedef.num_nodes > 1:
        return _device_put_one(x, sharding)
    if isinstance(sharding, Sharding) or sharding is None:
        shardings = [sharding] * len(leaves)
    else:
        shardings, _ = tree_flatten(sharding)
        if len(shardings) != len(leaves):
            raise ShardingError(f"device_put got {len(leaves)} arrays but {len(shardings)} "
                                f"shardings", hint="give one sharding, or a matching pytree")
    return tree_unflatten(treedef, [_device_put_one(v, s) for v, s in zip(leaves, shardings)])


def _device_put_one(x: Any, sharding: Any) -> Any:
    from partitioner import layout
    from spmd.array import Array
    from spmd.tracing import type_of

    t = type_of(x)
    value = _global(x, t)
    if sharding is None or isinstance(sharding, SingleDeviceSharding):
        return Array(value, weak=t.weak, committed=sharding is not None)
    if not isinstance(sharding, NamedSharding):
        raise ShardingError(f"device_put needs a NamedSharding, got {type(sharding).__name__}",
                            hint="use NamedSharding(mesh, P(...))")
    # one process holds every device: shards as rows of one buffer (see layout.split)
    shards = layout.split(value, spec_of(sharding, t.ndim), mesh_shape(sharding.mesh),
                          stacked=_RUNTIME is None)
    if _RUNTIME is not None:
        shards = _RUNTIME.put(shards, sharding.mesh)
    return Array(shards=shards, sharding=sharding, aval=t.strong(), committed=True)


# -- eager ops on sharded arrays -----------------------------------------------------------

_EAGER_CACHE: dict[Any, Any] = {}


def eager_op(opdef: Any, inputs: Sequence[Any], in_types: Sequence[TensorType],
             out_types: Sequence[TensorType], attrs: dict[str, Any]) -> Any:
    """One op outside jit: on sharded inputs it runs partitioned (results stay sharded)."""
    from spmd.array import Array
    from spmd.ir.graph import Attrs
    from spmd.tracing import _run_reference_eager, bind

    sharded = [x for x in inputs if isinstance(x, Array) and isinstance(x.sharding, NamedSharding)]
    if not sharded or opdef.name in ("shard_map",):
        return _run_reference_eager(opdef, inputs, in_types, out_types, attrs)
    key = (opdef.name, Attrs(attrs), tuple(in_types))
    jitted = _EAGER_CACHE.get(key)
    if jitted is None:
        from spmd.api import jit

        name = opdef.name
        jitted = jit(lambda *xs: bind(name, *xs, **attrs))
        jitted.__name__ = name
        _EAGER_CACHE[key] = jitted
    return jitted(*inputs)


# -- multi-process runtimes (mpi, ray): spmd.distributed installs one ----------------------

_RUNTIME: Any = None  # a launch.runtime.Runtime, or None for the local runtime


def current_runtime() -> Any:
    """The installed multi-process runtime, or None (the embedded one)."""
    return _RUNTIME


def runtime() -> Any:
    """The runtime that runs sharded programs: the installed one, else the embedded one."""
    return _RUNTIME if _RUNTIME is not None else runtime_api().local_runtime()


def set_runtime(runtime: Any) -> None:
    """Routes sharded execution and arrays through runtime (None: back to the local one)."""
    global _RUNTIME, _DEVICES
    _RUNTIME = runtime
    _DEVICES = None if runtime is None else runtime.devices()


def check_device(device_kind: str) -> None:
    """LaunchError unless this machine can run device_kind (the backend registry's answer)."""
    runtime_api().check_device(device_kind)


def runtime_api() -> Any:
    """launch.runtime: the runtimes, the API's door to the backend registry, global arrays."""
    import launch.runtime

    return launch.runtime


def _install() -> None:
    from spmd import tracing

    tracing.eager_hook = eager_op


_install()


def reshard_moved(mesh: Mesh, t: TensorType, src: Any, partial: Any, dst: Any) -> float:
    """Bytes per device the resharding planner moves for src (pending sum over `partial`)
    -> dst (partitioner/cost.py's dry run): spmd.autoshard prices its edges with it."""
    from partitioner.cost import reshard_moved as moved
    from partitioner.spec import ShardSpec

    return moved(mesh_shape(mesh), t, ShardSpec(tuple(src), tuple(partial)), tuple(dst))

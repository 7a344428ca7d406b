"""Compiling a traced global program: no mesh -> one device; a mesh -> partitioned, run by
the installed runtime (spmd.runtime_state). spmd.api calls `compile_graph`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from partitioner import layout
from partitioner.memory import peak_bytes
from partitioner.partition import partition
from spmd import placement  # noqa: F401  (registers how mesh Arrays, made here, read shards)
from spmd.array import Array, global_value
from spmd.errors import ShardingError
from spmd.ir.graph import Graph
from spmd.ir.printer import print_graph
from spmd.ir.types import TensorType
from spmd.mesh import Mesh, make_mesh
from spmd.named_sharding import NamedSharding, PartitionSpec, ShardingAttr, SingleDeviceSharding
from spmd.runtime_state import runtime, runtime_api, simulator
from spmd.sim_calls import on_call  # abstract calls, tpu-sim time (spmd.sim)
from spmd.specs import mesh_shape, spec_of, user_spec


class SingleDeviceExecutable:
    """A program with no mesh: runs on one device (the backend the registry picks)."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.program = runtime_api().compile_single_device(graph)

    def __call__(self, args: Sequence[Any]) -> list[Any]:
        if (abstract := on_call(self, args)) is not None:
            return abstract
        outs = self.program([global_value(a, t) for a, t in zip(args, self.graph.param_types)])
        return [Array(o, weak=t.weak) for o, t in zip(outs, self.graph.result_types)]

    def collectives(self) -> list[Any]:
        return []

    def as_text(self) -> str:
        return print_graph(self.graph)

    def memory_per_device(self) -> int:
        """The native backend's planned peak when it compiled the program, else liveness."""
        if hasattr(self.program, "memory_per_device"):
            return self.program.memory_per_device()
        return peak_bytes(self.graph)

    def simulate(self, **options: Any) -> Any:
        """The TPU simulator's SimReport for one call (one chip; chip= picks it, default v5e)."""
        return simulator().simulate(self.graph, None, **options)


class ShardedExecutable:
    """A partitioned program on the runtime's devices."""

    def __init__(self, graph: Graph, mesh: Mesh, partitioned: Any):
        self.graph = graph
        self.mesh = mesh
        self.partitioned = partitioned
        self._prepared: dict[int, tuple[Any, Any]] = {}  # id(runtime) -> (runtime, program)
        self.out_shardings = [
            NamedSharding(mesh, user_spec(s.dims)) for s in partitioned.result_specs
        ]

    def __call__(self, args: Sequence[Any]) -> list[Any]:
        if (abstract := on_call(self, args)) is not None:
            return abstract
        per_param = [
            self._shards_for(a, t, spec)
            for a, t, spec in zip(args, self.graph.param_types, self.partitioned.param_specs)
        ]
        n = self.mesh.size
        per_device = [[shards[d] for shards in per_param] for d in range(n)]
        outs = self.prepared_on(runtime()).run(per_device)
        return [
            Array(shards=[outs[d][i] for d in range(n)], sharding=sharding, aval=t, committed=True)
            for i, (t, sharding) in enumerate(zip(self.graph.result_types, self.out_shardings))
        ]

    def _shards_for(self, a: Any, t: TensorType, spec: Any) -> list[np.ndarray]:
        if (
            isinstance(a, Array)
            and a._shards is not None
            and isinstance(a.sharding, NamedSharding)
            and a.sharding.mesh == self.mesh
            and spec_of(a.sharding, t.ndim) == spec
        ):
            return a._shards
        return runtime().put(
            layout.split(global_value(a, t), spec, mesh_shape(self.mesh)), self.mesh
        )

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
        return print_graph(self.partitioned.program, name="per_device")

    def memory_per_device(self) -> int:
        """The native backend's planned peak when it runs the program, else liveness."""
        kernel = getattr(self.prepared_on(runtime()), "compiled_program", lambda: None)()
        if kernel is not None:
            return kernel.memory_per_device()
        return peak_bytes(self.partitioned.program)

    def simulate(self, **options: Any) -> Any:
        """The TPU simulator's SimReport for one call of the per-device program."""
        return simulator().simulate(self.partitioned.program, self.mesh, **options)


def find_mesh(graph: Graph, shardings: Sequence[Any]) -> Mesh | None:
    """The mesh of the shardings the program mentions (one mesh per program)."""
    meshes = {s.mesh for s in shardings if isinstance(s, NamedSharding)}
    if len(meshes) > 1:
        raise ShardingError(
            f"one program uses several meshes: {sorted(map(repr, meshes))}",
            hint="put every input on the same Mesh",
        )
    if meshes:
        return meshes.pop()
    for op in graph.walk():
        attr = op.attrs.get("sharding")
        if isinstance(attr, ShardingAttr):
            return make_mesh(attr.axis_sizes, attr.axis_names)
        if "axis_sizes" in op.attrs:  # an op whose attributes spell its mesh (shard_map)
            return make_mesh(op.attrs["axis_sizes"], op.attrs["axis_names"])
    return None


def compile_graph(
    graph: Graph, in_shardings: Sequence[Any], out_shardings: Sequence[Any], donate: Sequence[bool]
) -> Any:
    mesh = find_mesh(graph, list(in_shardings) + list(out_shardings))
    if mesh is None:
        return SingleDeviceExecutable(graph)

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

"""The one bridge from the public API to the rest of the pipeline (partitioner,
backends, launch). Imported lazily by spmd.api, never by the compiler core.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from spmd.ir.graph import Graph
from spmd.sharding import Device, env_device_count

_DEVICES: list[Device] | None = None


def device_count() -> int:
    return len(devices())


def devices() -> list[Device]:
    global _DEVICES
    if _DEVICES is None:
        _DEVICES = [Device(i) for i in range(env_device_count())]
    return _DEVICES


class Executable:
    """A compiled program for one device: runs the graph with the reference interpreter."""

    def __init__(self, graph: Graph):
        self.graph = graph

    def __call__(self, args: Sequence[np.ndarray]) -> list[np.ndarray]:
        from spmd.interpreter import evaluate

        return evaluate(self.graph, args)


def compile_graph(graph: Graph, in_shardings: Sequence[Any], out_shardings: Sequence[Any],
                  donate: Sequence[bool]) -> Executable:
    return Executable(graph)


def assemble(array: Any) -> np.ndarray:
    shards = array._shards
    return shards[0]


def split(array: Any) -> list[np.ndarray]:
    return [array._value]


def addressable_shards(array: Any) -> list[Any]:
    from spmd.array import Shard

    value = array._global_value()
    return [Shard(devices()[0], tuple(slice(None) for _ in value.shape), value)]

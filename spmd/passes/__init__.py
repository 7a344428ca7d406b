"""Generic graph passes, registered by name; `optimize` runs the default pipeline."""

from __future__ import annotations

from spmd.ir.graph import Graph
from spmd.passes.dce import dce

PASSES = {"dce": dce}
DEFAULT_PIPELINE = ("dce",)


def optimize(graph: Graph, pipeline: tuple[str, ...] = DEFAULT_PIPELINE) -> Graph:
    for name in pipeline:
        graph = PASSES[name](graph)
    return graph

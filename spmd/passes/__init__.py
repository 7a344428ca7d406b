"""Generic graph passes, registered by name; `optimize` runs a pipeline of them.

With SPMD_VERIFY=1 the verifier runs after every pass and names the pass that broke
the graph. The passes read op facts from spmd.ops.opdef (not the package), so that op
families may use them while spmd.ops loads; the package is imported here so that the
registry is filled before any pass runs.
"""

from __future__ import annotations

from collections.abc import Callable

from spmd import config
from spmd.ir.graph import Graph
from spmd.passes.constant_fold import constant_fold
from spmd.passes.cse import cse
from spmd.passes.dce import dce
from spmd.passes.inline_remat import inline_remat
from spmd.passes.scan_merge import scan_merge
from spmd.passes.simplify import simplify

Pass = Callable[[Graph], Graph]
PASSES: dict[str, Pass] = {
    "simplify": simplify,
    "constant_fold": constant_fold,
    "scan_merge": scan_merge,
    "cse": cse,
    "dce": dce,
    "inline_remat": inline_remat,
}
DEFAULT_PIPELINE = ("simplify", "constant_fold", "scan_merge", "cse", "inline_remat", "dce")


def optimize(
    graph: Graph,
    pipeline: tuple[str, ...] | list[str] = DEFAULT_PIPELINE,
    verify: bool | None = None,
) -> Graph:
    """Run the named passes in order; verify after each when `verify` or SPMD_VERIFY=1."""
    if verify is None:
        verify = config.env("SPMD_VERIFY")
    for name in pipeline:
        if name not in PASSES:
            from spmd.errors import SpmdError

            raise SpmdError(f"unknown pass {name!r}", hint=f"use one of {', '.join(PASSES)}")
        graph = PASSES[name](graph)
        if verify:
            from spmd.ir.verifier import verify as verify_graph

            verify_graph(graph, name)
    return graph

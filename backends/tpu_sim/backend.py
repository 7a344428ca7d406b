"""The `tpu-sim` device kind's entry in backends.registry: a simulated TPU runs its numerics on
the host (so programs give real answers) while spmd.sim accrues the cost model's time; the
host backend that runs them is the registry's choice for a host program of that size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from backends import registry
from backends.registry import Capabilities, Executable, RunOp
from spmd.ir.graph import Graph


class TpuSimBackend:
    """Numerics on the host (cpu or interpreter backend, by size or SPMD_BACKEND)."""

    kind = "tpu-sim"
    capabilities = Capabilities(native=False, batched=True, donation=False, host_arrays=True)

    def unavailable(self) -> str | None:
        return None

    def compile(
        self,
        graph: Graph,
        run_op: RunOp | None = None,
        *,
        donate: Sequence[bool] | None = None,
        num_threads: int | None = None,
        device_id: int = 0,
        communicator: Any = None,
    ) -> Executable:
        host = registry.get(registry.choose("cpu", graph))
        return host.compile(graph, run_op, donate=donate, num_threads=num_threads)


BACKEND = TpuSimBackend()

"""The CPU backend's entry in backends.registry: native kernels through llvmlite, BLAS dots,
planned buffers and donation. Imports only the compiler core and this package.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from backends.cpu.executable import Executable
from backends.registry import Capabilities, RunOp
from spmd.ir.graph import Graph


class CpuBackend:
    """Host CPU, native code (llvmlite): the `cpu` device kind's backend."""

    kind = "cpu"
    capabilities = Capabilities(native=True, batched=True, donation=True, host_arrays=True)

    def unavailable(self) -> str | None:
        try:
            import llvmlite.binding  # noqa: F401
        except ImportError as err:
            return f"llvmlite does not import ({err})"
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
        """`run_op(op, inputs)` runs what the backend does not lower (collectives through the
        runtime's communicator); `num_threads` (or $SPMD_CPU_THREADS) bounds kernel threads."""
        return Executable(graph, run_op, donate, num_threads)


BACKEND = CpuBackend()

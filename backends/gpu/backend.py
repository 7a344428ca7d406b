"""The GPU backend's entry in backends.registry: fused CUDA C through cupy, cuBLAS dots, and
collectives on device arrays through the runtime's device communicator (NCCL). cupy is
imported when a program is compiled or availability is asked, never at import.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from backends.gpu import device
from backends.gpu.executable import Executable
from backends.registry import Capabilities, RunOp
from spmd.errors import LaunchError
from spmd.ir.graph import Graph


class GpuBackend:
    """One NVIDIA GPU per device (device_id picks it)."""

    kind = "gpu"
    # collectives="device": run_op receives collectives' device (cupy) arrays, for NCCL
    capabilities = Capabilities(
        native=True, batched=False, donation=True, host_arrays=False, collectives="device"
    )

    def unavailable(self) -> str | None:
        try:
            device.cupy_module()
        except LaunchError as err:
            return err.problem
        return None

    def device_count(self) -> int:
        """GPUs this process sees (0 without cupy or a driver)."""
        try:
            return int(device.cupy_module().cuda.runtime.getDeviceCount())
        except LaunchError:
            return 0

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
        """`run_op` gets host arrays for ops not lowered yet; with `communicator` given (a
        collectives.nccl.NcclCommunicator-like object, used by run_op) collectives get device
        arrays instead."""
        return Executable(
            graph, run_op, donate, device_id, device_collectives=communicator is not None
        )


BACKEND = GpuBackend()

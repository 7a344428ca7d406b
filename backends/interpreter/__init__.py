"""The `interpreter` backend: the numpy reference interpreter (spmd.interpreter) behind the
same Backend interface as the compiled ones. Nothing to compile, so it is what small programs
use (a native compile costs more than it saves) and the oracle the other backends are tested
against. Imports only the compiler core.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from backends.registry import Capabilities, RunOp
from spmd.interpreter import evaluate
from spmd.ir.graph import Graph


class InterpretedProgram:
    """A per-device program run by the reference interpreter, op by op (numpy)."""

    def __init__(self, graph: Graph, run_op: RunOp | None = None) -> None:
        self.graph = graph
        self.run_op = run_op
        self.kernels: list[Any] = []

    def __call__(self, args: Sequence[Any]) -> list[np.ndarray]:
        return evaluate(self.graph, args, self.run_op)

    def memory_per_device(self) -> int:
        """Every value's bytes (the interpreter plans no reuse)."""
        return sum(t.nbytes for t in self.graph.types.values())


class InterpreterBackend:
    """numpy op by op on the host."""

    kind = "interpreter"
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
    ) -> InterpretedProgram:
        return InterpretedProgram(graph, run_op)


BACKEND = InterpreterBackend()

"""The GPU executable: the shared fusion groups and memory plan (backends/common), with each kernel as
CUDA C in one RawModule per program, dots through cuBLAS, cupy views, and host round trips
for ops not lowered yet. `compile_program` is the backend's entry point.

cupy is imported when an executable is built, never when this module is imported.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backends.common import memory
from backends.common.fusion import Kernel, fuse
from backends.common.loop_nest import reduce_identity
from backends.gpu import codegen, device
from backends.gpu.lower import lowering
from spmd.interpreter import run_reference
from spmd.ir.graph import Graph, Op
from spmd.ops import REGISTRY, Trait

RunOp = Callable[[Op, list[np.ndarray]], Sequence[np.ndarray]]
MAX_BLOCKS = 65535


@dataclass
class Step:
    kind: str  # "kernel" | "dot" | "view" | "const" | "fallback"
    op: Op
    kernel: Kernel | None = None
    cuda: list[codegen.CudaKernel] = field(default_factory=list)
    functions: list[Any] = field(default_factory=list)
    value: Any = None
    view: Callable[[Any], Any] | None = None  # its lowering row's view


def kernel_sources(graph: Graph) -> list[codegen.CudaKernel]:
    """The CUDA kernels of a program (no cupy needed: what the nvcc tests compile)."""
    kernels = fuse(graph)
    return [c for k in kernels for c in codegen.generate(k.spec, k.name)]


class Executable:
    """A compiled per-device program on one GPU: call it with numpy or cupy arrays."""

    def __init__(
        self,
        graph: Graph,
        run_op: RunOp | None = None,
        donate: Sequence[bool] | None = None,
        device_id: int = 0,
        device_collectives: bool = False,
    ) -> None:
        self.cp = device.cupy_module()
        self.graph = graph
        self.run_op = run_op or run_reference
        self.donate = list(donate) if donate is not None else [False] * len(graph.params)
        self.device_id = device_id
        # collectives' operands stay on the GPU: run_op calls a device communicator (NCCL)
        self.device_collectives = device_collectives
        with self.cp.cuda.Device(device_id):
            self.stream = self.cp.cuda.Stream(non_blocking=True)
            self.sm_count = self.cp.cuda.Device(device_id).attributes["MultiProcessorCount"]
            self.steps = self._schedule()
        self.kernels = [s.kernel for s in self.steps if s.kind == "kernel"]
        nbytes = {v: t.nbytes for v, t in graph.types.items()}
        self.plan = memory.plan_memory(
            list(graph.params),
            self.donate,
            list(graph.results),
            [self._uses(s) for s in self.steps],
            nbytes,
        )

    def _schedule(self) -> list[Step]:
        g, cp = self.graph, self.cp
        kernels = {k.root: k for k in fuse(g)}
        members = {id(op) for k in kernels.values() for op in k.ops}
        steps: list[Step] = []
        for i, op in enumerate(g.ops):
            if i in kernels:
                k = kernels[i]
                steps.append(Step("kernel", op, k, codegen.generate(k.spec, k.name)))
                continue
            if id(op) in members:
                continue
            row = lowering(op.name)
            if row.kind == "constant":
                value = device.to_device(cp, op.attrs["value"], op.types[0].dtype)
                steps.append(Step("const", op, value=value.reshape(op.types[0].shape)))
            elif row.kind == "cublas":
                steps.append(Step("dot", op))
            elif row.view is not None:
                steps.append(Step("view", op, view=row.view(**op.attrs)))
            else:
                steps.append(Step("fallback", op))
        cuda = [c for s in steps for c in s.cuda]
        if cuda:
            module = device.compile_module(cp, codegen.module_source(cuda), self.device_id)
            for s in steps:
                s.functions = [module.get_function(c.name) for c in s.cuda]
        return steps

    def _uses(self, step: Step) -> memory.StepUse:
        return memory.step_use(step.kind, step.op, step.kernel)

    def memory_per_device(self) -> int:
        """Planned peak bytes of live buffers (params + temporaries + results)."""
        return self.plan.peak_bytes

    # -- running -------------------------------------------------------------------------
    def __call__(self, args: Sequence[Any]) -> list[np.ndarray]:
        """Run on host or device arguments; results come back as numpy arrays."""
        outs = self.call_device(args)
        with self.cp.cuda.Device(self.device_id):
            return [
                device.to_host(self.cp, o, t.dtype) for o, t in zip(outs, self.graph.result_types)
            ]

    def call_device(self, args: Sequence[Any]) -> list[Any]:
        """Run and keep the results on the device (cupy arrays; bfloat16 as uint16 bits)."""
        g, cp = self.graph, self.cp
        if len(args) != len(g.params):
            raise ValueError(f"program takes {len(g.params)} arguments, got {len(args)}")
        with cp.cuda.Device(self.device_id), self.stream:
            buffers: list[Any] = [None] * len(self.plan.slots)
            env: dict[int, Any] = {}
            for k, (v, t, a) in enumerate(zip(g.params, g.param_types, args)):
                arr = device.to_device(cp, a, t.dtype).reshape(t.shape)
                env[v] = arr
                buffers[k] = arr.reshape(-1).view(np.uint8)
            for s, slot in enumerate(self.plan.slots):
                if slot.kind in ("temp", "result"):
                    buffers[s] = cp.empty(max(slot.nbytes, 1), np.uint8)
            for step in self.steps:
                kernel = step.kernel
                ins = [env[v] for v in (kernel.inputs if kernel else step.op.inputs)]
                outs = self._run(step, ins, buffers)
                env.update(zip(kernel.outputs if kernel else step.op.outputs, outs))
            results = [env[v] for v in g.results]
            self.stream.synchronize()
            return results

    def _array(self, v: int, buffers: list[Any]) -> Any:
        t = self.graph.types[v]
        buf = buffers[self.plan.slot_of[v]]
        return buf[: t.nbytes].view(device.device_dtype(t.dtype)).reshape(t.shape)

    def _run(self, step: Step, ins: list[Any], buffers: list[Any]) -> list[Any]:
        op, cp = step.op, self.cp
        if step.kind == "const":
            return [step.value]
        if step.kind == "view":
            return [step.view(ins[0])]
        if (
            step.kind == "fallback"
            and self.device_collectives
            and REGISTRY[op.name].has(Trait.COLLECTIVE)
        ):
            return [o.reshape(t.shape) for o, t in zip(self.run_op(op, ins), op.types)]
        if step.kind == "fallback":
            host = [
                device.to_host(cp, x, self.graph.types[v].dtype) for x, v in zip(ins, op.inputs)
            ]
            outs = self.run_op(op, host)
            return [
                device.to_device(cp, o, t.dtype).reshape(t.shape) for o, t in zip(outs, op.types)
            ]
        if step.kind == "dot":
            out = self._array(op.outputs[0], buffers)
            self._dot(op, ins[0], ins[1], out)
            return [out]
        outs = [self._array(v, buffers) for v in step.kernel.outputs]
        self._launch(step, [cp.ascontiguousarray(a) for a in ins], outs)
        return outs

    def _blocks(self, work: int) -> int:
        return max(1, min(math.ceil(work / codegen.BLOCK), self.sm_count * 32, MAX_BLOCKS))

    def _launch(self, step: Step, ins: list[Any], outs: list[Any]) -> None:
        spec, cp = step.kernel.spec, self.cp
        main = step.cuda[0]
        args = [*ins, *outs]
        if any(n == 0 for n in spec.domain):
            if spec.reduce is not None:
                kind, _, arg, _ = spec.reduce
                dtype = spec.arg_dtypes[arg]
                outs[-1][...] = device.to_device(
                    cp, np.full(outs[-1].shape, reduce_identity(kind, dtype)), dtype
                )
            return
        block = (codegen.BLOCK,)
        if main.strategy == "elementwise":
            grid = self._blocks(main.points // main.vec)
            step.functions[0]((grid,), block, (*args, np.int64(main.points)))
        elif main.strategy == "thread":
            step.functions[0]((self._blocks(main.points),), block, (*args, np.int64(main.points)))
        else:
            self._block_reduce(step, main, args, outs[-1])

    def _block_reduce(
        self, step: Step, main: codegen.CudaKernel, args: list[Any], out: Any
    ) -> None:
        cp, rows = self.cp, main.points
        parts = 1
        if rows < 2 * self.sm_count:
            parts = max(
                1, min(1024, main.inner // (8 * codegen.BLOCK), (4 * self.sm_count) // rows)
            )
        partial = cp.empty(rows * parts if parts > 1 else 1, device.ACC_NUMPY[main.acc_type])
        grid = max(1, min(rows * parts, MAX_BLOCKS))
        block = (codegen.BLOCK,)
        step.functions[0]((grid,), block, (*args, np.int64(rows), np.int32(parts), partial))
        if parts > 1:
            step.functions[1](
                (self._blocks(rows),), block, (partial, out, np.int64(rows), np.int32(parts))
            )

    def _dot(self, op: Op, lhs: Any, rhs: Any, out: Any) -> None:
        """dot_general as a batched GEMM [B,M,K] x [B,K,N] -> [B,M,N] written into `out`."""
        cp = self.cp
        (lc, rc), (lb, rb) = op.attrs["dimension_numbers"]
        lf = [i for i in range(lhs.ndim) if i not in lc and i not in lb]
        rf = [i for i in range(rhs.ndim) if i not in rc and i not in rb]
        batch = math.prod(lhs.shape[i] for i in lb)
        m, k = math.prod(lhs.shape[i] for i in lf), math.prod(lhs.shape[i] for i in lc)
        n = math.prod(rhs.shape[i] for i in rf)
        a = cp.ascontiguousarray(cp.transpose(lhs, (*lb, *lf, *lc))).reshape(batch, m, k)
        b = cp.ascontiguousarray(cp.transpose(rhs, (*rb, *rc, *rf))).reshape(batch, k, n)
        in_dtype = self.graph.types[op.inputs[0]].dtype
        device.gemm(cp, a, b, out.reshape(batch, m, n), in_dtype, op.types[0].dtype)


def compile_program(
    graph: Graph,
    run_op: RunOp | None = None,
    *,
    device_id: int = 0,
    donate: Sequence[bool] | None = None,
    device_collectives: bool = False,
) -> Executable:
    """Compile a per-device program for GPU `device_id` (same contract as the cpu backend's).

    `run_op(op, inputs)` executes ops the backend does not lower (collectives, control flow)
    on host arrays; `donate[i]` lets param i's buffer be reused. Raises spmd.errors.LaunchError
    when cupy or a GPU is absent.
    """
    return Executable(graph, run_op, donate, device_id, device_collectives)

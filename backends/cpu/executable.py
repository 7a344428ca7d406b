"""The CPU executable: a schedule of fused native kernels, BLAS dots, numpy views and
fallback ops over planned buffers. `compile_program` is the backend's entry point.

Imports only the compiler core (spmd.ir, spmd.ops, spmd.dtypes, spmd.interpreter).
"""

from __future__ import annotations

import ctypes
import itertools
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backends.common import memory
from backends.common.fusion import Kernel, fuse
from backends.common.loop_nest import reduce_identity
from backends.cpu import allocator, blas, cache
from backends.cpu.attention import run_native
from backends.cpu.codegen import accumulator_dtype, build_module
from backends.cpu.dots import DotThreads, use_blas_threads
from backends.cpu.lower import lowering
from backends.cpu.result_pool import ResultPool
from backends.cpu.spin_pool import native_address, spin_pool
from spmd import config, dtypes
from spmd.interpreter import run_reference
from spmd.ir.graph import Graph, Op, subgraphs

RunOp = Callable[[Op, list[np.ndarray]], Sequence[np.ndarray]]
# Below this many elements a kernel runs on the calling thread. Chunks go to workers that
# spin between chunks (spin_pool.py), a ~10 us handoff: the 2x4 block step ran 24 -> 20 ms
# with this threshold down from 2^18 (a sleeping pool's wake-up cost more than it saved).
SPLIT_MIN_ELEMENTS = 1 << 15
SPLIT_REDUCE_MIN_ELEMENTS = 1 << 15  # reduces over every dim (per-thread partials)


def default_threads() -> int:
    """SPMD_CPU_THREADS, else OMP_NUM_THREADS (our launchers set 1 where ranks share the
    cores: a rank's spinning workers would take another rank's core), else every core."""
    threads = config.env("SPMD_CPU_THREADS")
    if threads is not None:
        return threads
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return os.cpu_count() or 1


@dataclass
class Step:
    kind: str  # "kernel" | "dot" | "view" | "const" | "scan" | "native" | "fallback"
    op: Op
    kernel: Kernel | None = None
    fn: Any = None
    value: np.ndarray | None = None
    chunks: list[tuple[int, int]] = field(default_factory=list)
    partials: bool = False  # a reduce over every dim, split into per-thread partials
    empty: bool = False
    reduce_mode: str = ""  # spec.reduce_mode, worked out once
    pointers: Any = None  # the ctypes array type of the kernel's argument pointers
    dot_threads: DotThreads | None = None
    address: int = 0  # the kernel's native entry point, for the spinning workers
    view: Callable[[np.ndarray], np.ndarray] | None = None  # its lowering row's view


class Executable:
    """A compiled per-device program: call it with numpy arrays, get numpy arrays."""

    def __init__(
        self,
        graph: Graph,
        run_op: RunOp | None = None,
        donate: Sequence[bool] | None = None,
        num_threads: int | None = None,
        blas_threads: bool | None = None,
    ) -> None:
        self.graph = graph
        self.run_op = run_op or run_reference
        self.donate = list(donate) if donate is not None else [False] * len(graph.params)
        self.num_threads = num_threads or default_threads()
        # the program's parallelism: the BLAS's threads in its dots, or our workers in its
        # dots and kernels (dots.use_blas_threads); a scan body keeps its program's
        self.blas_threads = use_blas_threads(_dots(graph)) if blas_threads is None else blas_threads
        allocator.tune()
        self._results = ResultPool()
        self.steps = self._schedule()
        self.kernels = [s.kernel for s in self.steps if s.kind == "kernel"]
        self.cache_hits = 0
        for step in self.steps:
            if step.kind == "kernel":
                step.fn, _, hit = cache.compile_kernel(_builder(step.kernel))
                self.cache_hits += hit
                self._prepare(step)
        nbytes = {v: t.nbytes for v, t in graph.types.items()}
        self.plan = memory.plan_memory(
            list(graph.params),
            self.donate,
            list(graph.results),
            [self._uses(s) for s in self.steps],
            nbytes,
        )
        self._local = threading.local()
        self._param_dtypes = [dtypes.to_numpy(t.dtype) for t in graph.param_types]

    def _schedule(self) -> list[Step]:
        g = self.graph
        kernels = {k.root: k for k in fuse(g)}
        members = {id(op) for k in kernels.values() for op in k.ops}
        steps = []
        for i, op in enumerate(g.ops):
            if i in kernels:
                steps.append(Step("kernel", op, kernels[i]))
                continue
            if id(op) in members:
                continue
            row = lowering(op.name)
            if row.kind == "constant":
                value = np.asarray(op.attrs["value"], dtype=dtypes.to_numpy(op.types[0].dtype))
                steps.append(Step("const", op, value=value))
            elif row.kind == "blas":
                blas.prime()
                steps.append(
                    Step("dot", op, dot_threads=DotThreads(self.num_threads, self.blas_threads))
                )
            elif row.kind == "loop":
                steps.append(Step("scan", op))
            elif row.view is not None:
                steps.append(Step("view", op, view=row.view(**op.attrs)))
            else:
                steps.append(Step("native" if row.kind == "native" else "fallback", op))
        return steps

    def _uses(self, step: Step) -> memory.StepUse:
        return memory.step_use(step.kind, step.op, step.kernel)

    def memory_per_device(self) -> int:
        """Planned peak bytes of live buffers (params + temporaries + results)."""
        return self.plan.peak_bytes

    # -- running -------------------------------------------------------------------------
    def __call__(
        self,
        args: Sequence[Any],
        into: Sequence[np.ndarray | None] | None = None,
    ) -> list[np.ndarray]:
        """Runs the program; into[k], where given, is a C-contiguous array of result k's type
        that receives it (computed there directly where its step allows, else copied)."""
        g = self.graph
        if len(args) != len(g.params):
            raise ValueError(f"program takes {len(g.params)} arguments, got {len(args)}")
        dests: dict[int, np.ndarray] = {}
        for v, dest in zip(g.results, into or ()):
            if dest is not None:
                dests.setdefault(v, dest)
        env: dict[int, np.ndarray] = {}
        for v, dtype, a in zip(g.params, self._param_dtypes, args):
            ok = type(a) is np.ndarray and a.dtype == dtype and a.flags.c_contiguous
            env[v] = a if ok else np.asarray(a, dtype=dtype, order="C")  # keeps 0-d
        temps = self._temps()
        for step in self.steps:
            kernel = step.kernel
            if step.kind == "kernel":
                ins = [env[v] for v in kernel.inputs]
                outs = [self._output(v, env, temps, dests) for v in kernel.outputs]
                self._run_kernel(step, ins, outs)
                env.update(zip(kernel.outputs, outs))
                continue
            op = step.op
            ins = [env[v] for v in op.inputs]
            if step.kind == "const":
                outs = [step.value]
            elif step.kind == "view":
                outs = [step.view(ins[0])]
            elif step.kind == "dot":
                outs = [self._output(op.outputs[0], env, temps, dests)]
                step.dot_threads.run(op, ins[0], ins[1], outs[0])
            elif step.kind == "scan":
                outs = self._run_scan(step, ins)
            elif step.kind == "native":
                outs = run_native(op, ins)
            else:
                outs = list(self.run_op(op, ins))
            env.update(zip(op.outputs, outs))
        results = [env[v] for v in g.results]
        for k, dest in enumerate(into or ()):
            if dest is not None and results[k] is not dest:
                np.copyto(dest, results[k])
                results[k] = dest
        return results

    def _run_scan(self, step: Step, ins: list[np.ndarray]) -> list[np.ndarray]:
        """A scan loop in Python around its body compiled once (native kernels per step)."""
        a = step.op.attrs
        if step.fn is None:
            step.fn = Executable(
                a["body"], self.run_op, num_threads=self.num_threads, blas_threads=self.blas_threads
            )
        nc, ncar, length = a["num_consts"], a["num_carry"], a["length"]
        consts = ins[:nc]
        carry = ins[nc : nc + ncar]
        xs = ins[nc + ncar :]
        ys = [np.empty(t.shape, dtypes.to_numpy(t.dtype)) for t in step.op.types[ncar:]]
        for i in reversed(range(length)) if a["reverse"] else range(length):
            into = [None] * ncar + [y[i, ...] for y in ys]  # each step's ys land in place
            outs = step.fn([*consts, *carry, *(x[i] for x in xs)], into)
            carry = [np.array(c) for c in outs[:ncar]]  # results may be reused buffers
        return [*carry, *ys]

    def _temps(self) -> dict[int, np.ndarray]:
        """This thread's arrays of temporaries (slots reused across calls), made once."""
        temps = getattr(self._local, "temps", None)
        if temps is not None:
            return temps
        pool = {
            s: np.empty(slot.nbytes, np.uint8)
            for s, slot in enumerate(self.plan.slots)
            if slot.kind == "temp"
        }
        temps = {}
        for v, s in self.plan.slot_of.items():
            if s in pool:
                t = self.graph.types[v]
                temps[v] = pool[s][: t.nbytes].view(dtypes.to_numpy(t.dtype)).reshape(t.shape)
        self._local.temps = temps
        self._local.addresses = {id(a): address(a) for a in temps.values() if a.size}
        return temps

    def _output(
        self,
        v: int,
        env: dict[int, np.ndarray],
        temps: dict[int, np.ndarray],
        dests: dict[int, np.ndarray],
    ) -> np.ndarray:
        """The planned buffer of value v: a temporary, the caller's array for a result, a
        donated param's buffer or a new result."""
        found = temps.get(v)
        if found is None:
            found = dests.get(v)
        if found is not None:
            return found
        t = self.graph.types[v]
        slot = self.plan.slots[self.plan.slot_of[v]]
        if slot.kind != "param":
            return self._results.take(v, t.shape, dtypes.to_numpy(t.dtype))
        base = env[self.graph.params[slot.param]].reshape(-1).view(np.uint8)
        return base[: t.nbytes].view(dtypes.to_numpy(t.dtype)).reshape(t.shape)

    def _run_kernel(self, step: Step, ins: list[np.ndarray], outs: list[np.ndarray]) -> None:
        spec = step.kernel.spec
        args = [a if a.flags.c_contiguous else np.ascontiguousarray(a) for a in ins] + outs
        if step.empty:
            if spec.reduce is not None:
                kind, dtype = spec.reduce[0], spec.arg_dtypes[spec.reduce[2]]
                np.copyto(outs[-1], reduce_identity(kind, dtype), casting="unsafe")
            return
        if step.reduce_mode == "memory":
            kind, dtype = spec.reduce[0], spec.arg_dtypes[spec.reduce[2]]
            target = outs[-1]
            acc_dtype = dtypes.to_numpy(accumulator_dtype(dtype))
            if (
                acc_dtype == target.dtype
                and target.flags.c_contiguous
                and not any(np.may_share_memory(target, a) for a in args[:-1])
            ):
                target.fill(reduce_identity(kind, dtype))  # accumulate in place: no copy
                self._launch(step, args)
                return
            acc = np.full(target.shape, reduce_identity(kind, dtype), acc_dtype)
            args[-1] = acc
            self._launch(step, args)
            np.copyto(target, acc, casting="unsafe")
            return
        if step.partials:
            self._run_split_reduce(step, args)
            return
        self._launch(step, args)

    def _launch(self, step: Step, args: list[np.ndarray]) -> None:
        known = self._local.addresses
        pointers = step.pointers(*[known.get(id(a)) or address(a) for a in args])
        where = ctypes.addressof(pointers)
        chunks = step.chunks
        if len(chunks) == 1:
            step.fn(chunks[0][0], chunks[0][1], where)
            return
        spin_pool(self.num_threads).run(step.fn, step.address, chunks, [where] * len(chunks))

    def _run_split_reduce(self, step: Step, args: list[np.ndarray]) -> None:
        """A reduce over every dim: each thread reduces a slice into its own partial, then
        the partials are combined (sums may be reassociated, as in one thread)."""
        target = args[-1]
        partials = np.empty(len(step.chunks), target.dtype)
        addresses = [address(a) for a in args[:-1]]
        arrays = [
            (ctypes.c_void_p * len(args))(*addresses, partials[k:].ctypes.data)
            for k in range(len(step.chunks))
        ]
        spin_pool(self.num_threads).run(
            step.fn, step.address, step.chunks, [ctypes.addressof(a) for a in arrays]
        )
        combine = _COMBINE[step.kernel.spec.reduce[0]]
        target.reshape(-1)[0] = combine.reduce(partials, dtype=partials.dtype)

    def _chunks(self, spec: Any, split_reduce: bool = False) -> list[tuple[int, int]]:
        outer = spec.domain[0] if spec.domain else 1
        size = int(np.prod(spec.domain)) if spec.domain else 1
        least = SPLIT_REDUCE_MIN_ELEMENTS if split_reduce else SPLIT_MIN_ELEMENTS
        n = min(self.num_threads, outer, max(1, size // least))
        if n <= 1 or self.blas_threads or not (spec.splittable or split_reduce):
            return [(0, outer)]
        bounds = np.linspace(0, outer, n + 1).astype(np.int64)
        return [(int(a), int(b)) for a, b in itertools.pairwise(bounds) if b > a]

    def _prepare(self, step: Step) -> None:
        """Per-step launch facts fixed at compile time: thread chunks, split reduces."""
        spec = step.kernel.spec
        step.empty = any(n == 0 for n in spec.domain)
        reduce_dtype = spec.arg_dtypes[spec.reduce[2]] if spec.reduce else ""
        step.partials = (
            spec.reduce_mode == "trailing"
            and bool(spec.domain)
            and not any(spec.reduce[3])
            and reduce_dtype not in HALF
        )
        step.chunks = self._chunks(spec, step.partials)
        step.reduce_mode = spec.reduce_mode
        step.pointers = ctypes.c_void_p * len(spec.arg_dtypes)
        step.address = native_address(step.fn)
        step.partials = step.partials and len(step.chunks) > 1


def _dots(graph: Graph) -> list[tuple[Op, Any, Any]]:
    """Every dot of the graph and of its sub-graphs (scan bodies), with its operand types."""
    found = []
    for op in graph.ops:
        if lowering(op.name).kind == "blas":
            found.append((op, graph.types[op.inputs[0]], graph.types[op.inputs[1]]))
        for sub in subgraphs(op):
            found.extend(_dots(sub))
    return found


def address(a: np.ndarray) -> int:
    """The data pointer of a contiguous array (a writable buffer export is ~3x cheaper than
    a.ctypes.data)."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(a))
    except (TypeError, ValueError, BufferError):
        return a.ctypes.data


HALF = ("bfloat16", "float16")
_COMBINE = {
    "sum": np.add,
    "prod": np.multiply,
    "max": np.maximum,
    "min": np.minimum,
    "and": np.logical_and,
    "or": np.logical_or,
}


def _builder(kernel: Kernel) -> Callable[[str], Any]:
    return lambda name: build_module(kernel.spec, name)


def compile_program(
    graph: Graph,
    run_op: RunOp | None = None,
    *,
    donate: Sequence[bool] | None = None,
    num_threads: int | None = None,
) -> Executable:
    """Compile a per-device program for the host CPU.

    `run_op(op, inputs)` executes ops the backend does not lower (collectives, control
    flow); `donate[i]` lets param i's buffer be reused; `num_threads` (or
    $SPMD_CPU_THREADS) bounds kernel threads. Which backend runs a program (this one, or
    the interpreter for small ones) is backends.registry.choose's decision, not this one's.
    """
    return Executable(graph, run_op, donate, num_threads)

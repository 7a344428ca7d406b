"""Stacked execution: all devices' shards stacked on a leading device axis, so each op of
the per-device program runs once instead of once per device (shard shapes are equal on
every device: uneven dims are padded).

Batched path (a backend with capabilities.batched, compiled natively by the cpu backend):
the program is batched over the device axis (launch/batching.py) and compiled once: fused
kernels and batched matmuls cover every device, collectives are reshapes and reductions.
Numpy path (the interpreter backend, or a program that cannot be batched): each op is one
numpy call on the stacked arrays, a collective is numpy over the device axis, and anything
else (per-device starts, sub-graphs) runs per device. Which backend: backends.registry.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from threadpoolctl import ThreadpoolController

from backends import registry
from launch.batched_collectives import run_stacked, unbucket
from launch.batching import Batched, NotBatchable, batch_program, run_per_device
from spmd import dtypes
from spmd.interpreter import run_reference
from spmd.ir.graph import Attrs, Op, subgraphs
from spmd.ops import REGISTRY
from spmd.ops.collective import COLLECTIVES
from spmd.spmd_interpreter import axis_groups, run_collective_lockstep

BLAS_THREADS = 1
# Below this many bytes per shard np.stack's copy is cheaper than checking for a view.
RESTACK_MIN_BYTES = 1 << 14


@functools.cache
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()


def stack_shards(shards: Sequence[Any]) -> np.ndarray:
    """The shards stacked on a new leading axis. When they already are consecutive rows of
    one array (the previous step's stacked result, split per device) and are not tiny,
    that array is returned as a view instead of copying every parameter on every step."""
    first = shards[0]
    if (type(first) is np.ndarray and first.nbytes >= RESTACK_MIN_BYTES
            and first.base is not None and first.flags.c_contiguous):
        base, start, size = first.base, _data_address(first), first.nbytes
        if all(type(s) is np.ndarray and s.base is base and s.dtype == first.dtype
               and s.shape == first.shape and s.flags.c_contiguous
               and _data_address(s) == start + k * size for k, s in enumerate(shards)):
            return np.lib.stride_tricks.as_strided(
                first, (len(shards), *first.shape), (size, *first.strides))
    return np.stack(shards)


def _data_address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def _shift(dims: Sequence[int]) -> tuple[int, ...]:
    return tuple(d + 1 for d in dims)


def _with(op: Op, **attrs: Any) -> Op:
    return Op(op.name, op.inputs, op.outputs, op.types, Attrs({**op.attrs, **attrs}), op.loc)


def _attrs_for_batch(op: Op, n: int) -> Op | None:
    """The same op on inputs with a leading device dim, or None when attrs cannot say it."""
    a = op.attrs
    name = op.name
    if name in ("broadcast_in_dim",):
        return _with(op, shape=(n,) + tuple(a["shape"]),
                     broadcast_dimensions=(0,) + _shift(a["broadcast_dimensions"]))
    if name == "reshape":
        return _with(op, new_sizes=(n,) + tuple(a["new_sizes"]))
    if name == "transpose":
        return _with(op, permutation=(0,) + _shift(a["permutation"]))
    if name == "reduce":
        return _with(op, axes=_shift(a["axes"]))
    if name in ("argmax", "argmin", "cumsum"):
        return _with(op, axis=a["axis"] + 1)
    if name == "dot_general":
        (lc, rc), (lb, rb) = a["dimension_numbers"]
        return _with(op, dimension_numbers=((_shift(lc), _shift(rc)),
                                            ((0,) + _shift(lb), (0,) + _shift(rb))))
    if name == "slice":
        return _with(op, start_indices=(0,) + tuple(a["start_indices"]),
                     limit_indices=(n,) + tuple(a["limit_indices"]),
                     strides=(1,) + tuple(a["strides"]))
    if name == "pad":
        return _with(op, padding_config=((0, 0, 0),) + tuple(a["padding_config"]))
    if name == "concatenate":
        return _with(op, dimension=a["dimension"] + 1)
    if name == "rev":
        return _with(op, dimensions=_shift(a["dimensions"]))
    if name in _ELEMENTWISE:
        return op
    return None


_ELEMENTWISE = {
    "exp", "log", "log1p", "expm1", "tanh", "logistic", "sin", "cos", "tan", "sqrt", "rsqrt",
    "erf", "abs", "sign", "floor", "ceil", "round", "is_finite", "rem", "pow", "atan2", "max",
    "min", "eq", "ne", "lt", "le", "gt", "ge", "and", "or", "xor", "not", "shift_left",
    "shift_right", "add", "sub", "mul", "div", "neg", "select", "convert_element_type",
    "stop_gradient",
}


class StackedProgram:
    """A per-device program prepared for stacked execution on a mesh."""

    def __init__(self, program: Any, axis_names: Sequence[str], mesh_shape: Sequence[int],
                 native: bool | None = None, backend: str | None = None):
        """backend: the registry's kind that compiles the batched program (native=True is
        'cpu', False 'interpreter'; neither: registry.choose for the cpu device kind)."""
        self.program = program
        self.axis_names = tuple(axis_names)
        self.mesh_shape = tuple(mesh_shape)
        self.n = math.prod(mesh_shape)
        self.steps: list[tuple[str, Op]] = []
        self.constants: dict[int, np.ndarray] = {}  # values that need no input, made once
        self.batched: Batched | None = None
        self.kernel: Any = None
        if backend is None and native is not None:
            backend = "cpu" if native else "interpreter"
        self.backend = backend or registry.choose("cpu", program, copies=self.n)
        native = registry.get(self.backend).capabilities.native
        loops = any(s.name in COLLECTIVES for op in program.ops for sub in subgraphs(op)
                    for s in sub.walk())
        if native or loops:  # collectives inside loops run only in the batched program
            self._compile_batched(native)
        if self.kernel is not None or loops:
            return
        for op in unbucket(program).ops:
            kind, planned = self._plan(op)
            if kind == "replicate":
                self.constants.update(zip(op.outputs, self._replicate(op, [])))
                continue
            self.steps.append((kind, planned))

    @property
    def native(self) -> bool:
        return self.kernel is not None

    def _compile_batched(self, native: bool) -> None:
        """One batched program, compiled by the backend (natively by cpu) or interpreted
        (numpy, op by op); `kernel` stays None when the program is not batchable."""
        try:
            self.batched = batch_program(self.program, self.axis_names, self.mesh_shape)
        except NotBatchable:
            return
        kind = self.backend if native else "interpreter"
        self.kernel = registry.get(kind).compile(self.batched.graph, self._run_op,
                                                 num_threads=os.cpu_count() or 1)

    def _run_op(self, op: Op, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Ops of the batched program the backend does not run: per device, or numpy."""
        original = self.batched.per_device.get(op.outputs[0]) if self.batched else None
        if original is None:
            return run_reference(op, inputs)
        if original.name in COLLECTIVES:
            return [run_stacked(original, inputs[0], self.axis_names, self.mesh_shape)]
        return run_per_device(original, inputs, self.n)

    def _plan(self, op: Op) -> tuple[str, Op]:
        if op.name == "axis_index":
            return "axis_index", op
        if "group_reference" in REGISTRY[op.name].extra:
            return "collective", op
        if op.name == "constant" or op.name == "iota":
            return "replicate", op
        batched = _attrs_for_batch(op, self.n)
        if batched is None:
            return "per_device", op
        return "batched", batched

    def __call__(self, per_device_args: Sequence[Sequence[np.ndarray]]) -> list[list[np.ndarray]]:
        if self.kernel is not None:
            stacked = [stack_shards([a[k] for a in per_device_args])
                       for k in range(len(self.program.params))]
            # One BLAS thread: numpy's batched matmul runs one small gemm per device, and a
            # multi-threaded BLAS syncs on each (measured 4x slower on 2 shared cores).
            with _blas_controller().limit(limits=BLAS_THREADS, user_api="blas"):
                results = self.kernel(stacked)
            return [[r[d] for r in results] for d in range(self.n)]
        env: dict[int, np.ndarray] = dict(self.constants)
        for k, (vid, t) in enumerate(zip(self.program.params, self.program.param_types)):
            env[vid] = np.stack([np.asarray(a[k], dtype=dtypes.to_numpy(t.dtype))
                                 for a in per_device_args])
        for kind, op in self.steps:
            outs = getattr(self, "_" + kind)(op, [env[v] for v in op.inputs])
            env.update(zip(op.outputs, outs))
        results = [env[v] for v in self.program.results]
        return [[r[d] for r in results] for d in range(self.n)]

    def _batched(self, op: Op, inputs: list[np.ndarray]) -> list[np.ndarray]:
        if op.name == "pad":  # the padding value is a scalar operand, the same everywhere
            value = inputs[1]
            if not np.all(value == value.reshape(-1)[0]):
                return self._per_device(op, inputs)
            inputs = [inputs[0], value.reshape(-1)[0]]
        opdef = REGISTRY[op.name]
        out = opdef.reference(*inputs, **op.attrs)
        outs = out if opdef.multi_output else (out,)
        return [np.asarray(o).astype(dtypes.to_numpy(t.dtype), copy=False)
                for o, t in zip(outs, op.types)]

    def _replicate(self, op: Op, inputs: list[np.ndarray]) -> list[np.ndarray]:
        outs = run_reference(op, inputs)
        return [np.broadcast_to(o, (self.n,) + o.shape) for o in outs]

    def _per_device(self, op: Op, inputs: list[np.ndarray]) -> list[np.ndarray]:
        per = [run_reference(op, [x[d] for x in inputs]) for d in range(self.n)]
        return [np.stack([p[i] for p in per]) for i in range(len(op.outputs))]

    def _axis_index(self, op: Op, inputs: list[np.ndarray]) -> list[np.ndarray]:
        out = np.zeros(self.n, np.int32)
        for members in axis_groups(self.axis_names, self.mesh_shape, op.attrs["axes"]):
            for i, m in enumerate(members):
                out[m] = i
        return [out]

    def _collective(self, op: Op, inputs: list[np.ndarray]) -> list[np.ndarray]:
        if op.name == "all_reduce" and op.attrs.get("kind", "sum") in ("sum", "max", "min"):
            return [self._all_reduce(op, inputs[0])]
        per = run_collective_lockstep(op, [[x] for x in inputs[0]], self.axis_names,
                                      self.mesh_shape)
        dtype = dtypes.to_numpy(op.types[0].dtype)
        return [np.stack([p[0] for p in per]).astype(dtype, copy=False)]

    def _all_reduce(self, op: Op, x: np.ndarray) -> np.ndarray:
        """Reduce over the group's mesh axes (the device axis reshaped to the mesh), adding
        members in group order so the sum rounds exactly like the group reference."""
        axes = [self.axis_names.index(a) for a in op.attrs["axes"]]
        rest = [i for i in range(len(self.mesh_shape)) if i not in axes]
        shaped = x.reshape(self.mesh_shape + x.shape[1:])
        order = axes + rest + list(range(len(self.mesh_shape), shaped.ndim))
        members = np.transpose(shaped, order)
        k = math.prod(self.mesh_shape[i] for i in axes)
        members = members.reshape((k,) + members.shape[len(axes):])
        combine = {"sum": np.add, "max": np.maximum, "min": np.minimum}[
            op.attrs.get("kind", "sum")]
        total = np.array(members[0], copy=True)
        with np.errstate(all="ignore"):
            for i in range(1, k):
                combine(total, members[i], out=total)
        full = np.broadcast_to(total, (k,) + total.shape).reshape(members.shape)
        back = np.argsort(order)
        unshaped = full.reshape(tuple(shaped.shape[i] for i in order))
        return np.transpose(unshaped, back).reshape(x.shape).astype(x.dtype, copy=False)

"""Stacked execution: all devices' shards stacked on a leading device axis, so each op of
the per-device program runs once instead of once per device (shard shapes are equal on
every device: uneven dims are padded).

The program is batched over the device axis by the compiler (partitioner/device_batching.py)
and compiled once by the backend backends.registry picks (natively by cpu above its size
threshold, else the numpy interpreter): this module only stacks shards, runs the
executable and splits its results per device.
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
from partitioner.device_batching import Batched, NotBatchable, batch_program
from spmd.errors import InternalError
from spmd.ir.graph import Graph

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
    if (
        type(first) is np.ndarray
        and first.nbytes >= RESTACK_MIN_BYTES
        and first.base is not None
        and first.flags.c_contiguous
    ):
        base, start, size = first.base, _data_address(first), first.nbytes
        if all(
            type(s) is np.ndarray
            and s.base is base
            and s.dtype == first.dtype
            and s.shape == first.shape
            and s.flags.c_contiguous
            and _data_address(s) == start + k * size
            for k, s in enumerate(shards)
        ):
            return np.lib.stride_tricks.as_strided(
                first, (len(shards), *first.shape), (size, *first.strides)
            )
    return np.stack(shards)


def _data_address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


class StackedProgram:
    """A per-device program prepared for stacked execution on a mesh."""

    def __init__(
        self,
        program: Graph,
        axis_names: Sequence[str],
        mesh_shape: Sequence[int],
        native: bool | None = None,
        backend: str | None = None,
    ):
        """backend: the registry's kind that compiles the batched program (native=True is
        'cpu', False 'interpreter'; neither: registry.choose for the cpu device kind).
        `kernel` stays None when the program cannot be batched (collectives in cond or
        while bodies): the caller then runs it on device threads."""
        self.program = program
        self.axis_names = tuple(axis_names)
        self.mesh_shape = tuple(mesh_shape)
        self.n = math.prod(mesh_shape)
        self.batched: Batched | None = None
        self.kernel: Any = None
        if backend is None and native is not None:
            backend = "cpu" if native else "interpreter"
        self.backend = backend or registry.choose("cpu", program, copies=self.n)
        self._compile_batched()

    @property
    def native(self) -> bool:
        return self.kernel is not None and registry.get(self.backend).capabilities.native

    def _compile_batched(self) -> None:
        try:
            self.batched = batch_program(self.program, self.axis_names, self.mesh_shape)
        except NotBatchable:
            return
        self.kernel = registry.get(self.backend).compile(
            self.batched.graph, self.batched.run_op, num_threads=os.cpu_count() or 1
        )

    def __call__(self, per_device_args: Sequence[Sequence[np.ndarray]]) -> list[list[np.ndarray]]:
        if self.kernel is None:
            raise InternalError(
                "a program that cannot be batched ran stacked; this is a bug in spmd"
            )
        stacked = [
            stack_shards([a[k] for a in per_device_args]) for k in range(len(self.program.params))
        ]
        # One BLAS thread: numpy's batched matmul runs one small gemm per device, and a
        # multi-threaded BLAS syncs on each (measured 4x slower on 2 shared cores).
        with _blas_controller().limit(limits=BLAS_THREADS, user_api="blas"):
            results = self.kernel(stacked)
        return [[r[d] for r in results] for d in range(self.n)]

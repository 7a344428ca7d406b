"""Builds the per-device program op by op, inferring local types from the registry."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from partitioner.spec import AxisTuple, MeshShape
from spmd.collective_record import CollectiveRecord
from spmd.errors import InternalError
from spmd.ir.graph import Attrs, Graph, Op, fresh_id
from spmd.ir.types import TensorType
from spmd.ops import REGISTRY


class ProgramBuilder:
    """An SSA program under construction, plus the collectives inserted into it."""

    def __init__(self, mesh: MeshShape):
        self.mesh = mesh
        self.params: list[int] = []
        self.param_types: list[TensorType] = []
        self.ops: list[Op] = []
        self.types: dict[int, TensorType] = {}
        self.records: list[CollectiveRecord] = []
        self._consts: dict[Any, int] = {}
        self._axis_index: dict[AxisTuple, int] = {}

    def param(self, t: TensorType) -> int:
        vid = fresh_id()
        self.params.append(vid)
        self.param_types.append(t)
        self.types[vid] = t
        return vid

    def emit(self, name: str, inputs: Sequence[int], loc: str = "", **attrs: Any) -> Any:
        opdef = REGISTRY[name]
        out = opdef.infer(*(self.types[v] for v in inputs), **attrs)
        out_types = out if isinstance(out, tuple) else (out,)
        outputs = tuple(fresh_id() for _ in out_types)
        self.ops.append(Op(name, tuple(inputs), outputs, out_types, Attrs(attrs), loc))
        self.types.update(zip(outputs, out_types))
        return outputs if opdef.multi_output else outputs[0]

    def add_op(self, op: Op) -> None:
        """Copy an op that is already per-device (a shard_map body op)."""
        self.ops.append(op)
        self.types.update(zip(op.outputs, op.types))

    def const(self, value: Any, dtype: str) -> int:
        from spmd import dtypes

        arr = np.asarray(value, dtype=dtypes.to_numpy(dtype))
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.emit("constant", (), value=arr, weak=False)
        return self._consts[key]

    def full(self, value: Any, t: TensorType) -> int:
        scalar = self.const(value, t.dtype)
        if not t.shape:
            return scalar
        return self.emit("broadcast_in_dim", (scalar,), shape=t.shape, broadcast_dimensions=())

    def axis_index(self, axes: AxisTuple) -> int:
        if axes not in self._axis_index:
            self._axis_index[axes] = self.emit(
                "axis_index", (), axes=axes, group_size=self.mesh.size(axes)
            )
        return self._axis_index[axes]

    def collective(
        self, op_name: str, x: int, axes: AxisTuple, loc: str, reason: str, **attrs: Any
    ) -> int:
        t = self.types[x]
        out = self.emit(op_name, (x,), loc, axes=axes, group_size=self.mesh.size(axes), **attrs)
        self.records.append(
            CollectiveRecord(
                op_name,
                axes,
                t.nbytes,
                t.shape,
                t.dtype,
                loc,
                reason,
                value=out,
                group_size=self.mesh.size(axes),
            )
        )
        return out

    def finish(self, results: Sequence[int]) -> Graph:
        for v in results:
            if v not in self.types:
                raise InternalError(f"per-device program result %{v} is undefined")
        return Graph(tuple(self.params), tuple(self.param_types), tuple(self.ops), tuple(results))

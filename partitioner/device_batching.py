"""Device batching ("vmap over devices"): the partitioned per-device program becomes one
program over all N devices of the mesh, so a backend compiles it once and every op runs
once for all devices. It runs after the partitioner, on its per-device program, for a runtime
that holds every device in one process (launch/stacked.py).

After this pass:
- every param and result has a leading dim of size N (row-major device ids of the mesh);
  a value the same on every device may lack it inside the program (computed once);
- no op is a collective or axis_index, except kept collectives (bool reductions, kinds with
  no rule): collectives are reshapes, transposes, reductions, broadcasts and slices over the
  device dim (partitioner/batched_collectives.py), axis_index a constant;
- an op without a batching rule (or with per-device operands its rule cannot take) keeps its
  name and original attrs on stacked operands and is listed in `Batched.per_device`: the
  runtime runs it once per device (`run_kept`);
- scan bodies are batched too (the device dim at 1 inside the loop); collectives in other
  sub-graphs raise NotBatchable.

The rules are the ops' own facts: an op batches when its OpDef has `shared_operands` (those
stay unbatched: pad's value, gather's indices), with its attrs shifted by `attr_kinds`
(spmd/ops/attrs.py with_leading_axis); the native and the numpy stacked runs share them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from partitioner.batched_collectives import batch_collective
from partitioner.combine import unbucket
from spmd import dtypes
from spmd.errors import InternalError
from spmd.interpreter import run_reference
from spmd.ir.graph import Attrs, Graph, Op, fresh_id, subgraphs
from spmd.ir.types import TensorType
from spmd.mesh import axis_groups
from spmd.ops import REGISTRY
from spmd.ops.attrs import with_leading_axis
from spmd.ops.opdef import Trait
from spmd.passes.dce import dce
from spmd.spmd_interpreter import run_collective_lockstep

KNOWN_MAX_ELEMENTS = 64  # values computed at batching time (index arithmetic) up to this size


class NotBatchable(Exception):
    """The program cannot run as one batched program (collectives inside sub-graphs)."""


@dataclass
class Batched:
    """The batched program, and which of its ops run per device (keyed by first output)."""

    graph: Graph
    axis_names: tuple[str, ...]
    mesh_shape: tuple[int, ...]
    per_device: dict[int, Op] = field(default_factory=dict)

    def run_op(self, op: Op, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """The backends' run_op hook for the batched program: a kept op once per device
        on its stacked inputs (a kept collective by its group reference), else by reference."""
        original = self.per_device.get(op.outputs[0])
        if original is None:
            return run_reference(op, inputs)
        if REGISTRY[original.name].has(Trait.COLLECTIVE):
            per = run_collective_lockstep(
                original, [[row] for row in inputs[0]], self.axis_names, self.mesh_shape
            )
        else:
            per = [
                run_reference(original, [x[d] for x in inputs])
                for d in range(math.prod(self.mesh_shape))
            ]
        return [
            np.stack([p[i] for p in per]).astype(dtypes.to_numpy(t.dtype), copy=False)
            for i, t in enumerate(original.types)
        ]


def _shift(dims: Sequence[int]) -> tuple[int, ...]:
    return tuple(d + 1 for d in dims)


def _holds_per_device(op: Op) -> bool:
    """Whether an op of op's sub-graphs depends on the device (a collective, axis_index)."""
    return any(REGISTRY[s.name].has(Trait.PER_DEVICE) for sub in subgraphs(op) for s in sub.walk())


class Batcher:
    """Builds the batched graph op by op; `batched[v]` says whether new value v has the
    device axis (values the same on every device stay unbatched until combined)."""

    def __init__(self, axis_names: Sequence[str], mesh_shape: Sequence[int]):
        self.axis_names = tuple(axis_names)
        self.mesh_shape = tuple(mesh_shape)
        self.n = math.prod(self.mesh_shape)
        self.ops: list[Op] = []
        self.types: dict[int, TensorType] = {}
        self.batched: dict[int, bool] = {}
        self.known: dict[int, np.ndarray] = {}  # values known now (stacked when batched)
        self.per_device: dict[int, Op] = {}
        self.stacked: dict[int, int] = {}  # unbatched value -> its broadcast to all devices
        self.broadcasts: dict[int, tuple[int, Any]] = {}  # unbatched broadcast -> its source

    # -- emitting --------------------------------------------------------------------------
    def emit(self, name: str, inputs: Sequence[int], loc: str = "", **attrs: Any) -> int:
        types = REGISTRY[name].infer(*[self.types[v] for v in inputs], **attrs)
        out = fresh_id()
        self.ops.append(Op(name, tuple(inputs), (out,), (types,), Attrs(attrs), loc))
        self.types[out] = types
        self.batched[out] = any(self.batched[v] for v in inputs)
        return out

    def constant(self, value: np.ndarray, batched: bool) -> int:
        out = self.emit("constant", (), value=np.asarray(value))
        self.batched[out] = batched
        if value.size <= KNOWN_MAX_ELEMENTS * (self.n if batched else 1):
            self.known[out] = np.asarray(value)
        return out

    def to_batched(self, v: int) -> int:
        """v with the device axis: one broadcast per value, fused into its users by the
        backend; a broadcast of a broadcast is one broadcast of the source (the first is
        then dead: batch_program drops it)."""
        if self.batched[v]:
            return v
        if v in self.stacked:
            return self.stacked[v]
        t = self.types[v]
        src, dims = self.broadcasts.get(v, (v, tuple(range(t.ndim))))
        out = self.emit(
            "broadcast_in_dim", (src,), shape=(self.n,) + t.shape, broadcast_dimensions=_shift(dims)
        )
        self.batched[out] = True
        self.stacked[v] = out
        if v in self.known:
            self.known[out] = np.broadcast_to(self.known[v], (self.n,) + t.shape)
        return out

    def per_device_type(self, v: int) -> TensorType:
        t = self.types[v]
        return t.with_shape(t.shape[1:]) if self.batched[v] else t

    # -- one op ----------------------------------------------------------------------------
    def add(self, op: Op, ins: list[int]) -> list[int]:
        opdef = REGISTRY[op.name]
        own = OWN_RULES.get(op.name)
        if own is not None:
            got = own(self, op, ins)
            if got is not None:
                return got
        if _holds_per_device(op):
            raise NotBatchable(f"{op.name} holds collectives in its sub-graphs")
        if opdef.has(Trait.COLLECTIVE):
            return [batch_collective(self, op, self.to_batched(ins[0]))]
        if not any(self.batched[v] for v in ins):
            return self.copy(op, ins)
        attrs = with_leading_axis(opdef, op.attrs, self.n)
        shared = opdef.shared_operands or ()
        if attrs is None or any(self.batched[ins[i]] for i in shared):
            return self.run_per_device(op, ins)
        batched_ins = [v if i in shared else self.to_batched(v) for i, v in enumerate(ins)]
        out = self.emit(op.name, batched_ins, op.loc, **attrs)
        self.fold(out, op, ins)
        return [out]

    # -- the ops this pass rewrites its own way (OWN_RULES): None falls back to the above --
    def axis_index(self, op: Op, ins: list[int]) -> list[int]:
        """Each device's index in its group: a constant over the device axis."""
        return [self.constant(self.group_indices(op.attrs["axes"]), batched=True)]

    def broadcast(self, op: Op, ins: list[int]) -> list[int] | None:
        """An unbatched broadcast is remembered, so that `to_batched` of its result is one
        broadcast of its source."""
        if self.batched[ins[0]]:
            return None
        outs = self.copy(op, ins)
        self.broadcasts[outs[0]] = (ins[0], tuple(op.attrs["broadcast_dimensions"]))
        return outs

    def dynamic_slice(self, op: Op, ins: list[int]) -> list[int] | None:
        """With starts known now (the partitioner's axis_index * size): static slices."""
        if not any(self.batched[v] for v in ins) or not all(v in self.known for v in ins[1:]):
            return None
        return [self.static_slices(op, ins)]

    def scan(self, op: Op, ins: list[int]) -> list[int] | None:
        """A scan on batched values, or whose body talks to other devices (a layer stack
        under tensor parallelism): its body is batched too, since a backend runs a scan op
        natively. xs and ys carry the scan dim first, so the device axis moves to dim 1
        inside the loop and back after it."""
        if not _holds_per_device(op) and not any(self.batched[v] for v in ins):
            return None
        a = op.attrs
        fixed = a["num_consts"] + a["num_carry"]
        body = batch_program(a["body"], self.axis_names, self.mesh_shape)
        if body.per_device:
            raise NotBatchable("a scan body holds ops that run per device")
        operands = [self.to_batched(v) for v in ins]
        for i in range(fixed, len(operands)):
            operands[i] = self._swap_leading(operands[i], op.loc)
        outs = self.emit_multi("scan", operands, op.loc, **{**a, "body": body.graph})
        carries = outs[: a["num_carry"]]
        ys = [self._swap_leading(v, op.loc) for v in outs[a["num_carry"] :]]
        return carries + ys

    def _swap_leading(self, v: int, loc: str) -> int:
        perm = (1, 0) + tuple(range(2, self.types[v].ndim))
        out = self.emit("transpose", (v,), loc, permutation=perm)
        self.batched[out] = True
        return out

    def emit_multi(self, name: str, inputs: Sequence[int], loc: str, **attrs: Any) -> list[int]:
        types = REGISTRY[name].infer(*[self.types[v] for v in inputs], **attrs)
        outs = tuple(fresh_id() for _ in types)
        self.ops.append(Op(name, tuple(inputs), outs, tuple(types), Attrs(attrs), loc))
        for v, t in zip(outs, types):
            self.types[v] = t
            self.batched[v] = True
        return list(outs)

    def copy(self, op: Op, ins: list[int]) -> list[int]:
        """An op on values the same on every device: it runs once, unbatched."""
        outs = tuple(fresh_id() for _ in op.outputs)
        self.ops.append(Op(op.name, tuple(ins), outs, op.types, op.attrs, op.loc))
        for v, t in zip(outs, op.types):
            self.types[v] = t
            self.batched[v] = False
        if len(outs) == 1:
            self.fold(outs[0], op, ins)
        return list(outs)

    def fold(self, out: int, op: Op, ins: list[int]) -> None:
        """Compute small values that depend only on known values (start indices)."""
        if subgraphs(op) or not all(v in self.known for v in ins):
            return
        if self.per_device_type(out).size > KNOWN_MAX_ELEMENTS:
            return
        if not self.batched[out]:
            self.known[out] = run_reference(op, [self.known[v] for v in ins])[0]
            return
        stacked = [
            np.broadcast_to(self.known[v], (self.n,) + self.per_device_type(v).shape) for v in ins
        ]
        self.known[out] = np.stack(
            [run_reference(op, [x[d] for x in stacked])[0] for d in range(self.n)]
        )

    def run_per_device(self, op: Op, ins: list[int]) -> list[int]:
        """The op as it is, once per device, on batched inputs (the fallback)."""
        batched_ins = tuple(self.to_batched(v) for v in ins)
        outs = tuple(fresh_id() for _ in op.outputs)
        types = tuple(t.with_shape((self.n,) + t.shape) for t in op.types)
        self.ops.append(Op(op.name, batched_ins, outs, types, op.attrs, op.loc))
        for v, t in zip(outs, types):
            self.types[v] = t
            self.batched[v] = True
        self.per_device[outs[0]] = op
        return list(outs)

    def static_slices(self, op: Op, ins: list[int]) -> int:
        """dynamic_slice with starts known now (the partitioner's axis_index * size): one
        static slice per distinct start, concatenated along the device axis."""
        x = self.to_batched(ins[0])
        sizes = tuple(op.attrs["slice_sizes"])
        shape = self.types[x].shape[1:]
        starts = np.stack([np.broadcast_to(self.known[v], (self.n,)) for v in ins[1:]], -1)
        starts = np.clip(starts, 0, np.asarray(shape, dtype=np.int64) - sizes)
        pieces, d = [], 0
        while d < self.n:
            e = d + 1
            while e < self.n and (starts[e] == starts[d]).all():
                e += 1
            begin = (d,) + tuple(int(s) for s in starts[d])
            limit = (e,) + tuple(b + k for b, k in zip(begin[1:], sizes))
            pieces.append(
                self.emit(
                    "slice",
                    (x,),
                    op.loc,
                    start_indices=begin,
                    limit_indices=limit,
                    strides=(1,) * len(begin),
                )
            )
            d = e
        if len(pieces) == 1:
            return pieces[0]
        return self.emit("concatenate", pieces, op.loc, dimension=0)

    def group_indices(self, axes: Sequence[str]) -> np.ndarray:
        """Each device's index in its group over `axes` (axis_index), as int32[N]."""
        out = np.zeros(self.n, np.int32)
        for members in axis_groups(self.axis_names, self.mesh_shape, axes):
            for i, m in enumerate(members):
                out[m] = i
        return out


# The ops device batching rewrites its own way, tried before the generic rule.
OWN_RULES: dict[str, Callable[[Batcher, Op, list[int]], list[int] | None]] = {
    "axis_index": Batcher.axis_index,
    "broadcast_in_dim": Batcher.broadcast,
    "dynamic_slice": Batcher.dynamic_slice,
    "scan": Batcher.scan,
}


def batch_program(program: Graph, axis_names: Sequence[str], mesh_shape: Sequence[int]) -> Batched:
    """The per-device `program` as one program over all devices: each param and result
    gains a leading dim of size N (row-major device ids of the mesh)."""
    program = unbucket(program)
    b = Batcher(axis_names, mesh_shape)
    env: dict[int, int] = {}
    params = []
    for v, t in zip(program.params, program.param_types):
        new = fresh_id()
        b.types[new] = t.with_shape((b.n,) + t.shape)
        b.batched[new] = True
        env[v] = new
        params.append(new)
    for op in program.ops:
        outs = b.add(op, [env[v] for v in op.inputs])
        if len(outs) != len(op.outputs):
            raise InternalError(
                f"batching {op.name} gave {len(outs)} results; this is a bug in spmd"
            )
        env.update(zip(op.outputs, outs))
    results = []
    for v in program.results:
        out = b.to_batched(env[v])
        if out in results or out in params:  # each result its own buffer
            out = b.emit("stop_gradient", (out,))
        results.append(out)
    graph = dce(
        Graph(tuple(params), tuple(b.types[v] for v in params), tuple(b.ops), tuple(results))
    )
    return Batched(graph, b.axis_names, b.mesh_shape, b.per_device)

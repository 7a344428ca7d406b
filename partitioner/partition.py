"""The SPMD partitioner: one global program -> ONE per-device program with collectives.

Each op's layout comes from its factor rule: the factors' mesh axes are read from the
propagated result layout and the operands' actual layouts; operands are resharded to
what the op needs; a sharded reduction factor leaves the result partial (a pending sum,
resolved as late as possible by the resharding planner).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from partitioner.builder import ProgramBuilder
from partitioner.choose import choose_factor_axes
from partitioner.combine import combine_all_reduces
from partitioner.control import partition_cond, partition_scan, partition_while
from partitioner.gathering import gather_own_rows, scatter_local_rows
from partitioner.interval_plan import realign_then_gather
from partitioner.propagate import Dims, dims_from_factors, op_factors, propagate
from partitioner.reshard import IDENTITY, ReplicationWarning, mask_padding, reshard, resolve_partial
from partitioner.slicing import realign_concat, realign_pad, realign_slice
from partitioner.spec import AxisTuple, MeshShape, ShardSpec, local_type, padded_dims
from spmd import config
from spmd.collective_record import CollectiveRecord
from spmd.errors import InternalError
from spmd.ir.graph import Graph, Op
from spmd.ir.verifier import verify
from spmd.ops import REGISTRY, Factors, Linearity, Trait
from spmd.ops.attrs import local_attrs
from spmd.passes.dce import dce


@dataclass
class Partitioned:
    """The per-device program and how its params and results are laid out."""

    program: Graph
    mesh: MeshShape
    param_specs: list[ShardSpec]
    result_specs: list[ShardSpec]
    records: list[CollectiveRecord]


class Partitioner:
    """Walks the global program once, emitting each op's per-device form."""

    def __init__(self, graph: Graph, mesh: MeshShape, dims_of: dict[int, Dims]):
        self.graph = graph
        self.mesh = mesh
        self.dims_of = dims_of
        self.types = graph.types
        self.b = ProgramBuilder(mesh)
        self.env: dict[int, tuple[int, ShardSpec]] = {}
        self.resharded: dict[tuple[int, Dims], int] = {}  # (value, layout) -> local value
        self.users_of = graph.users()
        self.uses = {v: len(ops) for v, ops in self.users_of.items()}
        self.notes: dict[int, str] = {}  # value -> why its pending sum is there (report)

    # -- helpers ---------------------------------------------------------------------------
    def operand(self, v: int, dst: Dims, loc: str, reason: str) -> int:
        spec = self.env[v][1]
        producer = self.graph.producers.get(v)
        if (
            spec.dims != dst
            and producer is not None
            and REGISTRY[producer.name].has(Trait.BROADCAST)
        ):
            return self.broadcast_as(producer, dst)
        return self.reshard_cached(v, dst, loc, reason)

    def reshard_cached(self, v: int, dst: Dims, loc: str, reason: str) -> int:
        """v in layout dst; a pending sum is resolved once for all consumers."""
        lv, spec = self.env[v]
        if spec.partial:
            resolved, rspec = resolve_partial(
                self.b, lv, self.types[v], spec, dst, loc, reason + self.note(v)
            )
            if rspec.dims == spec.dims:
                self.env[v] = (resolved, rspec)
            lv, spec = resolved, rspec
        key = (v, tuple(dst))
        if key not in self.resharded:
            self.resharded[key] = reshard(self.b, lv, self.types[v], spec, dst, loc, reason)[0]
        return self.resharded[key]

    def partition_body(
        self, body: Graph, in_dims: Sequence[Dims | None], out_dims: Sequence[Dims | None]
    ) -> Partitioned:
        """A control-flow body (scan, cond, while_loop) partitioned for this mesh: the rules
        of partitioner/control.py recurse through it, so they need not import this module."""
        return partition(body, self.mesh, in_dims, out_dims)

    def note(self, v: int) -> str:
        return f" ({self.notes[v]})" if v in self.notes else ""

    def bind_result(self, v: int, lv: int, spec: ShardSpec) -> None:
        want = local_type(self.types[v], spec, self.mesh)
        got = self.b.types[lv]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise InternalError(
                f"partitioned value has local type {got}, expected {want} for layout {spec}"
            )
        self.env[v] = (lv, spec)

    # -- ops -------------------------------------------------------------------------------
    def run(self, op: Op) -> None:
        handler = getattr(self, "op_" + op.name, None)
        if handler is not None:
            handler(op)
            return
        f = op_factors(op, self.types)
        if f is None:
            self.replicated(op)
            return
        self.generic(op, f)

    def replicated(self, op: Op) -> None:
        """Ops without a factor rule run on whole values on every device."""
        ins = []
        for v in op.inputs:
            if any(self.env[v][1].dims):
                warnings.warn(
                    ReplicationWarning(
                        f"{op.loc}: {op.name} has no sharding rule yet; its sharded operand is "
                        f"gathered on every device"
                    ),
                    stacklevel=2,
                )
            ins.append(self.operand(v, ((),) * self.types[v].ndim, op.loc, f"{op.name} input"))
        outs = self.b.emit(op.name, ins, op.loc, **op.attrs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        for v, lv in zip(op.outputs, outs):
            self.bind_result(v, lv, ShardSpec.replicated(self.types[v].ndim))

    def broadcast_as(self, op: Op, dst: Dims) -> int:
        """Re-emit a broadcast directly in layout dst: cheaper than moving its result."""
        f = op_factors(op, self.types)
        fa = {factor: axes for factor, axes in zip(f.results[0], dst) if factor and axes}
        want = dims_from_factors(f.operands[0], fa, self.types[op.inputs[0]].shape)
        x = self.operand(op.inputs[0], want, op.loc, "broadcast operand")
        shape = local_type(self.types[op.outputs[0]], ShardSpec(dst), self.mesh).shape
        attrs = local_attrs(
            REGISTRY[op.name],
            dict(op.attrs),
            self.types[op.inputs[0]].shape,
            self.b.types[x].shape,
            shape,
        )
        return self.b.emit(op.name, (x,), op.loc, **attrs)

    def op_scan(self, op: Op) -> None:
        partition_scan(self, op)

    def op_cond(self, op: Op) -> None:
        partition_cond(self, op)

    def op_while_loop(self, op: Op) -> None:
        partition_while(self, op)

    def op_constant(self, op: Op) -> None:
        self.replicated(op)

    def op_iota(self, op: Op) -> None:
        """Each device counts its own block (offset by its shard's start): an iota is
        never built at the global shape (one_hot over a 32k vocabulary)."""
        v = op.outputs[0]
        t = self.types[v]
        dims = self.dims_of.get(v)
        if not t.shape or dims is None or not any(dims):
            self.replicated(op)
            return
        spec = ShardSpec(dims)
        shape = local_type(t, spec, self.mesh).shape
        d = op.attrs["dimension"]
        x = self.b.emit("iota", (), op.loc, dtype=t.dtype, shape=shape, dimension=d)
        if dims[d]:
            start = self.b.emit(
                "mul", (self.b.axis_index(dims[d]), self.b.const(shape[d], "int32")), op.loc
            )
            if t.dtype != "int32":
                start = self.b.emit("convert_element_type", (start,), op.loc, new_dtype=t.dtype)
            start = self.b.emit(
                "broadcast_in_dim", (start,), op.loc, shape=shape, broadcast_dimensions=()
            )
            x = self.b.emit("add", (x, start), op.loc)
        self.bind_result(v, x, spec)

    def op_gather(self, op: Op) -> None:
        if not gather_own_rows(self, op):
            self.generic(op, op_factors(op, self.types))

    def op_concatenate(self, op: Op) -> None:
        if not realign_concat(self, op):
            self.generic(op, op_factors(op, self.types))

    def op_pad(self, op: Op) -> None:
        if not realign_pad(self, op):
            self.generic(op, op_factors(op, self.types))

    def op_scatter_add(self, op: Op) -> None:
        if not scatter_local_rows(self, op):
            self.generic(op, op_factors(op, self.types))

    def op_slice(self, op: Op) -> None:
        if not realign_slice(self, op) and not realign_then_gather(self, op):
            self.generic(op, op_factors(op, self.types))

    def op_sharding_constraint(self, op: Op) -> None:
        dims = op.attrs["sharding"].dims
        lv = self.operand(op.inputs[0], dims, op.loc, "with_sharding_constraint")
        self.bind_result(op.outputs[0], lv, ShardSpec(dims))

    def op_shard_map(self, op: Op) -> None:
        body: Graph = op.attrs["body"]
        in_specs, out_specs = op.attrs["in_specs"], op.attrs["out_specs"]
        env: dict[int, int] = {}
        for i, (v, p) in enumerate(zip(op.inputs, body.params)):
            dims = in_specs[i] if i < len(in_specs) else ((),) * self.types[v].ndim
            env[p] = self.operand(v, dims, op.loc, "shard_map in_specs")
        for bop in body.ops:
            outs = self.b.emit(
                bop.name, [env[v] for v in bop.inputs], bop.loc or op.loc, **bop.attrs
            )
            outs = outs if isinstance(outs, tuple) else (outs,)
            env.update(zip(bop.outputs, outs))
            if REGISTRY[bop.name].has(Trait.COLLECTIVE):
                t = self.b.types[env[bop.inputs[0]]]
                self.b.records.append(
                    CollectiveRecord(
                        bop.name,
                        bop.attrs["axes"],
                        t.nbytes,
                        t.shape,
                        t.dtype,
                        bop.loc or op.loc,
                        bop.attrs.get("reason") or "written in shard_map",
                        group_size=bop.attrs.get("group_size", 1),
                    )
                )
        for v, r, dims in zip(op.outputs, body.results, out_specs):
            self.bind_result(v, env[r], ShardSpec(dims))

    def generic(self, op: Op, f: Factors) -> None:
        fa, note = choose_factor_axes(self, op, f)
        why = f" ({note})" if note else ""
        part_axes: set[str] = set()
        part_kind = "sum"
        ins = []
        for i, v in enumerate(op.inputs):
            lv, spec = self.env[v]
            want = dims_from_factors(f.operands[i], fa, self.types[v].shape)
            if spec.partial and self.can_pass_partial(op, i, spec, want, fa):
                lv, spec = reshard_keep_partial(self.b, lv, self.types[v], spec, want, op.loc)
                part_axes |= set(spec.partial)
                part_kind = spec.partial_kind
            else:
                lv = self.operand(v, want, op.loc, f"{op.name} operand {i}{why}")
                spec = ShardSpec(want)
            lv = self.mask_if_reduced(lv, v, spec, f, i, fa, op.loc)
            ins.append(lv)
        for factor in f.reduce:
            if factor in fa:
                part_axes |= set(fa[factor])
                part_kind = f.reduce_kind
        attrs = self.local_attrs(op, ins, fa, f)
        outs = self.b.emit(op.name, ins, op.loc, **attrs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        partial = tuple(a for a in self.mesh.names if a in part_axes)
        for v, lv, fdims in zip(op.outputs, outs, f.results):
            dims = dims_from_factors(fdims, fa, self.types[v].shape)
            self.bind_result(v, lv, ShardSpec(dims, partial, part_kind))
            if partial and note:
                self.notes[v] = note

    def can_pass_partial(
        self, op: Op, i: int, spec: ShardSpec, want: Dims, fa: dict[str, AxisTuple]
    ) -> bool:
        """Linear ops keep a pending sum pending (the rules: spmd.ops.Linearity.passes)."""
        linear = REGISTRY[op.name].linear
        pending = frozenset(spec.partial)
        if sum(t.size for t in op.types) > self.types[op.inputs[i]].size:
            return False  # resolve before a broadcast: the all-reduce moves fewer bytes
        if self.uses.get(op.inputs[i], 0) > 1:
            return False  # resolve once here rather than once per consumer
        if any(t.dtype != self.types[op.inputs[i]].dtype for t in op.types):
            return False  # the sum runs in the values' own dtype (bf16 stays bf16, as XLA)
        if pending & {a for d in want for a in d}:
            return False
        if linear is Linearity.SAME_REDUCTION and pending & {
            a for axes in fa.values() for a in axes
        }:
            return False  # the reduction's own factors are sharded on the pending axes
        others = [self.env[v][1] for j, v in enumerate(op.inputs) if j != i]
        return linear.passes(
            i,
            spec.partial_kind,
            pending,
            op.attrs.get("kind"),
            [(frozenset(o.partial), o.partial_kind, frozenset(o.used_axes())) for o in others],
        )

    def mask_if_reduced(
        self,
        lv: int,
        v: int,
        spec: ShardSpec,
        f: Factors,
        i: int,
        fa: dict[str, AxisTuple],
        loc: str,
    ) -> int:
        """Padding rows of a sharded dim that the op reduces over must not count."""
        reduced = [
            d for d, factor in enumerate(f.operands[i]) if factor in f.reduce and factor in fa
        ]
        dims = [d for d in reduced if d in padded_dims(self.types[v], spec, self.mesh)]
        if not dims:
            return lv
        return mask_padding(
            self.b, lv, self.types[v], spec, dims, IDENTITY.get(f.reduce_kind, 0), loc
        )

    def local_attrs(
        self, op: Op, ins: Sequence[int], fa: dict[str, AxisTuple], f: Factors
    ) -> dict[str, Any]:
        """Attributes that spell out shapes, rewritten for the local shard."""
        attrs = dict(op.attrs)
        out_local = [
            local_type(
                self.types[v], ShardSpec(dims_from_factors(fd, fa, self.types[v].shape)), self.mesh
            )
            for v, fd in zip(op.outputs, f.results)
        ]
        opdef = REGISTRY[op.name]
        if not opdef.attr_kinds:
            return attrs
        gshape = self.types[op.inputs[0]].shape if op.inputs else ()
        lshape = self.b.types[ins[0]].shape if ins else ()
        return local_attrs(opdef, attrs, gshape, lshape, out_local[0].shape)


def reshard_keep_partial(
    b: ProgramBuilder, lv: int, gtype: Any, spec: ShardSpec, want: Dims, loc: str
) -> tuple[int, ShardSpec]:
    """Change dims while the value stays partial (its pending axes are untouched)."""
    lv, dims_spec = reshard(b, lv, gtype, ShardSpec(spec.dims), want, loc, "layout")
    return lv, ShardSpec(dims_spec.dims, spec.partial, spec.partial_kind)


def partition(
    graph: Graph, mesh: MeshShape, in_dims: Sequence[Dims | None], out_dims: Sequence[Dims | None]
) -> Partitioned:
    """Partition `graph` for `mesh`; None entries mean "let propagation choose"."""
    seeds: dict[int, Dims] = {}
    for v, d in zip(graph.params, in_dims):
        if d is not None:
            seeds[v] = d
    for v, d in zip(graph.results, out_dims):
        if d is not None and v not in seeds:
            seeds[v] = d
    dims_of = propagate(graph, mesh, seeds)
    p = Partitioner(graph, mesh, dims_of)
    param_specs = []
    for v, t in zip(graph.params, graph.param_types):
        spec = ShardSpec(dims_of.get(v, ((),) * t.ndim))
        param_specs.append(spec)
        p.env[v] = (p.b.param(local_type(t, spec, mesh)), spec)
    for op in graph.ops:
        p.run(op)
    results, result_specs = [], []
    for v, d in zip(graph.results, out_dims):
        lv, spec = p.env[v]
        dims = d if d is not None else spec.dims  # no request: keep the layout it has
        if spec.partial or spec.dims != dims:
            lv, spec = reshard(
                p.b,
                lv,
                graph.types[v],
                spec,
                dims,
                _loc_of(graph, v),
                "jit output layout" + p.note(v),
            )
        results.append(lv)
        result_specs.append(spec)
    program, records = combine_all_reduces(dce(p.b.finish(results)), p.b.records, mesh)
    if config.env("SPMD_VERIFY"):
        verify(program, pass_name="partition")
    return Partitioned(program, mesh, param_specs, result_specs, records)


def _loc_of(graph: Graph, v: int) -> str:
    op = graph.producers.get(v)
    return op.loc if op is not None else ""


__all__ = ["Partitioned", "partition", "resolve_partial"]

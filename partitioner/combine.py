"""Collective optimisation: independent all-reduces over the same axes, kind and dtype
are combined into one bucket (flatten, concatenate, one all-reduce, split back).

Data-parallel gradients then cost one collective instead of one per parameter.
"""

from __future__ import annotations

from dataclasses import replace

from partitioner.collective_report import CollectiveRecord
from partitioner.spec import MeshShape
from spmd.ir.graph import Attrs, Graph, Op, fresh_id
from spmd.ir.types import TensorType

BUCKET_BYTES = 64 << 20  # like PyTorch DDP's bucket cap (25 MB) and XLA's combiner threshold


def combine_all_reduces(program: Graph, records: list[CollectiveRecord], mesh: MeshShape,
                        ) -> tuple[Graph, list[CollectiveRecord]]:
    ops = list(program.ops)
    index_of_def = {v: i for i, op in enumerate(ops) for v in op.outputs}
    first_use: dict[int, int] = {}
    for i, op in enumerate(ops):
        for v in op.inputs:
            first_use.setdefault(v, i)
    for v in program.results:
        first_use.setdefault(v, len(ops))
    buckets: list[list[int]] = []
    open_buckets: dict[tuple, tuple[list[int], int, int, int]] = {}
    for i, op in enumerate(ops):
        if op.name != "all_reduce":
            continue
        key = (op.attrs["axes"], op.attrs.get("kind", "sum"), op.types[0].dtype)
        defined = index_of_def.get(op.inputs[0], -1)
        use = first_use.get(op.outputs[0], len(ops))
        members, max_def, insert, nbytes = open_buckets.get(key, ([], -1, len(ops) + 1, 0))
        size = op.types[0].nbytes
        if members and max(max_def, defined) < min(insert, use) and nbytes + size <= BUCKET_BYTES:
            open_buckets[key] = (members + [i], max(max_def, defined), min(insert, use),
                                 nbytes + size)
        else:
            if len(members) > 1:
                buckets.append(members)
            open_buckets[key] = ([i], defined, use, size)
    buckets += [m for m, *_ in open_buckets.values() if len(m) > 1]
    if not buckets:
        return program, records
    return _rewrite(program, ops, buckets, first_use, records)


def _rewrite(program: Graph, ops: list[Op], buckets: list[list[int]], first_use: dict[int, int],
             records: list[CollectiveRecord]) -> tuple[Graph, list[CollectiveRecord]]:
    removed = {i for b in buckets for i in b}
    inserts: dict[int, list[Op]] = {}
    combined_records = []
    for bucket in buckets:
        members = [ops[i] for i in bucket]
        at = min(first_use.get(m.outputs[0], len(ops)) for m in members)
        new_ops, record = _bucket_ops(members)
        inserts.setdefault(at, []).extend(new_ops)
        combined_records.append(record)
    out: list[Op] = []
    for i, op in enumerate(ops + [None]):  # type: ignore[list-item]
        out.extend(inserts.get(i, []))
        if op is not None and i not in removed:
            out.append(op)
    merged = {ops[i].outputs[0] for b in buckets for i in b}
    kept = [r for r in records if r.value not in merged]
    return program.replace(ops=tuple(out)), kept + combined_records


def _bucket_ops(members: list[Op]) -> tuple[list[Op], CollectiveRecord]:
    first = members[0]
    dtype = first.types[0].dtype
    new: list[Op] = []
    flats = []
    for m in members:
        t = m.types[0]
        flat_t = TensorType((t.size,), dtype)
        flat = fresh_id()
        new.append(Op("reshape", m.inputs, (flat,), (flat_t,), Attrs(new_sizes=(t.size,)), m.loc))
        flats.append(flat)
    total = sum(m.types[0].size for m in members)
    cat = fresh_id()
    cat_t = TensorType((total,), dtype)
    new.append(Op("concatenate", tuple(flats), (cat,), (cat_t,), Attrs(dimension=0), first.loc))
    reduced = fresh_id()
    new.append(replace(first, inputs=(cat,), outputs=(reduced,), types=(cat_t,)))
    offset = 0
    for m in members:
        t = m.types[0]
        part = fresh_id()
        new.append(Op("slice", (reduced,), (part,), (TensorType((t.size,), dtype),),
                      Attrs(start_indices=(offset,), limit_indices=(offset + t.size,),
                            strides=(1,)), m.loc))
        new.append(Op("reshape", (part,), m.outputs, m.types, Attrs(new_sizes=t.shape), m.loc))
        offset += t.size
    record = CollectiveRecord(
        "all_reduce", first.attrs["axes"], cat_t.nbytes, cat_t.shape, dtype, first.loc,
        f"bucket of {len(members)} all-reduces ({', '.join(sorted({m.loc for m in members}))})",
        value=reduced)
    return new, record

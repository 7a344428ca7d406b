"""Collective optimisation: independent all-reduces over the same axes, kind and dtype
are combined into one bucket (flatten, concatenate, one all-reduce, split back);
`unbucket` is its inverse, for device batching. The subject of both is the all-reduce
bucket pattern, so they name its ops.

Members must not depend on each other. The program is re-scheduled so every member's
input is computed before the bucket and every user of a member runs after it, so
data-parallel gradients cost one collective instead of one per parameter.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from partitioner.spec import MeshShape
from spmd.collective_record import CollectiveRecord
from spmd.ir.graph import Attrs, Graph, Op, fresh_id
from spmd.ir.types import TensorType
from spmd.ops.collective import REDUCERS

BUCKET_BYTES = 64 << 20  # a cap like XLA's all-reduce combiner threshold


def _descendants(ops: list[Op], start: int) -> set[int]:
    """Indices of ops that (transitively) use the outputs of ops[start]."""
    reached = set(ops[start].outputs)
    found: set[int] = set()
    for i in range(start + 1, len(ops)):
        if reached & set(ops[i].inputs):
            found.add(i)
            reached |= set(ops[i].outputs)
    return found


def combine_all_reduces(
    program: Graph,
    records: list[CollectiveRecord],
    mesh: MeshShape,
) -> tuple[Graph, list[CollectiveRecord]]:
    ops = list(program.ops)
    candidates = [i for i, op in enumerate(ops) if op.name == "all_reduce"]
    groups: dict[tuple, list[int]] = {}
    for i in candidates:
        op = ops[i]
        groups.setdefault(
            (op.attrs["axes"], op.attrs.get("kind", "sum"), op.types[0].dtype), []
        ).append(i)
    buckets: list[list[int]] = []
    for members in groups.values():
        if len(members) < 2:
            continue
        desc = {i: _descendants(ops, i) for i in members}
        current: list[int] = []
        size = 0
        for i in members:
            nbytes = ops[i].types[0].nbytes
            independent = all(i not in desc[m] for m in current)
            if current and (not independent or size + nbytes > BUCKET_BYTES):
                if len(current) > 1:
                    buckets.append(current)
                current, size = [], 0
            current.append(i)
            size += nbytes
        if len(current) > 1:
            buckets.append(current)
    if not buckets:
        return program, records
    new_records = list(records)
    for members in [[ops[i] for i in bucket] for bucket in buckets]:  # before any reordering
        if _joined(ops, members):
            continue
        ops, record = _apply(ops, members)
        merged = {m.outputs[0] for m in members}
        new_records = [r for r in new_records if r.value not in merged] + [record]
    return program.replace(ops=tuple(ops)), new_records


def _joined(ops: list[Op], members: list[Op]) -> bool:
    """Whether a member now depends on another: an earlier bucket (of other axes) merged an
    all-reduce downstream of one member with one upstream of another (no order exists)."""
    member_ids = {id(m) for m in members}
    reached: set[int] = set()
    for op in ops:
        if reached & set(op.inputs):
            if id(op) in member_ids:
                return True
            reached |= set(op.outputs)
        elif id(op) in member_ids:
            reached |= set(op.outputs)
    return False


def _apply(ops: list[Op], members: list[Op]) -> tuple[list[Op], CollectiveRecord]:
    """Schedule: everything not downstream of a member, the bucket, then the rest."""
    member_ids = {id(m) for m in members}
    downstream: set[int] = set()
    reached = {v for m in members for v in m.outputs}
    for i, op in enumerate(ops):
        if id(op) not in member_ids and reached & set(op.inputs):
            downstream.add(i)
            reached |= set(op.outputs)
    before = [op for i, op in enumerate(ops) if i not in downstream and id(op) not in member_ids]
    after = [op for i, op in enumerate(ops) if i in downstream]
    bucket, record = _bucket_ops(members)
    return before + bucket + after, record


def _bucket_ops(members: list[Op]) -> tuple[list[Op], CollectiveRecord]:
    first = members[0]
    dtype = first.types[0].dtype
    new: list[Op] = []
    flats = []
    for m in members:
        t = m.types[0]
        flat = fresh_id()
        new.append(
            Op(
                "reshape",
                m.inputs,
                (flat,),
                (TensorType((t.size,), dtype),),
                Attrs(new_sizes=(t.size,)),
                m.loc,
            )
        )
        flats.append(flat)
    total = sum(m.types[0].size for m in members)
    cat, reduced = fresh_id(), fresh_id()
    cat_t = TensorType((total,), dtype)
    new.append(Op("concatenate", tuple(flats), (cat,), (cat_t,), Attrs(dimension=0), first.loc))
    new.append(replace(first, inputs=(cat,), outputs=(reduced,), types=(cat_t,)))
    offset = 0
    for m in members:
        t = m.types[0]
        part = fresh_id()
        new.append(
            Op(
                "slice",
                (reduced,),
                (part,),
                (TensorType((t.size,), dtype),),
                Attrs(start_indices=(offset,), limit_indices=(offset + t.size,), strides=(1,)),
                m.loc,
            )
        )
        new.append(Op("reshape", (part,), m.outputs, m.types, Attrs(new_sizes=t.shape), m.loc))
        offset += t.size
    lines = ", ".join(sorted({m.loc for m in members if m.loc}))
    record = CollectiveRecord(
        "all_reduce",
        first.attrs["axes"],
        cat_t.nbytes,
        cat_t.shape,
        dtype,
        first.loc,
        f"bucket of {len(members)} all-reduces ({lines})",
        value=reduced,
        group_size=first.attrs["group_size"],
    )
    return new, record


def unbucket(program: Graph) -> Graph:
    """Split each all-reduce bucket (`_bucket_ops`: concatenate -> all_reduce -> slices)
    back into one all-reduce per member, for device batching (partitioner/device_batching.py).
    Batched, an all-reduce is a reduce and a broadcast on the device axis, so a bucket only
    adds the concatenate's copy and strided slices of the device-major result (copied again
    by their users); elementwise reduce kinds commute with concatenation, so the values are
    the same."""
    producers = program.producers
    users = program.users()
    results = set(program.results)
    replaced: dict[int, list[Op]] = {}  # id of an op -> ops in its place (empty: dropped)
    for op in program.ops:
        split = _split_bucket(op, producers, users, results, program.types)
        if split is None:
            continue
        concatenate, slices, members = split
        replaced[id(concatenate)] = []
        replaced[id(op)] = members
        replaced.update({id(s): [] for s in slices})
    if not replaced:
        return program
    ops = [new for op in program.ops for new in replaced.get(id(op), [op])]
    return program.replace(ops=tuple(ops))


def _split_bucket(
    op: Op,
    producers: dict[int, Op],
    users: dict[int, list[Op]],
    results: set[int],
    types: dict[int, Any],
) -> tuple[Op, list[Op], list[Op]] | None:
    """(the concatenate, the slices, one all-reduce per piece) when `op` is a bucket whose
    result is only read by slices that pick the pieces back out, else None."""
    if op.name != "all_reduce" or op.attrs.get("kind", "sum") not in REDUCERS:
        return None
    concatenate = producers.get(op.inputs[0])
    if (
        concatenate is None
        or concatenate.name != "concatenate"
        or len(users.get(concatenate.outputs[0], [])) != 1
        or op.types[0].ndim != 1
        or concatenate.outputs[0] in results
        or op.outputs[0] in results
    ):
        return None
    pieces, offset = {}, 0
    for v in concatenate.inputs:
        size = types[v].size
        pieces[(offset, offset + size)] = v
        offset += size
    slices = users.get(op.outputs[0], [])
    members = []
    for s in slices:
        if s.name != "slice" or tuple(s.attrs["strides"]) != (1,):
            return None
        bounds = (s.attrs["start_indices"][0], s.attrs["limit_indices"][0])
        if bounds not in pieces:
            return None
        members.append(replace(op, inputs=(pieces[bounds],), outputs=s.outputs, types=s.types))
    return concatenate, slices, members

"""Partitioning of control flow: scan, cond and while_loop bodies become per-device
sub-programs, partitioned recursively (through the Partitioner's `partition_body`) with the
layouts their operands already have.

A carry keeps one layout across iterations (the body's carry results are resharded to
the layout the carry came in with), and the scan dim of xs/ys is never sharded. A scan
result the body would leave replicated is asked for in the layout its consumers outside
want, else in a same-shaped body input's (the weight's): a weight's gradient summed over
the batch axes is then reduce-scattered to the weight's FSDP layout, not all-reduced.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from partitioner.spec import AxisTuple, ShardSpec
from spmd.collective_record import CollectiveRecord
from spmd.ir.graph import Graph, Op

if TYPE_CHECKING:
    from partitioner.partition import Partitioner

Dims = tuple[AxisTuple, ...]


def _current(
    p: Partitioner, op: Op, values: Sequence[int], drop_lead: Sequence[bool]
) -> list[Dims]:
    """Each operand as it is (pending sums resolved), with the leading dim unsharded where
    asked (the scan dim of xs)."""
    out = []
    for v, lead in zip(values, drop_lead):
        dims = p.env[v][1].dims
        if lead and dims and dims[0]:
            dims = ((),) + dims[1:]
        out.append(tuple(dims))
    return out


def _inner_records(p: Partitioner, records: list[CollectiveRecord], what: str) -> None:
    for r in records:
        p.b.records.append(
            CollectiveRecord(
                r.kind,
                r.axes,
                r.bytes,
                r.shape,
                r.dtype,
                r.loc,
                f"{r.reason} (in {what})",
                value=r.value,
                group_size=r.group_size,
            )
        )


def partition_scan(p: Partitioner, op: Op) -> None:
    a = op.attrs
    nc, ncar = a["num_consts"], a["num_carry"]
    fixed = nc + ncar
    operands = list(op.inputs)
    dims = _current(p, op, operands, [i >= fixed for i in range(len(operands))])
    body = a["body"]
    ys = len(body.results) - ncar
    body_in = dims[:fixed] + [d[1:] for d in dims[fixed:]]
    trial = p.partition_body(body, body_in, [None] * (ncar + ys))
    want = _result_layouts(p, op, body, body_in, [s.dims for s in trial.result_specs], ncar)
    # A carry that starts replicated takes the layout the body gives it (a gradient
    # accumulator starts as zeros but should stay sharded like its parameter).
    for i in range(ncar):
        if not any(dims[nc + i]):
            dims[nc + i] = want[i] or trial.result_specs[i].dims
    local_in = [p.operand(v, d, op.loc, "scan operand") for v, d in zip(operands, dims)]
    body_in = dims[:fixed] + [d[1:] for d in dims[fixed:]]
    sub = p.partition_body(body, body_in, list(dims[nc:fixed]) + want[ncar:])
    _inner_records(p, sub.records, f"scan body, x{a['length']}")
    outs = p.b.emit("scan", local_in, op.loc, **{**a, "body": sub.program})
    out_dims = list(dims[nc:fixed]) + [((),) + s.dims for s in sub.result_specs[ncar:]]
    for v, lv, d in zip(op.outputs, outs, out_dims):
        p.bind_result(v, lv, ShardSpec(d))


def _result_layouts(
    p: Partitioner, op: Op, body: Graph, body_in: list[Dims], got: list[Dims], ncar: int
) -> list[Dims | None]:
    """Per body result the body leaves less sharded than it could be (a weight's gradient
    all-reduced over the batch axes: replicated), the layout to ask for instead: what the
    scan's consumers want, else a same-shaped body input's (the weight's). Asking for it
    lets the pending sum be reduce-scattered. None: keep what the body gives."""
    out: list[Dims | None] = []
    for i, (v, have) in enumerate(zip(body.results, got)):
        outer = p.dims_of.get(op.outputs[i])
        hints = [outer if i < ncar or outer is None else outer[1:]]
        hints += [
            d for u, d in zip(body.params, body_in) if body.types[u].shape == body.types[v].shape
        ]
        out.append(next((tuple(h) for h in hints if h is not None and _extends(have, h)), None))
    return out


def _extends(have: Dims, hint: Dims) -> bool:
    """hint shards more than `have` and keeps every dim `have` shards where it is."""
    more = any(h and not d for d, h in zip(have, hint))
    return more and all(not d or d == h for d, h in zip(have, hint))


def partition_cond(p: Partitioner, op: Op) -> None:
    branches = op.attrs["branches"]
    index = p.operand(op.inputs[0], (), op.loc, "cond index")
    operands = list(op.inputs[1:])
    dims = _current(p, op, operands, [False] * len(operands))
    local_in = [p.operand(v, d, op.loc, "cond operand") for v, d in zip(operands, dims)]
    first = p.partition_body(branches[0], dims, [None] * len(branches[0].results))
    out_dims = [s.dims for s in first.result_specs]
    subs = [first] + [p.partition_body(g, dims, out_dims) for g in branches[1:]]
    for i, sub in enumerate(subs):
        _inner_records(p, sub.records, f"cond branch {i}")
    outs = p.b.emit("cond", [index] + local_in, op.loc, branches=tuple(s.program for s in subs))
    for v, lv, d in zip(op.outputs, outs, out_dims):
        p.bind_result(v, lv, ShardSpec(d))


def partition_while(p: Partitioner, op: Op) -> None:
    a = op.attrs
    ncc, nbc = a["cond_num_consts"], a["body_num_consts"]
    operands = list(op.inputs)
    dims = _current(p, op, operands, [False] * len(operands))
    local_in = [p.operand(v, d, op.loc, "while_loop operand") for v, d in zip(operands, dims)]
    carry = dims[ncc + nbc :]
    cond = p.partition_body(a["cond_graph"], dims[:ncc] + carry, [()])
    body = p.partition_body(a["body_graph"], dims[ncc : ncc + nbc] + carry, list(carry))
    _inner_records(p, cond.records, "while_loop cond")
    _inner_records(p, body.records, "while_loop body")
    outs = p.b.emit(
        "while_loop",
        local_in,
        op.loc,
        **{**a, "cond_graph": cond.program, "body_graph": body.program},
    )
    for v, lv, d in zip(op.outputs, outs, carry):
        p.bind_result(v, lv, ShardSpec(d))

"""Cost units of one graph: ops grouped into XLA-like fusions, each with FLOPs, bytes and time.

Elementwise and view ops fuse into a single elementwise or reduce consumer, so their
intermediates never touch HBM. Imports only the IR core and this package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from spmd.errors import SimulationError
from spmd.ir.graph import Graph, Op
from spmd.ops.attention import attention_flops

from .chips import ChipSpec
from .cost_model import collective_time, op_time
from .lower import costing
from .topology import Topology

CONSUMER_KINDS = ("elementwise", "reduce", "view")


@dataclass
class Unit:
    """One scheduled piece of work: a fusion, a matmul, a copy, a collective or a control op."""

    name: str
    kind: str
    loc: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    flops: float = 0.0
    bytes: float = 0.0
    time: float = 0.0
    axes: tuple[str, ...] = ()
    op: Op | None = None  # the control op whose sub-graphs the scheduler walks
    producer: bool = False  # can fuse into its consumer (its root is elementwise or a view)
    mxu: tuple[int, int, int] | None = None  # a matmul's (M, N, K), to re-price it fused
    mxu_flops: float = 0.0  # the matmul's own FLOPs (FLOPs of fused prologue ops aside)
    lane_elements: float = 0.0  # elements moved across vector lanes (transposes)
    members: int = 1  # ops fused into this unit
    dtype: str = "float32"


def _nbytes(graph: Graph, values: tuple[int, ...] | list[int]) -> int:
    types = graph.types
    return sum(types[v].nbytes for v in values if v in types)


def matmul_dims(op: Op, graph: Graph) -> tuple[int, int, int, int]:
    """(batch, M, N, K) of a dot_general from its dimension numbers."""
    (lc, rc), (lb, _rb) = op.attrs["dimension_numbers"]
    lhs = graph.types[op.inputs[0]].shape
    rhs = graph.types[op.inputs[1]].shape
    batch = math.prod(lhs[d] for d in lb)
    k = math.prod(lhs[d] for d in lc)
    m = math.prod(d for i, d in enumerate(lhs) if i not in lc and i not in lb)
    n = math.prod(rhs) // max(1, k * batch)
    del rc
    return batch, m, n, k


def _peak_dtype(chip: ChipSpec, dtype: str) -> str:
    try:
        chip.peak_flops(dtype)
    except SimulationError:
        return "float32"
    return dtype


def _matmul(op: Op, graph: Graph, chip: ChipSpec) -> Unit:
    batch, m, n, k = matmul_dims(op, graph)
    flops = 2.0 * batch * m * n * k
    nbytes = _nbytes(graph, op.inputs) + _nbytes(graph, op.outputs)
    dtype = _peak_dtype(chip, graph.types[op.inputs[0]].dtype)
    if batch * m * n * k == 0:
        return Unit("dot_general", "matmul", op.loc, op.inputs, op.outputs, 0.0, nbytes, 0.0)
    seconds = op_time(chip, flops, nbytes, dtype, mxu_dims=(m, n, k))
    return Unit(
        "dot_general",
        "matmul",
        op.loc,
        op.inputs,
        op.outputs,
        flops,
        nbytes,
        seconds,
        mxu=(m, n, k),
        mxu_flops=flops,
        dtype=dtype,
    )


def _attention(op: Op, graph: Graph, chip: ChipSpec) -> Unit:
    """Fused attention: the S x S scores stay in VMEM, so HBM sees only the operands and
    results; FLOPs are the forward's two matmuls (the backward's five), causal tiles only."""
    q, k, v = (graph.types[x] for x in op.inputs[:3])
    flops = attention_flops(q.shape, k.shape, v.shape[-1], bool(op.attrs["is_causal"]))
    flops *= costing(op.name).flops_scale
    nbytes = _nbytes(graph, op.inputs) + _nbytes(graph, op.outputs)
    dtype = _peak_dtype(chip, q.dtype)
    seconds = op_time(chip, flops, nbytes, dtype, mxu_dims=(q.shape[-3], k.shape[-3], q.shape[-1]))
    return Unit(op.name, "attention", op.loc, op.inputs, op.outputs, flops, nbytes, seconds)


def _collective(
    op: Op, graph: Graph, chip: ChipSpec, topology: Topology, axis_names: tuple[str, ...]
) -> Unit:
    axes = op.attrs.get("axes", ())
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    indices = [axis_names.index(a) for a in axes if a in axis_names]
    nbytes = _nbytes(graph, op.inputs)
    shift = 1
    pairs = op.attrs.get("pairs", ())
    moving = [(s, d) for s, d in pairs if s != d]
    if "pairs" in op.attrs:  # a permute: its ring distance sets the hops
        size = int(op.attrs.get("group_size", 1)) or 1
        shift = (moving[0][1] - moving[0][0]) % size if moving else 0
    seconds = collective_time(chip, topology, op.name, nbytes, indices, shift=shift)
    return Unit(
        op.name, "collective", op.loc, op.inputs, op.outputs, 0.0, nbytes, seconds, axes=axes
    )


def _host_copy(op: Op, graph: Graph, chip: ChipSpec) -> Unit:
    """An offloaded residual moving between HBM and host memory over the chip's host link
    (its own stream: it overlaps compute that does not wait for it)."""
    nbytes = _nbytes(graph, op.outputs)
    time = nbytes / chip.host_bandwidth if chip.host_bandwidth > 0 else 0.0
    kind = "from_host" if op.attrs["memory"] == "device" else "to_host"
    return Unit(
        f"copy to {op.attrs['memory']}", kind, op.loc, op.inputs, op.outputs, 0, nbytes, time
    )


def _single(
    op: Op, graph: Graph, chip: ChipSpec, topology: Topology, axis_names: tuple[str, ...]
) -> Unit:
    row = costing(op.name)
    if row.memory and op.attrs.get("memory"):
        return _host_copy(op, graph, chip)
    if row.kind == "matmul":
        return _matmul(op, graph, chip)
    if row.kind == "attention":
        return _attention(op, graph, chip)
    if row.kind == "collective":
        return _collective(op, graph, chip, topology, axis_names)
    if row.kind in ("control", "free", "view"):
        return Unit(
            op.name,
            row.kind,
            op.loc,
            op.inputs,
            op.outputs,
            op=op if row.kind == "control" else None,
            producer=row.kind == "view",
        )
    nbytes = _nbytes(graph, op.inputs) + _nbytes(graph, op.outputs)
    if row.in_place >= 0:
        nbytes = 2 * _nbytes(graph, op.inputs[row.in_place : row.in_place + 1])
    size = sum(graph.types[v].size for v in (op.inputs[:1] if row.kind == "reduce" else op.outputs))
    flops = row.flops_per_element * size
    return Unit(
        op.name,
        row.kind,
        op.loc,
        op.inputs,
        op.outputs,
        flops,
        nbytes,
        producer=row.kind == "elementwise" or row.lanes,
        lane_elements=float(size) if row.lanes else 0.0,
    )


def build_units(
    graph: Graph, chip: ChipSpec, topology: Topology, axis_names: tuple[str, ...], fuse: bool = True
) -> list[Unit]:
    """The graph's ops as cost units in program order (fusions replace their members)."""
    users = graph.users()
    results = set(graph.results)
    units: list[Unit | None] = []
    group_of: dict[int, int] = {}  # value id -> index of the unit that defines it
    members: dict[int, list[Op]] = {}
    dropped: dict[int, Unit] = {}  # producers fused into every consumer (copied into each)
    kinds = {id(op): costing(op.name).kind for op in graph.ops}
    for op in graph.ops:
        unit = _single(op, graph, chip, topology, axis_names)
        absorbed: list[int] = []
        if fuse and unit.kind in (*CONSUMER_KINDS, "matmul"):
            for v in dict.fromkeys(op.inputs):
                index = group_of.get(v)
                if index is None or index in absorbed:
                    continue
                producer = units[index] or dropped.get(index)
                if producer is not None and _fusible(producer, op, users, results, kinds):
                    absorbed.append(index)
        if absorbed:
            parts = [units[i] or dropped[i] for i in absorbed]
            for i in absorbed:
                dropped[i] = parts[absorbed.index(i)]
                units[i] = None
            unit = _merge(parts, unit, [members[i] for i in absorbed], op)
        index = len(units)
        units.append(unit)
        members[index] = [m for i in absorbed for m in members[i]] + [op]
        for v in unit.outputs:
            group_of[v] = index
        for v in op.outputs:
            group_of[v] = index
    done = [u for u in units if u is not None]
    for u in done:
        if u.kind in ("elementwise", "reduce", "copy", "fusion"):
            _price(u, graph, chip)
        elif u.kind == "matmul" and u.mxu is not None and u.members > 1:
            # a matmul with fused operand producers: it reads their inputs instead, and the
            # VPU work runs beside the MXU (XLA's fused convolution)
            u.bytes = _nbytes(graph, u.inputs) + _nbytes(graph, u.outputs)
            u.time = op_time(chip, u.mxu_flops, u.bytes, u.dtype, mxu_dims=u.mxu)
    return done


FUSIBLE_USERS = (*CONSUMER_KINDS, "matmul")


def _fusible(
    producer: Unit, op: Op, users: dict[int, list[Op]], results: set[int], kinds: dict[int, str]
) -> bool:
    """Whether `op` fuses `producer` in: its only consumer, or (as XLA duplicates a cheap
    elementwise producer) every consumer of it can fuse it."""
    if not producer.producer or any(o in results for o in producer.outputs):
        return False
    consumers = [u for o in producer.outputs for u in users.get(o, [])]
    if all(u is op for u in consumers):
        return True
    # copies only of single ops, or of a small fusion into elementwise and reduce consumers
    # (XLA recomputes the loss's convert-sub-exp in each rather than keep an f32 [B, S, V];
    # a matmul takes a multi-consumer operand from HBM): copying big fusions into fusions
    # would grow them exponentially
    if producer.kind == "fusion" and producer.members <= 4:
        return all(kinds[id(u)] in CONSUMER_KINDS for u in consumers)
    return producer.kind == "elementwise" and all(kinds[id(u)] in FUSIBLE_USERS for u in consumers)


def _merge(parts: list[Unit], root: Unit, member_ops: list[list[Op]], op: Op) -> Unit:
    inside = {v for p in parts for v in p.outputs}
    inputs = tuple(
        dict.fromkeys(
            [v for p in parts for v in p.inputs] + [v for v in root.inputs if v not in inside]
        )
    )
    kinds = {p.kind for p in parts} | {root.kind}
    count = sum(len(m) for m in member_ops) + 1
    kind = "fusion" if kinds - {"view"} and count > 1 else root.kind
    if root.kind == "matmul":
        kind = "matmul"
    name = f"fusion[{count}]:{root.name}" if kind in ("fusion", "matmul") else root.name
    return Unit(
        name,
        kind,
        op.loc,
        inputs,
        root.outputs,
        sum(p.flops for p in parts) + root.flops,
        producer=root.producer,
        mxu=root.mxu,
        mxu_flops=root.mxu_flops,
        dtype=root.dtype,
        lane_elements=sum(p.lane_elements for p in parts) + root.lane_elements,
        members=count,
    )


def _price(unit: Unit, graph: Graph, chip: ChipSpec) -> None:
    """Roofline of an elementwise/reduce/copy/fusion unit: HBM traffic vs the elements the
    VPU streams (its largest operand or result). Its FLOPs are reported, not timed: the
    VPU's rate per element hardly depends on the op (libtpu prices exp like add). On a
    calibrated chip the elements a fused transpose moves across lanes add at the XLU's
    rate (libtpu prices a.T + 1 above a + 1). A lone reduce streams at the chip's reduce
    rate, and a lone elementwise op reads each operand as big as its stream past the first
    from HBM before it (libtpu prices a + b as exp(a) plus b's read). Both are fitted to
    libtpu's single-op kernels only: it prices fusions by other rules (v6e, 2^24 bf16:
    exp(a)+b 0.52x and a+b+c 0.61x of exp(a)), so fusions keep the VPU rate."""
    if unit.kind != "copy":
        unit.bytes = _nbytes(graph, unit.inputs) + _nbytes(graph, unit.outputs)
    types = graph.types
    elements = max((types[v].size for v in (*unit.inputs, *unit.outputs) if v in types), default=0)
    flops = 0.0 if chip.vpu_elements_per_cycle else unit.flops  # ideal chip: FLOPs at f32 peak
    streamed = elements
    if unit.kind == "reduce" and chip.reduce_elements_per_cycle:
        # op_time streams at the VPU's rate: scale the elements to the reduce rate
        streamed = elements * chip.vpu_elements_per_cycle / chip.reduce_elements_per_cycle
    unit.time = op_time(chip, flops, unit.bytes, "float32", elements=streamed)
    if unit.kind == "elementwise" and chip.vpu_elements_per_cycle:
        ins = dict.fromkeys(v for v in unit.inputs if v in types)  # x + x reads x once
        full = [types[v].nbytes for v in ins if types[v].size == elements]
        unit.time += sum(full[1:]) / (chip.hbm_bandwidth * chip.hbm_efficiency)
    if chip.xlu_elements_per_cycle and unit.lane_elements:
        unit.time += unit.lane_elements / (chip.xlu_elements_per_cycle * chip.clock_hz)

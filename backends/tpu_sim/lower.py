"""How each registered op is costed on the simulated TPU: one row per op, keyed by registry name.

No rules here, only data; backends/tpu_sim/simulate.py reads the rows. Imports nothing of ours.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Costing:
    """One row: the cost class of an op and FLOPs per output element where that applies.

    kinds: "elementwise" (VPU, flops_per_element x output size, fusible), "matmul" (MXU
    roofline with padding), "attention" (fused attention: matmul FLOPs, operand bytes),
    "reduce" (one FLOP per input element, fusible as a consumer),
    "copy" (reads and writes HBM, no FLOPs), "view" (free: a layout change XLA folds
    away), "collective" (ICI time from the torus model), "control" (sub-graphs are walked),
    "free" (nothing is charged).
    """

    kind: str
    flops_per_element: float = 0.0
    note: str = ""
    lanes: bool = False  # moves elements across vector lanes (the XLU), fuses into its consumer
    walk: str = "body"  # control ops: "scan" (body x length), "cond" (costliest branch),
    # "while" (cond and body x while_iterations), "body" (its one body once)
    flops_scale: float = 1.0  # attention: its FLOPs over the forward's two matmuls
    in_place: int = -1  # the operand a copy reads and writes in place (-1: reads all, writes all)
    memory: bool = False  # with a `memory` attr: a copy over the host link (remat offload)


ELEMENTWISE = Costing("elementwise", 1.0)
# Transcendentals run on the VPU/EUP as a short polynomial; a rough per-element count.
TRANSCENDENTAL = Costing("elementwise", 10.0, "transcendental: ~10 VPU ops per element")
COMPARE = Costing("elementwise", 1.0)
MATMUL = Costing("matmul", note="2*B*M*N*K FLOPs; M, N, K pad up to the MXU size")
REDUCE = Costing("reduce", 1.0, "one FLOP per input element")
COPY = Costing("copy", note="reads its inputs and writes its output through HBM")
VIEW = Costing("view", note="layout only: XLA folds it into its neighbours")
COLLECTIVE = Costing("collective", note="torus ring model in cost_model.collective_cost")
CONTROL = Costing("control", note="sub-graphs walked: scan body x length, cond max of branches")
FREE = Costing("free", note="no device work")

LOWERINGS: dict[str, Costing] = {
    **{
        name: ELEMENTWISE
        for name in (
            "add",
            "sub",
            "mul",
            "div",
            "rem",
            "max",
            "min",
            "neg",
            "abs",
            "sign",
            "floor",
            "ceil",
            "round",
            "and",
            "or",
            "xor",
            "not",
            "shift_left",
            "shift_right",
            "select",
            "convert_element_type",
            "is_finite",
            "stop_gradient",
            "broadcast_in_dim",
            "iota",
            "sqrt",
            "rsqrt",
        )
    },
    **{name: COMPARE for name in ("eq", "ne", "lt", "le", "gt", "ge")},
    **{
        name: TRANSCENDENTAL
        for name in (
            "exp",
            "expm1",
            "log",
            "log1p",
            "tanh",
            "logistic",
            "sin",
            "cos",
            "tan",
            "erf",
            "pow",
            "atan2",
        )
    },
    "dot_general": MATMUL,
    "reduce": REDUCE,
    "argmax": REDUCE,
    "argmin": REDUCE,
    "cumsum": Costing("reduce", 1.0, "a scan along one axis: one FLOP per element"),
    "sort": Costing("reduce", 10.0, "sorting network: ~log2(n) compare passes per element"),
    "argsort": Costing("reduce", 10.0, "sorting network: ~log2(n) compare passes per element"),
    "reshape": VIEW,
    "sharding_constraint": VIEW,
    "transpose": Costing(
        "copy",
        note="through the cross-lane unit; XLA fuses it into an elementwise consumer",
        lanes=True,
    ),
    "slice": COPY,
    "pad": Costing("elementwise", 0.0, "XLA fuses a pad into its consumer"),
    "concatenate": COPY,
    "rev": COPY,
    "gather": COPY,
    "scatter_add": Costing("copy", note="reads operand and updates, writes the operand"),
    "dynamic_slice": COPY,
    "dynamic_update_slice": Costing(
        "copy", note="in place: reads and writes the update only", in_place=1
    ),
    "constant": FREE,
    "axis_index": FREE,
    "all_reduce": COLLECTIVE,
    "all_gather": COLLECTIVE,
    "reduce_scatter": COLLECTIVE,
    "all_to_all": COLLECTIVE,
    "collective_permute": COLLECTIVE,
    "scan": Costing("control", note="its body x length, carries chained", walk="scan"),
    "cond": Costing("control", note="its costliest branch", walk="cond"),
    "while_loop": Costing(
        "control", note="cond and body x while_iterations (trip count unknown)", walk="while"
    ),
    "shard_map": CONTROL,
    "remat": CONTROL,
    "checkpoint_name": Costing(
        "view",
        note="a name; with `memory` an offloaded residual's copy over the host link",
        memory=True,
    ),
    "dot_product_attention": Costing(
        "attention",
        note="fused (flash): QK^T and PV on the MXU (causal: only kept tiles); "
        "HBM traffic of q, k, v, out and lse only",
    ),
    "dot_product_attention_bwd": Costing(
        "attention",
        note="fused backward: recomputes QK^T, then dV, dP, dQ, dK (5 matmuls "
        "to the forward's 2); HBM traffic of its operands and results",
        flops_scale=2.5,
    ),
}


def costing(name: str) -> Costing:
    """The row for an op; an op without one is costed as a copy (tests flag the gap)."""
    return LOWERINGS.get(name, COPY)

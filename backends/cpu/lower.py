"""How each registered op runs on the CPU backend: one row per op, keyed by registry name.

FUSED ops become native loops (backends/cpu/codegen.py); BLAS uses numpy matmul into a
planned buffer; VIEW returns a numpy view; REFERENCE runs the op's numpy reference through
the fallback; RUNTIME ops (collectives) are executed by the runtime's `run_op`.
"""

from __future__ import annotations

from dataclasses import dataclass

from backends.common.fusion import ELEMENTWISE


@dataclass(frozen=True)
class Lowering:
    """One backend row: how the op executes and, where it is not native, why."""

    kind: str  # "fused" | "blas" | "view" | "constant" | "reference" | "runtime"
    note: str = ""


FUSED = Lowering("fused")
BLAS = Lowering("blas", "np.matmul into a planned buffer (batched dims as batched matmul)")
VIEW = Lowering("view", "a numpy view where the layout allows, else a copy")
CONSTANT = Lowering("constant", "the attribute array, made once at compile time")
REFERENCE = Lowering("reference", "numpy reference through the fallback (not lowered yet)")
RUNTIME = Lowering("runtime", "executed by the runtime's run_op (communication)")
CONTROL = Lowering("reference", "control flow: the fallback runs the sub-graphs")
NATIVE = Lowering("native", "tiled online-softmax in blocked numpy (backends/cpu/attention.py)")

LOWERINGS: dict[str, Lowering] = {
    **{name: FUSED for name in sorted(ELEMENTWISE)},
    "pow": Lowering("fused", "integer pow runs through the reference (numpy raises on "
                             "negative exponents); float pow is fused"),
    "broadcast_in_dim": FUSED,
    "iota": FUSED,
    "reduce": FUSED,
    "constant": CONSTANT,
    "dot_general": BLAS,
    "reshape": VIEW,
    "transpose": VIEW,
    "slice": VIEW,
    "rev": VIEW,
    "sharding_constraint": VIEW,
    "pad": REFERENCE,
    "concatenate": REFERENCE,
    "argmax": REFERENCE,
    "argmin": REFERENCE,
    "cumsum": REFERENCE,
    "sort": REFERENCE,
    "argsort": REFERENCE,
    "gather": REFERENCE,
    "scatter_add": REFERENCE,
    "dynamic_slice": REFERENCE,
    "dynamic_update_slice": REFERENCE,
    "scan": CONTROL,
    "cond": CONTROL,
    "while_loop": CONTROL,
    "shard_map": CONTROL,
    "remat": Lowering("reference", "inlined before lowering (spmd/passes/inline_remat.py); "
                                   "eagerly the fallback runs the body"),
    "checkpoint_name": VIEW,
    "dot_product_attention": NATIVE,
    "dot_product_attention_bwd": NATIVE,
    "all_reduce": RUNTIME,
    "all_gather": RUNTIME,
    "reduce_scatter": RUNTIME,
    "all_to_all": RUNTIME,
    "collective_permute": RUNTIME,
    "axis_index": RUNTIME,
}


def lowering(name: str) -> Lowering:
    """The row for an op; an op registered after this table was written runs via the
    fallback (tests flag the missing row)."""
    return LOWERINGS.get(name, REFERENCE)

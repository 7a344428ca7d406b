"""How each registered op runs on the CPU backend: one row per op, keyed by registry name.

FUSED ops become native loops (backends/cpu/codegen.py; an elementwise op's scalar code is
its row of backends/cpu/mathlib.py SCALAR); BLAS uses numpy matmul into a planned buffer;
a view row's `view(**attrs)` gives the function from the operand to its numpy view; LOOP
runs a scan's body compiled once per step; REFERENCE runs the op's numpy reference through
the fallback; RUNTIME ops (collectives) are executed by the runtime's `run_op`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from backends.common.fusion import ELEMENTWISE


@dataclass(frozen=True)
class Lowering:
    """One backend row: how the op executes and, where it is not native, why."""

    kind: str  # fused | blas | view | constant | loop | native | reference | runtime
    note: str = ""
    view: Callable[..., Callable[[np.ndarray], np.ndarray]] | None = None  # (**attrs) -> x -> view


def _view(make: Callable[..., Callable[[np.ndarray], np.ndarray]]) -> Lowering:
    return Lowering("view", "a numpy view where the layout allows, else a copy", make)


def _slice(*, start_indices: Any, limit_indices: Any, strides: Any) -> Callable[..., Any]:
    index = tuple(slice(s, e, st) for s, e, st in zip(start_indices, limit_indices, strides))
    return lambda x: x[index]


def _identity(**_: Any) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: x


FUSED = Lowering("fused")
BLAS = Lowering("blas", "np.matmul into a planned buffer (batched dims as batched matmul)")
CONSTANT = Lowering("constant", "the attribute array, made once at compile time")
REFERENCE = Lowering("reference", "numpy reference through the fallback (not lowered yet)")
RUNTIME = Lowering("runtime", "executed by the runtime's run_op (communication)")
CONTROL = Lowering("reference", "control flow: the fallback runs the sub-graphs")
NATIVE = Lowering("native", "tiled online-softmax in blocked numpy (backends/cpu/attention.py)")

LOWERINGS: dict[str, Lowering] = {
    **{name: FUSED for name in sorted(ELEMENTWISE)},
    "pow": Lowering(
        "fused",
        "integer pow runs through the reference (numpy raises on "
        "negative exponents); float pow is fused",
    ),
    "broadcast_in_dim": FUSED,
    "iota": FUSED,
    "reduce": FUSED,
    "constant": CONSTANT,
    "dot_general": BLAS,
    "reshape": _view(lambda *, new_sizes: lambda x: x.reshape(new_sizes)),
    "transpose": _view(lambda *, permutation: lambda x: np.transpose(x, permutation)),
    "slice": _view(_slice),
    "rev": _view(
        lambda *, dimensions: (lambda x: np.flip(x, dimensions)) if dimensions else (lambda x: x)
    ),
    "sharding_constraint": _view(_identity),
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
    "scan": Lowering("loop", "a Python loop around the body compiled once (native per step)"),
    "cond": CONTROL,
    "while_loop": CONTROL,
    "shard_map": CONTROL,
    "remat": Lowering(
        "reference",
        "inlined before lowering (spmd/passes/inline_remat.py); eagerly the fallback runs the body",
    ),
    "checkpoint_name": _view(_identity),
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

"""How each registered op runs on the GPU backend: one row per op, keyed by registry name.

FUSED ops become CUDA kernels (backends/gpu/codegen.py) over the shared fusion groups;
CUBLAS dots go through cuBLAS (gemmEx, f32 accumulation for half types); a view row is a cupy
view; REFERENCE copies to the host and runs the numpy reference; RUNTIME ops (collectives)
run through the runtime's `run_op` (NCCL on GPU meshes, collectives/nccl.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from backends.common.fusion import ELEMENTWISE


@dataclass(frozen=True)
class Lowering:
    """One backend row: how the op executes and, where it is not native, why."""

    kind: str  # "fused" | "cublas" | "view" | "constant" | "reference" | "runtime"
    note: str = ""
    view: Callable[..., Callable[[Any], Any]] | None = None  # (**attrs) -> x -> cupy view


def _view(make: Callable[..., Callable[[Any], Any]]) -> Lowering:
    return Lowering("view", "a cupy view where the layout allows, else a copy", make)


def _slice(*, start_indices: Any, limit_indices: Any, strides: Any) -> Callable[[Any], Any]:
    index = tuple(slice(s, e, st) for s, e, st in zip(start_indices, limit_indices, strides))
    return lambda x: x[index]


def _rev(*, dimensions: Any) -> Callable[[Any], Any]:
    if not dimensions:
        return lambda x: x
    return lambda x: x[
        tuple(slice(None, None, -1) if d in dimensions else slice(None) for d in range(x.ndim))
    ]


def _identity(**_: Any) -> Callable[[Any], Any]:
    return lambda x: x


FUSED = Lowering("fused")
CUBLAS = Lowering(
    "cublas",
    "cuBLAS gemmStridedBatchedEx (f32 accumulation for bf16/fp16); "
    "integer dots through cupy.matmul",
)
CONSTANT = Lowering("constant", "the attribute array, uploaded once at compile time")
REFERENCE = Lowering("reference", "host round trip through the numpy reference (not lowered yet)")
RUNTIME = Lowering("runtime", "executed by the runtime's run_op (NCCL on GPU meshes)")
CONTROL = Lowering("reference", "control flow: the fallback runs the sub-graphs")

LOWERINGS: dict[str, Lowering] = {
    **{name: FUSED for name in sorted(ELEMENTWISE)},
    "pow": Lowering("fused", "integer pow runs through the reference; float pow is fused"),
    "broadcast_in_dim": FUSED,
    "iota": FUSED,
    "reduce": Lowering(
        "fused",
        "sum/max/min/prod/and/or fused; a block per row with warp "
        "shuffles for long trailing reductions, a thread per row else",
    ),
    "constant": CONSTANT,
    "dot_general": CUBLAS,
    "reshape": _view(lambda *, new_sizes: lambda x: x.reshape(new_sizes)),
    "transpose": _view(lambda *, permutation: lambda x: x.transpose(permutation)),
    "slice": _view(_slice),
    "rev": _view(_rev),
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
    "scan": CONTROL,
    "cond": CONTROL,
    "while_loop": CONTROL,
    "shard_map": CONTROL,
    "remat": CONTROL,
    "checkpoint_name": _view(_identity),
    "dot_product_attention": REFERENCE,
    "dot_product_attention_bwd": REFERENCE,
    "all_reduce": RUNTIME,
    "all_gather": RUNTIME,
    "reduce_scatter": RUNTIME,
    "all_to_all": RUNTIME,
    "collective_permute": RUNTIME,
    "axis_index": RUNTIME,
}


def lowering(name: str) -> Lowering:
    """The row for an op; an op registered after this table was written runs via the
    fallback (the coverage test flags the missing row)."""
    return LOWERINGS.get(name, REFERENCE)

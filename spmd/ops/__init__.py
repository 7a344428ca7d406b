"""The op registry: every op of the IR, keyed by its lax name.

Each family file defines OPS; the registry is built here from all of them, so it
never matters which module is imported first.
"""

from __future__ import annotations

from spmd.ops import (
    attention,
    collective,
    contract,
    control,
    elementwise,
    index,
    reduce,
    remat,
    rng,
    shape,
    sort,
    spmd_map,
)
from spmd.ops.opdef import NONDIFF, ZERO_GRAD, Factors, OpDef

REGISTRY: dict[str, OpDef] = {}
for _family in (elementwise, reduce, shape, contract, index, control, collective, rng, spmd_map,
                sort, attention, remat):
    for _op in _family.OPS:
        if _op.name in REGISTRY:
            raise RuntimeError(f"op {_op.name!r} registered twice (this is a bug in spmd)")
        REGISTRY[_op.name] = _op

__all__ = ["NONDIFF", "REGISTRY", "ZERO_GRAD", "Factors", "OpDef"]

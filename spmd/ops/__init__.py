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
    shape,
    slicing,
    sort,
    spmd_map,
)
from spmd.ops.opdef import (
    NONDIFF,
    REGISTRY,
    ZERO_GRAD,
    AttrKind,
    Factors,
    Linearity,
    OpDef,
    Trait,
)

for _family in (
    elementwise,
    reduce,
    shape,
    slicing,
    contract,
    index,
    control,
    collective,
    spmd_map,
    sort,
    attention,
    remat,
):
    for _op in _family.OPS:
        if _op.name in REGISTRY:
            raise RuntimeError(f"op {_op.name!r} registered twice (this is a bug in spmd)")
        REGISTRY[_op.name] = _op

__all__ = [
    "NONDIFF",
    "REGISTRY",
    "ZERO_GRAD",
    "AttrKind",
    "Factors",
    "Linearity",
    "OpDef",
    "Trait",
    "has_trait",
]


def has_trait(name: str, trait: Trait) -> bool:
    """Whether the registered op `name` has the trait (False for names not registered)."""
    opdef = REGISTRY.get(name)
    return opdef is not None and opdef.has(trait)

"""Op lists for tests, taken from the registry (a new op is in them without editing tests)."""

from __future__ import annotations

from spmd.errors import SpmdError
from spmd.ir.types import TensorType
from spmd.ops import REGISTRY, Trait


def elementwise(arity: int, dtype: str) -> list[str]:
    """The elementwise ops (Trait.ELEMENTWISE, no attributes) whose type rule accepts
    `arity` operands of `dtype` (select: a bool predicate first)."""
    found = []
    for name, opdef in sorted(REGISTRY.items()):
        if not opdef.has(Trait.ELEMENTWISE):
            continue
        types = [TensorType((2,), dtype)] * arity
        try:
            opdef.infer(*types)
        except (SpmdError, TypeError):  # not an op of this signature (arity, dtype)
            pass
        else:
            found.append(name)
    return found

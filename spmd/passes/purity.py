"""Which ops passes must not merge, fold or delete: random numbers, effects, collectives
(Trait.IMPURE and Trait.PER_DEVICE on the op's registry entry)."""

from __future__ import annotations

from spmd.ir.opdef import REGISTRY, Trait, is_impure

__all__ = ["is_foldable", "is_impure"]


UNFOLDABLE = Trait.IMPURE | Trait.PER_DEVICE | Trait.ANNOTATION


def is_foldable(name: str) -> bool:
    """Not impure, not device-dependent, and not an annotation a later pass reads."""
    opdef = REGISTRY.get(name)
    return opdef is not None and not opdef.has(UNFOLDABLE)

"""An op's registry entry, `OpDef`, and the registry: defined in spmd/ir/opdef.py (below the
op families, so the engines their rules call import it alone), re-exported here."""

from __future__ import annotations

from spmd.ir.opdef import (
    NONDIFF,
    REGISTRY,
    ZERO_GRAD,
    AttrKind,
    Dims,
    Factors,
    Linearity,
    NumpyForm,
    OpDef,
    Public,
    Trait,
    is_impure,
)

__all__ = [
    "NONDIFF",
    "REGISTRY",
    "ZERO_GRAD",
    "AttrKind",
    "Dims",
    "Factors",
    "Linearity",
    "NumpyForm",
    "OpDef",
    "Public",
    "Trait",
    "is_impure",
]

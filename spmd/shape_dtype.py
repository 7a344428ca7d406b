"""ShapeDtypeStruct (JAX's name): an abstract value, shape and dtype and optional sharding.

jit's `lower` takes it for an argument; a call in spmd.sim's abstract mode returns it. It
lives below spmd.executables and spmd.api, which both handle it (spmd.api re-exports it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from spmd import dtypes
from spmd.ir.types import TensorType
from spmd.validate import check_shape


@dataclass(frozen=True, init=False)
class ShapeDtypeStruct:
    """An abstract argument for `lower`: shape, dtype and optional sharding."""

    shape: tuple[int, ...]
    dtype: Any
    sharding: Any = None
    weak_type: bool = False

    def __init__(self, shape: Any, dtype: Any, sharding: Any = None, weak_type: bool = False):
        # written out (not generated) so that errors find the caller's line
        object.__setattr__(self, "shape", check_shape("ShapeDtypeStruct", shape))
        dtypes.canonical(dtype)
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "sharding", sharding)
        object.__setattr__(self, "weak_type", weak_type)

    @property
    def aval(self) -> TensorType:
        return TensorType(tuple(self.shape), dtypes.canonical(self.dtype), self.weak_type)

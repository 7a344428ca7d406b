"""IR value types: a shape, a dtype name and JAX's weak-type bit. Imports no other IR module."""

from __future__ import annotations

import math
from dataclasses import dataclass

from spmd import dtypes


@dataclass(frozen=True)
class TensorType:
    """The static type of an IR value."""

    shape: tuple[int, ...]
    dtype: str
    weak: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * dtypes.itemsize(self.dtype)

    def with_shape(self, shape: tuple[int, ...]) -> TensorType:
        return TensorType(tuple(shape), self.dtype, self.weak)

    def with_dtype(self, dtype: str, weak: bool = False) -> TensorType:
        return TensorType(self.shape, dtype, weak)

    def strong(self) -> TensorType:
        return TensorType(self.shape, self.dtype, False)

    def __str__(self) -> str:
        dims = "x".join(str(d) for d in self.shape)
        weak = "~" if self.weak else ""
        return f"tensor<{dims}{'x' if dims else ''}{weak}{self.dtype}>"

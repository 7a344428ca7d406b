"""What Tracer and Array share: their type's properties, and the numpy layer's operators.

ArrayMethods holds what the type says (shape, dtype, ...). The operators and methods that
compute (`x + y`, `x[i]`, `x.sum()`, ...) are spmd.numpy functions, and spmd.numpy installs
them on this class when it is imported (spmd/numpy/methods.py), as jax.numpy does for
jax.Array: the core never imports the layer above it. The facade (`spmd.<name>`) and
spmd.api load spmd.numpy, so a user's Array or Tracer always has them.
"""

from __future__ import annotations

from typing import Any

from spmd import dtypes


class ArrayMethods:
    """Mixin: needs `.type` (a TensorType) on the instance."""

    __slots__ = ()

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape

    @property
    def dtype(self) -> Any:
        return dtypes.to_numpy(self.type.dtype)

    @property
    def weak_type(self) -> bool:
        return self.type.weak

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return self.type.size

    @property
    def aval(self) -> Any:
        return self.type

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d array")
        return self.shape[0]

    def __iter__(self) -> Any:
        if not self.shape:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self.shape[0]))

    def __pos__(self) -> Any:
        return self

    __hash__ = None  # type: ignore[assignment]  # == is elementwise (installed by spmd.numpy)

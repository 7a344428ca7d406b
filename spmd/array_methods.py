"""Python operators and methods shared by Tracer and Array, all via spmd.numpy."""

from __future__ import annotations

from typing import Any


def _np() -> Any:
    import spmd.numpy as snp

    return snp


class ArrayMethods:
    """Mixin: needs `.type` (a TensorType) on the instance."""

    __slots__ = ()

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape

    @property
    def dtype(self) -> Any:
        from spmd import dtypes

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

    def __add__(self, o: Any) -> Any:
        return _np().add(self, o)

    def __radd__(self, o: Any) -> Any:
        return _np().add(o, self)

    def __sub__(self, o: Any) -> Any:
        return _np().subtract(self, o)

    def __rsub__(self, o: Any) -> Any:
        return _np().subtract(o, self)

    def __mul__(self, o: Any) -> Any:
        return _np().multiply(self, o)

    def __rmul__(self, o: Any) -> Any:
        return _np().multiply(o, self)

    def __truediv__(self, o: Any) -> Any:
        return _np().true_divide(self, o)

    def __rtruediv__(self, o: Any) -> Any:
        return _np().true_divide(o, self)

    def __floordiv__(self, o: Any) -> Any:
        return _np().floor_divide(self, o)

    def __rfloordiv__(self, o: Any) -> Any:
        return _np().floor_divide(o, self)

    def __mod__(self, o: Any) -> Any:
        return _np().remainder(self, o)

    def __rmod__(self, o: Any) -> Any:
        return _np().remainder(o, self)

    def __pow__(self, o: Any) -> Any:
        return _np().power(self, o)

    def __rpow__(self, o: Any) -> Any:
        return _np().power(o, self)

    def __matmul__(self, o: Any) -> Any:
        return _np().matmul(self, o)

    def __rmatmul__(self, o: Any) -> Any:
        return _np().matmul(o, self)

    def __neg__(self) -> Any:
        return _np().negative(self)

    def __pos__(self) -> Any:
        return self

    def __abs__(self) -> Any:
        return _np().abs(self)

    def __invert__(self) -> Any:
        return _np().invert(self)

    def __and__(self, o: Any) -> Any:
        return _np().bitwise_and(self, o)

    def __rand__(self, o: Any) -> Any:
        return _np().bitwise_and(o, self)

    def __or__(self, o: Any) -> Any:
        return _np().bitwise_or(self, o)

    def __ror__(self, o: Any) -> Any:
        return _np().bitwise_or(o, self)

    def __xor__(self, o: Any) -> Any:
        return _np().bitwise_xor(self, o)

    def __rxor__(self, o: Any) -> Any:
        return _np().bitwise_xor(o, self)

    def __lt__(self, o: Any) -> Any:
        return _np().less(self, o)

    def __le__(self, o: Any) -> Any:
        return _np().less_equal(self, o)

    def __gt__(self, o: Any) -> Any:
        return _np().greater(self, o)

    def __ge__(self, o: Any) -> Any:
        return _np().greater_equal(self, o)

    def __eq__(self, o: object) -> Any:  # type: ignore[override]
        return _np().equal(self, o)

    def __ne__(self, o: object) -> Any:  # type: ignore[override]
        return _np().not_equal(self, o)

    __hash__ = None  # type: ignore[assignment]

    def __getitem__(self, idx: Any) -> Any:
        from spmd.numpy.indexing import getitem

        return getitem(self, idx)

    @property
    def at(self) -> Any:
        from spmd.numpy.indexing import AtIndexer

        return AtIndexer(self)

    @property
    def T(self) -> Any:
        return _np().transpose(self)

    def astype(self, dtype: Any) -> Any:
        return _np().astype(self, dtype)

    def reshape(self, *shape: Any, order: str = "C") -> Any:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _np().reshape(self, shape)

    def transpose(self, *axes: Any) -> Any:
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return _np().transpose(self, axes or None)

    def sum(self, axis: Any = None, keepdims: bool = False, dtype: Any = None) -> Any:
        return _np().sum(self, axis=axis, keepdims=keepdims, dtype=dtype)

    def mean(self, axis: Any = None, keepdims: bool = False) -> Any:
        return _np().mean(self, axis=axis, keepdims=keepdims)

    def max(self, axis: Any = None, keepdims: bool = False) -> Any:
        return _np().max(self, axis=axis, keepdims=keepdims)

    def min(self, axis: Any = None, keepdims: bool = False) -> Any:
        return _np().min(self, axis=axis, keepdims=keepdims)

    def prod(self, axis: Any = None, keepdims: bool = False) -> Any:
        return _np().prod(self, axis=axis, keepdims=keepdims)

    def argmax(self, axis: Any = None, keepdims: bool = False) -> Any:
        return _np().argmax(self, axis=axis, keepdims=keepdims)

    def argmin(self, axis: Any = None, keepdims: bool = False) -> Any:
        return _np().argmin(self, axis=axis, keepdims=keepdims)

    def var(self, axis: Any = None, keepdims: bool = False, ddof: int = 0) -> Any:
        return _np().var(self, axis=axis, keepdims=keepdims, ddof=ddof)

    def std(self, axis: Any = None, keepdims: bool = False, ddof: int = 0) -> Any:
        return _np().std(self, axis=axis, keepdims=keepdims, ddof=ddof)

    def squeeze(self, axis: Any = None) -> Any:
        return _np().squeeze(self, axis)

    def flatten(self) -> Any:
        return _np().reshape(self, (-1,))

    def ravel(self) -> Any:
        return _np().reshape(self, (-1,))

    def cumsum(self, axis: Any = None) -> Any:
        return _np().cumsum(self, axis=axis)

    def dot(self, o: Any) -> Any:
        return _np().dot(self, o)

    def swapaxes(self, a: int, b: int) -> Any:
        return _np().swapaxes(self, a, b)

    def clip(self, lo: Any = None, hi: Any = None) -> Any:
        return _np().clip(self, lo, hi)

"""The operators and methods of spmd.Array and Tracer, each a call of one spmd.numpy function.

spmd.numpy installs them on spmd.array_methods.ArrayMethods (the base both share) at the end
of its import, as jax.numpy does for jax.Array; it hands over its finished namespace, so the
methods call exactly the functions users call (`x @ y` is `spmd.numpy.matmul(x, y)`).
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

# operator -> spmd.numpy function; each is installed as __<op>__ and reflected as __r<op>__
BINARY = {
    "add": "add",
    "sub": "subtract",
    "mul": "multiply",
    "truediv": "true_divide",
    "floordiv": "floor_divide",
    "mod": "remainder",
    "pow": "power",
    "matmul": "matmul",
    "and": "bitwise_and",
    "or": "bitwise_or",
    "xor": "bitwise_xor",
}
# comparisons have no reflected form (Python swaps x < y into y > x itself)
COMPARISONS = {
    "lt": "less",
    "le": "less_equal",
    "gt": "greater",
    "ge": "greater_equal",
    "eq": "equal",
    "ne": "not_equal",
}
UNARY = {"neg": "negative", "abs": "abs", "invert": "invert"}
# reductions whose method takes (axis=None, keepdims=False)
AXIS_REDUCTIONS = ("mean", "max", "min", "prod", "argmax", "argmin")


def install_array_methods(cls: type, snp: ModuleType) -> None:
    """Give cls (ArrayMethods) numpy's operators and methods, calling the namespace snp."""
    for op, name in BINARY.items():
        setattr(cls, f"__{op}__", _binary(getattr(snp, name)))
        setattr(cls, f"__r{op}__", _reflected(getattr(snp, name)))
    for op, name in COMPARISONS.items():
        setattr(cls, f"__{op}__", _binary(getattr(snp, name)))
    for op, name in UNARY.items():
        setattr(cls, f"__{op}__", _unary(getattr(snp, name)))
    for name, member in _named_methods(snp).items():
        setattr(cls, name, member)


def _binary(fn: Callable[..., Any]) -> Callable[..., Any]:
    """x <op> other is fn(x, other)."""

    def method(self: Any, other: Any) -> Any:
        return fn(self, other)

    return method


def _unary(fn: Callable[..., Any]) -> Callable[..., Any]:
    """<op>x is fn(x)."""

    def method(self: Any) -> Any:
        return fn(self)

    return method


def _reflected(fn: Callable[..., Any]) -> Callable[..., Any]:
    """other <op> x (x on the right) is fn(other, x)."""

    def method(self: Any, other: Any) -> Any:
        return fn(other, self)

    return method


def _named_methods(snp: ModuleType) -> dict[str, Any]:
    """x.name(...): numpy's method names, with the arguments spmd.Array has always taken."""

    def getitem(self: Any, idx: Any) -> Any:
        return snp.getitem(self, idx)

    def at(self: Any) -> Any:
        return snp.indexing.AtIndexer(self)

    def transposed(self: Any) -> Any:
        return snp.transpose(self)

    def astype(self: Any, dtype: Any) -> Any:
        return snp.astype(self, dtype)

    def reshape(self: Any, *shape: Any, order: str = "C") -> Any:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return snp.reshape(self, shape)

    def transpose(self: Any, *axes: Any) -> Any:
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return snp.transpose(self, axes or None)

    def sum(self: Any, axis: Any = None, keepdims: bool = False, dtype: Any = None) -> Any:
        return snp.sum(self, axis=axis, keepdims=keepdims, dtype=dtype)

    def var(self: Any, axis: Any = None, keepdims: bool = False, ddof: int = 0) -> Any:
        return snp.var(self, axis=axis, keepdims=keepdims, ddof=ddof)

    def std(self: Any, axis: Any = None, keepdims: bool = False, ddof: int = 0) -> Any:
        return snp.std(self, axis=axis, keepdims=keepdims, ddof=ddof)

    def squeeze(self: Any, axis: Any = None) -> Any:
        return snp.squeeze(self, axis)

    def flatten(self: Any) -> Any:
        return snp.reshape(self, (-1,))

    def cumsum(self: Any, axis: Any = None) -> Any:
        return snp.cumsum(self, axis=axis)

    def dot(self: Any, o: Any) -> Any:
        return snp.dot(self, o)

    def swapaxes(self: Any, a: int, b: int) -> Any:
        return snp.swapaxes(self, a, b)

    def clip(self: Any, lo: Any = None, hi: Any = None) -> Any:
        return snp.clip(self, lo, hi)

    methods = {
        "__getitem__": getitem,
        "at": property(at),
        "T": property(transposed),
        "astype": astype,
        "reshape": reshape,
        "transpose": transpose,
        "sum": sum,
        "var": var,
        "std": std,
        "squeeze": squeeze,
        "flatten": flatten,
        "ravel": flatten,
        "cumsum": cumsum,
        "dot": dot,
        "swapaxes": swapaxes,
        "clip": clip,
    }
    for name in AXIS_REDUCTIONS:
        methods[name] = _axis_reduction(getattr(snp, name))
    return methods


def _axis_reduction(fn: Callable[..., Any]) -> Callable[..., Any]:
    """x.name(axis=None, keepdims=False) is fn(x, axis=axis, keepdims=keepdims)."""

    def method(self: Any, axis: Any = None, keepdims: bool = False) -> Any:
        return fn(self, axis=axis, keepdims=keepdims)

    return method

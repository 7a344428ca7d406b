"""spmd.numpy names users reach for beyond the ufuncs: isclose, allclose, array_equal, copy,
and the dtype objects (`snp.float32`) that are callable like JAX's (`snp.float32(3.0)`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from spmd import dtypes, lax
from spmd.numpy import reductions, ufuncs
from spmd.numpy.core import asarray, float_type, promote_args
from spmd.tracing import Tracer, type_of


def isclose(
    a: Any, b: Any, rtol: float = 1e-05, atol: float = 1e-08, equal_nan: bool = False
) -> Any:
    """numpy.isclose: |a - b| <= atol + rtol * |b| elementwise (infinities equal themselves)."""
    a, b = promote_args("isclose", a, b)
    if not dtypes.is_float(type_of(a).dtype):
        return lax.eq(a, b)
    a, b = float_type(a), float_type(b)
    close = lax.le(lax.abs(lax.sub(a, b)), lax.add(lax.mul(lax.abs(b), rtol), atol))
    same_inf = lax.bitwise_and(lax.eq(a, b), ufuncs.isinf(a))
    both_finite = lax.bitwise_and(lax.is_finite(a), lax.is_finite(b))
    out = lax.bitwise_or(lax.bitwise_and(close, both_finite), same_inf)
    if equal_nan:
        out = lax.bitwise_or(out, lax.bitwise_and(ufuncs.isnan(a), ufuncs.isnan(b)))
    return out


def allclose(
    a: Any, b: Any, rtol: float = 1e-05, atol: float = 1e-08, equal_nan: bool = False
) -> Any:
    """numpy.allclose, as a 0-d bool array (JAX's habit): every element isclose."""
    return reductions.all(isclose(a, b, rtol, atol, equal_nan))


def array_equal(a1: Any, a2: Any, equal_nan: bool = False) -> Any:
    """numpy.array_equal: same shape and every element equal (as a 0-d bool array)."""
    x, y = asarray(a1), asarray(a2)
    if type_of(x).shape != type_of(y).shape:
        return asarray(False)
    eq = ufuncs.equal(x, y)
    if equal_nan:
        eq = lax.bitwise_or(eq, lax.bitwise_and(ufuncs.isnan(x), ufuncs.isnan(y)))
    return reductions.all(eq)


def copy(a: Any, order: str = "K") -> Any:
    """numpy.copy: a new array with a's values, dtype and (outside jit) sharding."""
    from spmd.array import Array

    x = asarray(a)
    if isinstance(x, Tracer) or not isinstance(x, Array):
        return x  # traced values are immutable: the value itself is the copy
    from spmd import dispatch

    value = np.array(x._global_value(), copy=True)
    return dispatch.device_put(Array(value, weak=x.weak_type), x.sharding if x.committed else None)


def sort(a: Any, axis: int | None = -1) -> Any:
    """numpy.sort (ascending; axis=None sorts the flattened array)."""
    from spmd.numpy.core import normalize_axis
    from spmd.tracing import bind

    x = asarray(a)
    if axis is None:
        x = lax.reshape(x, (type_of(x).size,))
        axis = 0
    return bind("sort", x, dimension=normalize_axis(axis, type_of(x).ndim, "sort"))


def argsort(a: Any, axis: int | None = -1) -> Any:
    """numpy.argsort (stable; axis=None sorts the flattened array)."""
    from spmd.numpy.core import normalize_axis
    from spmd.tracing import bind

    x = asarray(a)
    if axis is None:
        x = lax.reshape(x, (type_of(x).size,))
        axis = 0
    return bind("argsort", x, dimension=normalize_axis(axis, type_of(x).ndim, "argsort"))


def placed(fn: Callable[..., Any]) -> Callable[..., Any]:
    """fn with JAX's keyword arguments `out_sharding=` and `device=` (where the result is
    laid out), and `preferred_element_type=` (the result's dtype) for contractions. Under
    set_mesh, a result on no mesh is replicated on the set mesh, as JAX places it."""

    @functools.wraps(fn)
    def run(
        *args: Any,
        out_sharding: Any = None,
        device: Any = None,
        preferred_element_type: Any = None,
        precision: Any = None,
        **kwargs: Any,
    ) -> Any:
        from spmd.explicit import place

        out = fn(*args, **kwargs)
        if preferred_element_type is not None:
            out = lax.convert_element_type(out, dtypes.canonical(preferred_element_type))
        if out_sharding is None and device is None:
            return _on_set_mesh(out)
        return place(out, out_sharding, device)

    return run


def _on_set_mesh(x: Any) -> Any:
    from spmd.array import Array
    from spmd.mesh import set_mesh_in_effect
    from spmd.named_sharding import NamedSharding, PartitionSpec

    mesh = set_mesh_in_effect()
    if mesh is None or not isinstance(x, Array) or isinstance(x.sharding, NamedSharding):
        return x
    from spmd import dispatch

    return dispatch.device_put(x, NamedSharding(mesh, PartitionSpec()))


class _ScalarMeta(type):
    """The type of `snp.float32` & co.: compares and hashes like the dtype's name, so it
    works wherever a dtype is expected (np.dtype(snp.float32), x.dtype == snp.float32)."""

    name: str
    dtype: np.dtype

    def __eq__(cls, other: object) -> bool:
        if isinstance(other, str):
            return other == cls.name
        if isinstance(other, _ScalarMeta):
            return other.name == cls.name
        try:
            return np.dtype(other) == cls.dtype  # type: ignore[arg-type]
        except TypeError:
            return False

    def __ne__(cls, other: object) -> bool:
        return not cls == other

    def __hash__(cls) -> int:
        return hash(cls.name)

    def __repr__(cls) -> str:
        return f"<class 'spmd.numpy.{cls.__name__}'>"


def _scalar_type(name: str, public: str) -> Any:
    def new(cls: Any, x: Any = 0) -> Any:
        return _on_set_mesh(asarray(x, dtype=name))

    return _ScalarMeta(
        public,
        (),
        {
            "name": name,
            "dtype": dtypes.to_numpy(name),
            "__new__": new,
            "__doc__": f"The {name} dtype; calling it makes a {name} array: snp.{public}(3).",
        },
    )


SCALAR_TYPES = {
    public: _scalar_type(name, public)
    for public, name in (
        ("float32", "float32"),
        ("float16", "float16"),
        ("float64", "float64"),
        ("bfloat16", "bfloat16"),
        ("int8", "int8"),
        ("int16", "int16"),
        ("int32", "int32"),
        ("int64", "int64"),
        ("uint8", "uint8"),
        ("uint16", "uint16"),
        ("uint32", "uint32"),
        ("uint64", "uint64"),
        ("bool_", "bool"),
    )
}

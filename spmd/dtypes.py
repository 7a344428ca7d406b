"""Dtypes by name, and JAX's type promotion lattice with weak (Python scalar) types.

Imports nothing of ours but errors.
"""

from __future__ import annotations

import functools

import ml_dtypes
import numpy as np

from spmd import config
from spmd.errors import DTypeError

FLOATS = ("bfloat16", "float16", "float32", "float64")
INTS = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
ALL = ("bool", *INTS, *FLOATS)

_NUMPY = {name: np.dtype(name) for name in ALL if name != "bfloat16"}
_NUMPY["bfloat16"] = np.dtype(ml_dtypes.bfloat16)

DEFAULT_FLOAT = "float32"
DEFAULT_INT = "int32"


_BY_NUMPY = {np_dtype: name for name, np_dtype in _NUMPY.items()}

# JAX's jax_enable_x64: when off, every 64-bit dtype is its 32-bit kin (numpy float64 inputs
# become float32, int64 int32), as in JAX. spmd.config holds it (default: SPMD_ENABLE_X64).
X64 = config.X64
_NARROW = {"float64": "float32", "int64": "int32", "uint64": "uint32"}


def set_x64(enabled: bool) -> None:
    X64["enabled"] = bool(enabled)


def canonical(dtype: object) -> str:
    """The dtype's name, from a name, a numpy dtype, a scalar type or a Python type (64-bit
    names narrowed to 32 bits while x64 is off)."""
    name = _name(dtype)
    if not X64["enabled"] and name in _NARROW:
        return _NARROW[name]
    return name


def name(dtype: object) -> str:
    """The dtype's own name, never narrowed (a checkpoint keeps a float64 numpy leaf float64
    with x64 off, as orbax)."""
    return _name(dtype)


def _name(dtype: object) -> str:
    if isinstance(dtype, str) and dtype in _NUMPY:
        return dtype
    if isinstance(dtype, np.dtype) and dtype in _BY_NUMPY:
        return _BY_NUMPY[dtype]
    if dtype is float:
        return DEFAULT_FLOAT
    if dtype is int:
        return DEFAULT_INT
    if dtype is bool:
        return "bool"
    try:
        name = np.dtype(dtype).name
    except TypeError:
        raise DTypeError(
            f"unsupported dtype {dtype!r}", hint=f"use one of {', '.join(ALL)}"
        ) from None
    if name not in _NUMPY:
        raise DTypeError(f"unsupported dtype {name!r}", hint=f"use one of {', '.join(ALL)}")
    return name


def to_numpy(dtype: str) -> np.dtype:
    return _NUMPY[dtype]


def is_float(dtype: str) -> bool:
    return dtype in FLOATS


def is_int(dtype: str) -> bool:
    return dtype in INTS


def is_unsigned(dtype: str) -> bool:
    return dtype.startswith("uint")


def is_differentiable(dtype: str) -> bool:
    return dtype in FLOATS


def itemsize(dtype: str) -> int:
    return _NUMPY[dtype].itemsize


# JAX's lattice (jax.numpy type promotion): each edge a -> b means a promotes to b.
# "i*" and "f*" are the weak types of Python ints and floats.
_EDGES = {
    "bool": ("i*",),
    "i*": ("uint8", "int8"),
    "uint8": ("uint16", "int16"),
    "uint16": ("uint32", "int32"),
    "uint32": ("uint64", "int64"),
    "uint64": ("f*",),
    "int8": ("int16",),
    "int16": ("int32",),
    "int32": ("int64",),
    "int64": ("f*",),
    "f*": ("bfloat16", "float16"),
    "bfloat16": ("float32",),
    "float16": ("float32",),
    "float32": ("float64",),
    "float64": (),
}


@functools.cache
def _upper_set(node: str) -> frozenset[str]:
    return frozenset({node}).union(*(_upper_set(n) for n in _EDGES[node]))


def _lattice_node(dtype: str, weak: bool) -> str:
    if not weak:
        return dtype
    if is_float(dtype):
        return "f*"
    if is_int(dtype):
        return "i*"
    return dtype


@functools.cache
def promote(a: tuple[str, bool], b: tuple[str, bool]) -> tuple[str, bool]:
    """Join of two (dtype, weak) pairs in JAX's lattice; returns (dtype, weak)."""
    na, nb = _lattice_node(*a), _lattice_node(*b)
    common = _upper_set(na) & _upper_set(nb)
    join = next(n for n in common if _upper_set(n) == common)  # the least upper bound
    if join == "f*":
        weak_dtype = a[0] if a[1] and is_float(a[0]) else b[0] if is_float(b[0]) else DEFAULT_FLOAT
        return weak_dtype, True
    if join == "i*":
        return (a[0] if a[1] else b[0]), True
    return join, False


def result_type(*typed: tuple[str, bool]) -> tuple[str, bool]:
    """Promote any number of (dtype, weak) pairs."""
    out = typed[0]
    for t in typed[1:]:
        out = promote(out, t)
    return out

"""Shared helpers of the core tests: THE tolerance table (keyed by dtype) and seeded inputs."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

import spmd

# (rtol, atol) of a result of this dtype against a float64 oracle. Ints and bool: exact.
TOLERANCE: dict[str, tuple[float, float]] = {
    "float64": (1e-10, 1e-12),
    "float32": (2e-5, 2e-6),
    "float16": (5e-3, 5e-3),
    "bfloat16": (4e-2, 4e-2),
}

FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")
INT_DTYPES = ("int32", "int64")


def np_dtype(name: str) -> np.dtype:
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def jax_dtype(name: str) -> np.dtype:
    """The numpy dtype JAX gives a result of dtype `name`: 64-bit ones are 32-bit while x64
    is off (JAX's default)."""
    if not spmd.config.read("jax_enable_x64"):
        name = {"float64": "float32", "int64": "int32", "uint64": "uint32"}.get(name, name)
    return np_dtype(name)


def dtype_name(x: Any) -> str:
    return str(np.asarray(x).dtype)


def assert_close(actual: Any, expected: Any, dtype: str | None = None, scale: float = 1.0) -> None:
    """actual vs expected to the tolerance of `dtype` (default: actual's dtype), times scale."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    dtype = dtype or dtype_name(actual)
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape}"
    if dtype not in TOLERANCE:
        np.testing.assert_array_equal(actual, expected.astype(actual.dtype))
        return
    rtol, atol = TOLERANCE[dtype]
    np.testing.assert_allclose(
        actual.astype(np.float64), expected.astype(np.float64), rtol=rtol * scale, atol=atol * scale
    )


def rand(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    dtype: str,
    low: float = -3.0,
    high: float = 3.0,
) -> np.ndarray:
    """Seeded values of `dtype` in [low, high) (ints: integers in that range; bool: coin flips)."""
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype.startswith(("int", "uint")):
        return rng.integers(int(low), int(high), size=shape).astype(dtype)
    return rng.uniform(low, high, size=shape).astype(np_dtype(dtype))

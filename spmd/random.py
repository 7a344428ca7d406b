"""spmd.random: counter-based random numbers, JAX's: threefry2x32 with JAX 0.10's default
partitionable layout (jax_threefry_partitionable), so key/split/fold_in/bits/uniform/normal
give JAX's numbers (normal to float32 rounding: erfinv is a polynomial).

Each element's value is a function of the key and its global index only, so the same
key gives the same numbers on 1 device or any mesh and sharding, eagerly or under jit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import ml_dtypes
import numpy as np

from spmd import dtypes, lax
from spmd.errors import DTypeError, ShapeError
from spmd.tracing import bind, type_of

ROTATIONS = (13, 15, 26, 6, 17, 29, 16, 24)
PARITY = 0x1BD11BDA  # Threefry's key-schedule constant
MASK32 = 0xFFFFFFFF


def _u32(x: Any, shape: tuple[int, ...]) -> Any:
    """A uint32 value broadcast to `shape` (Python ints become constants)."""
    if isinstance(x, (int, np.integer)):
        return lax.full(shape, np.uint32(int(x) & MASK32), "uint32")
    if type_of(x).shape == shape:
        return x
    return lax.broadcast_in_dim(x, shape, ())


def _rotate_left(x: Any, bits: int) -> Any:
    return lax.bitwise_or(lax.shift_left(x, bits), lax.shift_right(x, 32 - bits))


def threefry2x32(k0: Any, k1: Any, c0: Any, c1: Any) -> tuple[Any, Any]:
    """Threefry-2x32 with 20 rounds (Random123) of counters (c0, c1) under key (k0, k1).

    k0, k1 are uint32 scalars (or Python ints); c0, c1 uint32 arrays of one shape (or ints).
    """
    shape = next((type_of(c).shape for c in (c0, c1) if not isinstance(c, (int, np.integer))), ())
    k0, k1, c0, c1 = (_u32(v, shape) for v in (k0, k1, c0, c1))
    schedule = (k0, k1, lax.bitwise_xor(lax.bitwise_xor(k0, k1), PARITY))
    x0, x1 = lax.add(c0, schedule[0]), lax.add(c1, schedule[1])
    for block in range(5):
        for step in range(4):
            x0 = lax.add(x0, x1)
            x1 = lax.bitwise_xor(_rotate_left(x1, ROTATIONS[(block % 2) * 4 + step]), x0)
        x0 = lax.add(x0, schedule[(block + 1) % 3])
        x1 = lax.add(lax.add(x1, schedule[(block + 2) % 3]), block + 1)
    return x0, x1


# -- keys ----------------------------------------------------------------------------------


def key(seed: Any) -> Any:
    """A key (uint32[2]) from an integer seed, as jax.random.PRNGKey.

    >>> import numpy as np, spmd
    >>> np.asarray(spmd.random.key(42)).tolist()
    [0, 42]
    """
    if isinstance(seed, (int, np.integer)):
        value = int(seed)
        # x64 off, as JAX: the seed is a 32-bit int, so the high word is 0
        high = (value >> 32) & MASK32 if dtypes.X64["enabled"] else 0
        return lax.constant(np.array([high, value & MASK32], np.uint32))
    t = type_of(seed)
    if t.shape != () or not (dtypes.is_int(t.dtype) or t.dtype == "bool"):
        raise DTypeError(f"key() needs an integer scalar seed, got {t}")
    low = lax.reshape(lax.convert_element_type(seed, "uint32"), (1,))
    return lax.concatenate([lax.full((1,), 0, "uint32"), low], 0)


def _check_key(k: Any) -> tuple[Any, Any]:
    t = type_of(k)
    if t.shape != (2,) or t.dtype != "uint32":
        raise DTypeError(
            f"expected a key of type uint32[2], got {t}",
            hint="make one with spmd.random.key(seed), or index a split() result",
        )
    word0 = lax.reshape(lax.slice(k, (0,), (1,)), ())
    word1 = lax.reshape(lax.slice(k, (1,), (2,)), ())
    return word0, word1


def split(k: Any, num: int = 2) -> Any:
    """`num` new keys (uint32[num, 2]): key i is threefry of counter (0, i), as
    jax.random.split (key_data of its result)."""
    from spmd.validate import check_size

    k0, k1 = _check_key(k)
    num = check_size("split's num", num)
    y0, y1 = threefry2x32(k0, k1, 0, lax.iota("uint32", (num,)))
    return lax.concatenate([lax.reshape(y0, (num, 1)), lax.reshape(y1, (num, 1))], 1)


def key_data(k: Any) -> Any:
    """The key's uint32[..., 2] words (JAX's jax.random.key_data; spmd keys are those words)."""
    return k


def fold_in(k: Any, data: Any) -> Any:
    """A new key from `k` and an integer (e.g. a step or a layer number); as jax.random.fold_in."""
    k0, k1 = _check_key(k)
    if not isinstance(data, (int, np.integer)):
        data = lax.convert_element_type(data, "uint32")
    y0, y1 = threefry2x32(k0, k1, 0, data)
    return lax.concatenate([lax.reshape(y0, (1,)), lax.reshape(y1, (1,))], 0)


# -- raw bits --------------------------------------------------------------------------------


def _shape(shape: Any) -> tuple[int, ...]:
    from spmd.validate import check_shape

    return check_shape("random", shape)


def _global_index(shape: tuple[int, ...]) -> Any:
    """Each element's row-major index in the global array (uint32, an iota per dim)."""
    if math.prod(shape) > 2**32:
        raise ShapeError(
            f"random arrays are limited to 2**32 elements, got shape {shape}",
            hint="draw several smaller arrays with keys from split()",
        )
    index = lax.full(shape, 0, "uint32")
    stride = 1
    for dim in reversed(range(len(shape))):
        term = lax.iota("uint32", shape, dim)
        if stride != 1:
            term = lax.mul(term, stride)
        index = lax.add(index, term)
        stride *= shape[dim]
    return index


def _words(k: Any, shape: tuple[int, ...]) -> tuple[Any, Any]:
    """Two uint32 words per element: threefry of the counter (high, low word of the element's
    row-major index), JAX's iota_2x32_shape; arrays are below 2**32 elements, so high is 0."""
    k0, k1 = _check_key(k)
    return threefry2x32(k0, k1, 0, _global_index(shape))


def _random_bits(k: Any, shape: tuple[int, ...], width: int) -> Any:
    """JAX's partitionable random bits: 64 = high << 32 | low, 32 = high ^ low, 8 and 16
    the low bits of high ^ low."""
    word0, word1 = _words(k, shape)
    if width == 64:
        high = lax.shift_left(lax.convert_element_type(word0, "uint64"), 32)
        return lax.bitwise_or(high, lax.convert_element_type(word1, "uint64"))
    mixed = lax.bitwise_xor(word0, word1)
    if width == 32:
        return mixed
    return lax.convert_element_type(lax.bitwise_and(mixed, (1 << width) - 1), f"uint{width}")


def bits(k: Any, shape: Sequence[int] = (), dtype: Any = "uint32") -> Any:
    """Uniform random bits of an unsigned dtype (uint8/16/32/64), as jax.random.bits."""
    dtype = dtypes.canonical(dtype)
    shape = _shape(shape)
    if not dtypes.is_unsigned(dtype):
        raise DTypeError(f"bits() needs an unsigned dtype, got {dtype}")
    return _random_bits(k, shape, 8 * dtypes.itemsize(dtype))


def _unit_float(k: Any, shape: tuple[int, ...], dtype: str) -> Any:
    """Floats in [0, 1) as JAX draws them: the top `nmant` bits of the random bits (8 bits
    for bfloat16, else the dtype's width) are the mantissa of a float in [1, 2), minus 1."""
    nmant = int(ml_dtypes.finfo(dtypes.to_numpy(dtype)).nmant)
    width = 8 if nmant < 8 else 8 * dtypes.itemsize(dtype)
    mantissa = lax.shift_right(_random_bits(k, shape, width), width - nmant)
    wide = "float64" if dtype == "float64" else "float32"  # exact: nmant bits fit
    scaled = lax.mul(lax.convert_element_type(mantissa, wide), float(2.0**-nmant))
    return lax.convert_element_type(scaled, dtype)


def _float_dtype(dtype: Any) -> str:
    dtype = dtypes.canonical(dtype)
    if not dtypes.is_float(dtype):
        raise DTypeError(f"expected a floating-point dtype, got {dtype}")
    return dtype


# -- distributions ---------------------------------------------------------------------------


def uniform(
    k: Any,
    shape: Sequence[int] = (),
    dtype: Any = "float32",
    minval: Any = 0.0,
    maxval: Any = 1.0,
    *,
    out_sharding: Any = None,
) -> Any:
    """Uniform floats in [minval, maxval) (laid out as out_sharding when given)."""
    from spmd.explicit import place

    return place(_uniform(k, shape, dtype, minval, maxval), out_sharding)


def _uniform(k: Any, shape: Sequence[int], dtype: Any, minval: Any, maxval: Any) -> Any:
    from spmd import numpy as snp

    dtype = _float_dtype(dtype)
    shape = _shape(shape)
    unit = _unit_float(k, shape, dtype)
    low = snp.asarray(minval, dtype)
    high = snp.asarray(maxval, dtype)
    out = snp.asarray(unit * (high - low) + low, dtype)
    return snp.asarray(snp.maximum(low, out), dtype)  # JAX's formula, rounding included


def normal(
    k: Any, shape: Sequence[int] = (), dtype: Any = "float32", *, out_sharding: Any = None
) -> Any:
    """Standard normal floats (laid out as out_sharding when given)."""
    from spmd.explicit import place

    return place(_normal(k, shape, dtype), out_sharding)


def _normal(k: Any, shape: Sequence[int], dtype: Any) -> Any:
    """JAX's: sqrt(2) * erfinv(u), u uniform in (-1, 1) (erfinv in float32 for 16-bit
    dtypes, as XLA upcasts it)."""
    from spmd import numpy as snp

    dtype = _float_dtype(dtype)
    shape = _shape(shape)
    np_dtype = dtypes.to_numpy(dtype)
    low = float(np.nextafter(np_dtype.type(-1.0), np_dtype.type(0.0)))
    u = _uniform(k, shape, dtype, low, 1.0)
    wide = "float64" if dtype == "float64" else "float32"
    root2 = float(dtypes.to_numpy(dtype).type(np.sqrt(2)))
    return snp.asarray(snp.asarray(erfinv(snp.asarray(u, wide)), dtype) * root2, dtype)


# Giles (2010), "Approximating the erfinv function": single-precision polynomials.
_ERFINV_CENTRAL = (
    2.81022636e-08,
    3.43273939e-07,
    -3.5233877e-06,
    -4.39150654e-06,
    0.00021858087,
    -0.00125372503,
    -0.00417768164,
    0.246640727,
    1.50140941,
)
_ERFINV_TAIL = (
    -0.000200214257,
    0.000100950558,
    0.00134934322,
    -0.00367342844,
    0.00573950773,
    -0.0076224613,
    0.00943887047,
    1.00167406,
    2.83297682,
)


def erfinv(x: Any) -> Any:
    """The inverse error function on (-1, 1), to about float32 precision."""
    from spmd import numpy as snp

    w = -snp.log1p(-x * x)  # as XLA's ErfInv32
    central = w - 2.5
    tail = snp.sqrt(snp.maximum(w, 5.0)) - 3.0
    p_central = snp.zeros_like(x)
    p_tail = snp.zeros_like(x)
    for a, b in zip(_ERFINV_CENTRAL, _ERFINV_TAIL):
        p_central = a + p_central * central
        p_tail = b + p_tail * tail
    inf = snp.where(x > 0, np.inf, -np.inf)
    return snp.where(snp.abs(x) == 1, inf, snp.where(w < 5.0, p_central, p_tail) * x)


def truncated_normal(
    k: Any, lower: float, upper: float, shape: Sequence[int] = (), dtype: Any = "float32"
) -> Any:
    """Normal floats conditioned on [lower, upper] (inverse CDF of a uniform, as JAX)."""
    from spmd import numpy as snp

    dtype = _float_dtype(dtype)
    wide = "float64" if dtype == "float64" else "float32"
    low, high = math.erf(lower / math.sqrt(2)), math.erf(upper / math.sqrt(2))
    u = uniform(k, shape, wide, low, high)
    out = snp.asarray(math.sqrt(2) * erfinv(u), dtype)
    floor = float(np.nextafter(dtypes.to_numpy(dtype).type(lower), np.inf))
    ceiling = float(np.nextafter(dtypes.to_numpy(dtype).type(upper), -np.inf))
    return snp.asarray(snp.clip(out, floor, ceiling), dtype)


def bernoulli(k: Any, p: Any = 0.5, shape: Sequence[int] | None = None) -> Any:
    """Booleans that are True with probability p (p broadcasts to `shape`)."""
    from spmd import numpy as snp

    shape = type_of(p).shape if shape is None else _shape(shape)
    return uniform(k, shape, "float32") < snp.asarray(p, "float32")


def randint(k: Any, shape: Sequence[int], minval: Any, maxval: Any, dtype: Any = "int32") -> Any:
    """Uniform integers in [minval, maxval) (64 random bits per draw: bias below 2**-32)."""
    from spmd import numpy as snp

    dtype = dtypes.canonical(dtype)
    if not dtypes.is_int(dtype):
        raise DTypeError(f"randint needs an integer dtype, got {dtype}")
    shape = _shape(shape)
    low = snp.broadcast_to(snp.asarray(minval, "int64"), shape)
    high = snp.broadcast_to(snp.asarray(maxval, "int64"), shape)
    span = snp.asarray(snp.maximum(high - low, 1), "uint64")
    offset = lax.rem(bits(k, shape, "uint64"), span)
    return snp.asarray(low + snp.asarray(offset, "int64"), dtype)


def permutation(k: Any, x: Any, axis: int = 0) -> Any:
    """A random permutation of range(x) (x an int), or of x's entries along `axis`."""
    from spmd import numpy as snp

    if isinstance(x, (int, np.integer)):
        return bind("argsort", bits(k, (int(x),), "uint64"), dimension=0)
    t = type_of(x)
    if t.ndim == 0:
        raise ShapeError("permutation needs an int or an array of rank >= 1, got a scalar")
    axis = axis % t.ndim
    order = bind("argsort", bits(k, (t.shape[axis],), "uint64"), dimension=0)
    return snp.take(x, order, axis=axis)


def choice(k: Any, n: int, shape: Sequence[int] = ()) -> Any:
    """Uniform draws from range(n) with replacement (int32)."""
    return randint(k, shape, 0, n)


__all__ = [
    "bernoulli",
    "bits",
    "choice",
    "erfinv",
    "fold_in",
    "key",
    "key_data",
    "normal",
    "permutation",
    "randint",
    "split",
    "threefry2x32",
    "truncated_normal",
    "uniform",
]

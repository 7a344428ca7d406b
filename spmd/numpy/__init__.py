"""spmd.numpy: numpy's API over traced and sharded arrays, composed of spmd.lax ops only."""

from __future__ import annotations

import sys

from spmd.array import Array
from spmd.array_methods import ArrayMethods
from spmd.numpy.core import asarray, astype, broadcast_shapes, result_type
from spmd.numpy.creation import (
    arange,
    empty,
    empty_like,
    eye,
    full,
    full_like,
    identity,
    linspace,
    meshgrid,
    ones,
    ones_like,
    tri,
    zeros,
    zeros_like,
)
from spmd.numpy.einsum import einsum
from spmd.numpy.extras import (
    SCALAR_TYPES,
    allclose,
    argsort,
    array_equal,
    copy,
    isclose,
    placed,
    sort,
)
from spmd.numpy.indexing import diagonal, getitem, take, take_along_axis
from spmd.numpy.linalg import dot, inner, matmul, matrix_transpose, outer, tensordot, trace, vdot
from spmd.numpy.manipulation import (
    atleast_1d,
    broadcast_arrays,
    broadcast_to,
    concatenate,
    expand_dims,
    flip,
    hstack,
    moveaxis,
    ravel,
    repeat,
    reshape,
    roll,
    split,
    squeeze,
    stack,
    swapaxes,
    tile,
    transpose,
    tril,
    triu,
    vstack,
)
from spmd.numpy.methods import install_array_methods
from spmd.numpy.more import (
    diag,
    dtype,
    exp2,
    finfo,
    floating,
    iinfo,
    inexact,
    integer,
    issubdtype,
    logaddexp,
    median,
    nan_to_num,
    number,
    pad,
    promote_types,
    signedinteger,
    unsignedinteger,
)
from spmd.numpy.reductions import (
    all,
    amax,
    amin,
    any,
    argmax,
    argmin,
    cumsum,
    max,
    mean,
    min,
    prod,
    std,
    sum,
    var,
)
from spmd.numpy.ufuncs import *
from spmd.numpy.ufuncs import abs, round

# JAX's out_sharding= (and device= on creation functions) lay the result out as asked.
arange, empty, eye, full, linspace, ones, zeros = (
    placed(f) for f in (arange, empty, eye, full, linspace, ones, zeros)
)
empty_like, full_like, ones_like, zeros_like, asarray = (
    placed(f) for f in (empty_like, full_like, ones_like, zeros_like, asarray)
)
dot, einsum, matmul, tensordot, inner, outer = (
    placed(f) for f in (dot, einsum, matmul, tensordot, inner, outer)
)

array = asarray
concat = concatenate
float32, float16, float64 = (SCALAR_TYPES[n] for n in ("float32", "float16", "float64"))
bfloat16, int8, int16, int32, int64 = (
    SCALAR_TYPES[n] for n in ("bfloat16", "int8", "int16", "int32", "int64")
)
uint8, uint16, uint32, uint64, bool_ = (
    SCALAR_TYPES[n] for n in ("uint8", "uint16", "uint32", "uint64", "bool_")
)
pi, e, inf, nan = 3.141592653589793, 2.718281828459045, float("inf"), float("nan")
newaxis = None
ndarray = Array  # isinstance(x, snp.ndarray)

__all__ = [
    "abs",
    "all",
    "allclose",
    "amax",
    "amin",
    "any",
    "arange",
    "argmax",
    "argmin",
    "argsort",
    "array",
    "array_equal",
    "asarray",
    "astype",
    "atleast_1d",
    "broadcast_arrays",
    "broadcast_shapes",
    "broadcast_to",
    "concat",
    "concatenate",
    "copy",
    "cumsum",
    "diag",
    "diagonal",
    "dot",
    "dtype",
    "einsum",
    "empty",
    "empty_like",
    "exp2",
    "expand_dims",
    "eye",
    "finfo",
    "flip",
    "floating",
    "full",
    "full_like",
    "getitem",
    "hstack",
    "identity",
    "iinfo",
    "inexact",
    "inner",
    "integer",
    "isclose",
    "issubdtype",
    "linspace",
    "logaddexp",
    "matmul",
    "matrix_transpose",
    "max",
    "mean",
    "median",
    "meshgrid",
    "min",
    "moveaxis",
    "nan_to_num",
    "ndarray",
    "number",
    "ones",
    "ones_like",
    "outer",
    "pad",
    "prod",
    "promote_types",
    "ravel",
    "repeat",
    "reshape",
    "result_type",
    "roll",
    "round",
    "signedinteger",
    "sort",
    "split",
    "squeeze",
    "stack",
    "std",
    "sum",
    "swapaxes",
    "take",
    "take_along_axis",
    "tensordot",
    "tile",
    "trace",
    "transpose",
    "tri",
    "tril",
    "triu",
    "unsignedinteger",
    "var",
    "vdot",
    "vstack",
    "zeros",
    "zeros_like",
]

# An Array's and a Tracer's operators and methods are this namespace's functions, installed
# on their shared base here (as jax.numpy does), so the core never imports this layer.
install_array_methods(ArrayMethods, sys.modules[__name__])

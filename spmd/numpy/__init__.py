"""spmd.numpy: numpy's API over traced and sharded arrays, composed of spmd.lax ops only."""

from __future__ import annotations

from spmd.numpy.core import asarray, astype, broadcast_shapes, result_type
from spmd.numpy.ufuncs import *  # noqa: F401,F403
from spmd.numpy.ufuncs import abs, round  # noqa: F401  (shadow builtins, as numpy does)

array = asarray
float32, float16, float64 = "float32", "float16", "float64"
bfloat16, int32, int64, int8, uint8, bool_ = "bfloat16", "int32", "int64", "int8", "uint8", "bool"
pi, e, inf, nan = 3.141592653589793, 2.718281828459045, float("inf"), float("nan")
newaxis = None

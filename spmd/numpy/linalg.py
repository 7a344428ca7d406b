"""Products of spmd.numpy: matmul, dot, tensordot, inner, outer, vdot (all dot_general).

Operands are promoted with JAX's lattice; the result dtype is the promoted dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spmd import lax
from spmd.errors import ShapeError
from spmd.numpy.core import asarray, broadcast_shapes, broadcast_to_shape, promote_dtypes
from spmd.tracing import type_of


def _promoted(a: Any, b: Any) -> tuple[Any, Any]:
    x, y = promote_dtypes(asarray(a), asarray(b))
    return x, y


def _shape(x: Any) -> tuple[int, ...]:
    return type_of(x).shape


def matmul(a: Any, b: Any) -> Any:
    """numpy.matmul: 1-d operands gain (then lose) a dim; batch dims broadcast."""
    x, y = _promoted(a, b)
    if type_of(x).ndim == 0 or type_of(y).ndim == 0:
        raise ShapeError("matmul does not take 0-d operands", hint="use multiply for scalars")
    x_vec, y_vec = type_of(x).ndim == 1, type_of(y).ndim == 1
    if x_vec:
        x = lax.reshape(x, (1,) + _shape(x))
    if y_vec:
        y = lax.reshape(y, _shape(y) + (1,))
    if _shape(x)[-1] != _shape(y)[-2]:
        raise ShapeError(
            f"matmul: shapes {_shape(asarray(a))} and {_shape(asarray(b))} do not "
            f"align ({_shape(x)[-1]} != {_shape(y)[-2]})",
            hint="the last dim of a must equal the second-to-last dim of b",
        )
    batch = broadcast_shapes("matmul", _shape(x)[:-2], _shape(y)[:-2])
    if type_of(y).ndim == 2 or type_of(x).ndim == 2:
        out = _unbatched_matmul(x, y)
    else:
        out = _batched_matmul(x, y, batch)
    rows, cols = _shape(out)[-2:]
    shape = batch + (() if x_vec else (rows,)) + (() if y_vec else (cols,))
    return lax.reshape(out, shape)


def _unbatched_matmul(x: Any, y: Any) -> Any:
    """One side is a matrix: contract without broadcasting it over the other's batch dims
    (a [..., m, k] @ [k, n] is one GEMM of (... * m) rows, not a batch of copies of w)."""
    nx, ny = type_of(x).ndim, type_of(y).ndim
    out = lax.dot_general(x, y, (((nx - 1,), (ny - 2,)), ((), ())))
    if nx == 2 and ny > 2:  # [m, *batch, n] -> [*batch, m, n]
        out = lax.transpose(out, (*range(1, ny - 1), 0, ny - 1))
    return out


def _batched_matmul(x: Any, y: Any, batch: tuple[int, ...]) -> Any:
    x = broadcast_to_shape(x, batch + _shape(x)[-2:])
    y = broadcast_to_shape(y, batch + _shape(y)[-2:])
    nb = len(batch)
    dims = (((nb + 1,), (nb,)), (tuple(range(nb)), tuple(range(nb))))
    return lax.dot_general(x, y, dims)


def tensordot(a: Any, b: Any, axes: Any = 2) -> Any:
    """numpy.tensordot: contract the last `axes` dims of a with the first of b, or given pairs."""
    x, y = _promoted(a, b)
    nx, ny = type_of(x).ndim, type_of(y).ndim
    if isinstance(axes, int):
        if axes > min(nx, ny) or axes < 0:
            raise ShapeError(
                f"tensordot axes={axes} is too many for shapes {_shape(x)}, {_shape(y)}"
            )
        ax = tuple(range(nx - axes, nx))
        ay = tuple(range(axes))
    else:
        first, second = axes
        ax = (first,) if isinstance(first, int) else tuple(first)
        ay = (second,) if isinstance(second, int) else tuple(second)
        ax = tuple(i % nx for i in ax)
        ay = tuple(i % ny for i in ay)
    return lax.dot_general(x, y, ((ax, ay), ((), ())))


def dot(a: Any, b: Any) -> Any:
    """numpy.dot: scalars multiply; else contract a's last dim with b's second-to-last."""
    x, y = _promoted(a, b)
    nx, ny = type_of(x).ndim, type_of(y).ndim
    if nx == 0 or ny == 0:
        from spmd.numpy.ufuncs import multiply

        return multiply(x, y)
    return lax.dot_general(x, y, (((nx - 1,), (max(ny - 2, 0),)), ((), ())))


def inner(a: Any, b: Any) -> Any:
    x, y = _promoted(a, b)
    nx, ny = type_of(x).ndim, type_of(y).ndim
    if nx == 0 or ny == 0:
        from spmd.numpy.ufuncs import multiply

        return multiply(x, y)
    return lax.dot_general(x, y, (((nx - 1,), (ny - 1,)), ((), ())))


def outer(a: Any, b: Any) -> Any:
    x, y = _promoted(a, b)
    x = lax.reshape(x, (type_of(x).size,))
    y = lax.reshape(y, (type_of(y).size,))
    return lax.dot_general(x, y, (((), ()), ((), ())))


def vdot(a: Any, b: Any) -> Any:
    x, y = _promoted(a, b)
    x = lax.reshape(x, (type_of(x).size,))
    y = lax.reshape(y, (type_of(y).size,))
    return lax.dot_general(x, y, (((0,), (0,)), ((), ())))


def trace(a: Any, offset: int = 0, axis1: int = 0, axis2: int = 1) -> Any:
    from spmd.numpy.indexing import diagonal
    from spmd.numpy.reductions import sum

    return sum(diagonal(a, offset, axis1, axis2), axis=-1)


def matrix_transpose(a: Any) -> Any:
    x = asarray(a)
    n = type_of(x).ndim
    perm: Sequence[int] = [*range(n - 2), n - 1, n - 2]
    return lax.transpose(x, perm)

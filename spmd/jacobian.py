"""jacrev, jacfwd, hessian (JAX's names), as vmap over vjp / jvp; eval_shape, device_get.

Functions of one array argument (or `argnums` picking one) returning one array.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from spmd import lax
from spmd.errors import ArgumentError
from spmd.tracing import describe_loc, type_of


def _one_array(what: str, value: Any) -> Any:
    if isinstance(value, (tuple, list, dict)):
        raise ArgumentError(
            f"{what} handles functions of one array returning one array, got "
            f"a {type(value).__name__}",
            describe_loc(),
            "pick one argument with argnums=, or ravel the pytree first",
        )
    return value


def _basis(shape: tuple[int, ...], dtype: str) -> Any:
    """The standard basis of arrays of `shape`: eye(n) as (n, *shape)."""
    n = int(np.prod(shape, dtype=np.int64))
    eye = lax.convert_element_type(
        lax.eq(lax.iota("int32", (n, n), 0), lax.iota("int32", (n, n), 1)), dtype
    )
    return lax.reshape(eye, (n, *shape))


def _partial(fun: Callable[..., Any], args: tuple, argnums: int) -> Callable[[Any], Any]:
    def f(x: Any) -> Any:
        full = list(args)
        full[argnums] = x
        return _one_array("the function's output", fun(*full))

    return f


def jacrev(fun: Callable[..., Any], argnums: int = 0) -> Callable[..., Any]:
    """The Jacobian by reverse mode: one VJP per output element, vmapped."""
    from spmd.autodiff import vjp
    from spmd.validate import check_argnums
    from spmd.vmap import vmap

    (num,) = check_argnums("argnums", argnums, fun, required=True)

    @functools.wraps(fun)
    def run(*args: Any) -> Any:
        x = _one_array("jacrev's argument", args[num])
        y, vjp_fn = vjp(_partial(fun, args, num), x)
        ty, tx = type_of(y), type_of(x)
        rows = vmap(lambda ct: vjp_fn(ct)[0])(_basis(ty.shape, ty.dtype))
        return lax.reshape(rows, (*ty.shape, *tx.shape))

    return run


def jacfwd(fun: Callable[..., Any], argnums: int = 0) -> Callable[..., Any]:
    """The Jacobian by forward mode: one JVP per input element, vmapped."""
    from spmd.autodiff import jvp
    from spmd.validate import check_argnums
    from spmd.vmap import vmap

    (num,) = check_argnums("argnums", argnums, fun, required=True)

    @functools.wraps(fun)
    def run(*args: Any) -> Any:
        x = _one_array("jacfwd's argument", args[num])
        f = _partial(fun, args, num)
        tx = type_of(x)
        cols = vmap(lambda t: jvp(f, (x,), (t,))[1])(_basis(tx.shape, tx.dtype))
        ny = type_of(cols).ndim - 1
        moved = lax.transpose(cols, (*range(1, ny + 1), 0))
        return lax.reshape(moved, (*type_of(cols).shape[1:], *tx.shape))

    return run


def hessian(fun: Callable[..., Any], argnums: int = 0) -> Callable[..., Any]:
    """jacfwd(jacrev(fun)), as JAX computes it."""
    return jacfwd(jacrev(fun, argnums), argnums)


def eval_shape(fun: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """The shapes and dtypes fun would return (ShapeDtypeStructs), without running it."""
    from spmd.api import jit

    return jit(fun).trace(*args, **kwargs).out_info


def device_get(x: Any) -> Any:
    """Every array of a pytree as a numpy array on the host."""
    from spmd.tree import tree_map

    return tree_map(lambda v: np.asarray(v) if hasattr(v, "__array__") else v, x)

"""Checks of user arguments at the public API's door: sizes, argnums, callables, env vars.

Each raises a spmd.errors exception naming the user's line and the fix, before any work.
Imports only errors (and numpy).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from spmd.errors import ArgumentError, ShapeError

MAX_ELEMENTS = 1 << 40  # a size beyond this is a typo, not an array any machine holds


def check_size(what: str, n: Any) -> int:
    """A dim size: a non-negative int (not bool, not 2.5, not a traced value)."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        if hasattr(n, "shape") and getattr(n, "shape", None) == () and hasattr(n, "__index__"):
            try:
                n = int(n.__index__())
            except TypeError:
                raise ShapeError(
                    f"{what} must be an int, got {n!r}",
                    hint="pass a Python int; "
                    "a size cannot depend on traced values (mark the argument "
                    "static with jit(static_argnums=...))",
                ) from None
        else:
            raise ShapeError(
                f"{what} must be an int, got {n!r}", hint="pass a whole number (e.g. int(n))"
            )
    if n < 0:
        raise ShapeError(f"{what} must be >= 0, got {int(n)}", hint="sizes cannot be negative")
    return int(n)


def as_int(what: str, v: Any) -> int:
    """A static integer (an int or numpy integer; not a bool, a float or a traced value)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        if not (hasattr(v, "__index__") and getattr(v, "shape", None) == ()):
            raise ShapeError(
                f"{what} must be an int, got {v!r}", hint="pass a Python int known when tracing"
            )
        try:
            v = v.__index__()
        except TypeError:
            raise ShapeError(
                f"{what} must be a static int, got a traced value",
                hint="mark the argument static: jit(static_argnums=...)",
            ) from None
    return int(v)


def as_ints(what: str, v: Any) -> tuple[int, ...]:
    """An int or a sequence of ints."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
        return (int(v),)
    if isinstance(v, (str, bytes)) or not isinstance(v, (tuple, list, np.ndarray, range)):
        raise ShapeError(
            f"{what} must be an int or a tuple of ints, got {v!r}", hint="e.g. 0 or (0, 1)"
        )
    return tuple(as_int(what, x) for x in v)


def check_shape(what: str, shape: Any) -> tuple[int, ...]:
    """A shape: an int or a sequence of non-negative ints, not absurdly large."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, (bool, np.bool_)):
        shape = (shape,)
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
        raise ShapeError(f"{what} shape must be a tuple of ints, got {shape!r}", hint="e.g. (2, 3)")
    dims = tuple(check_size(f"{what} shape {tuple(shape)!r}: each dim", s) for s in shape)
    if math.prod(dims) > MAX_ELEMENTS:
        raise ShapeError(
            f"{what} shape {dims} has {math.prod(dims)} elements",
            hint=f"an array holds at most {MAX_ELEMENTS} elements",
        )
    return dims


def check_callable(what: str, fun: Any) -> None:
    if not callable(fun):
        raise ArgumentError(
            f"{what} needs a function, got {fun!r}",
            hint=f"pass the function itself: {what}(f), or use @{what}",
        )


def _positional_count(fun: Any) -> int | None:
    """How many positional parameters fun takes (None: any number, or unknown)."""
    try:
        params = inspect.signature(fun).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return None
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def check_argnums(
    what: str, nums: Any, fun: Callable[..., Any], required: bool = False
) -> tuple[int, ...]:
    """static_argnums / donate_argnums / grad's argnums (required: at least one)."""
    if nums is None and not required:
        return ()
    if required and (nums is None or nums == () or nums == []):
        raise ArgumentError(
            f"{what} must name at least one argument, got {nums!r}", hint=f"e.g. {what}=0"
        )
    items = tuple(nums) if isinstance(nums, (tuple, list)) else (nums,)
    for i in items:
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise ArgumentError(f"{what} must be ints, got {nums!r}", hint=f"e.g. {what}=(0, 2)")
    n = _positional_count(fun)
    for i in items:
        if n is not None and not -n <= i < n:
            raise ArgumentError(
                f"{what}={nums!r} refers to argument {int(i)} but "
                f"{getattr(fun, '__name__', 'the function')} takes {n} "
                "positional arguments",
                hint=f"use indices from 0 to {n - 1}"
                if n
                else f"drop {what}: the function takes no positional arguments",
            )
    return tuple(int(i) for i in items)


def check_argnums_in_call(nums: tuple[int, ...], n_args: int, what: str) -> None:
    """At call time (when fun takes *args): every index names a passed argument."""
    for i in nums:
        if not -n_args <= i < n_args:
            raise ArgumentError(
                f"{what}={nums!r} refers to argument {i} but the call passes "
                f"{n_args} positional arguments",
                hint="pass that argument positionally, or fix the index",
            )

"""Helpers shared by the op families: type checks that raise user-facing errors."""

from __future__ import annotations

from typing import Any

from spmd import dtypes
from spmd.errors import DTypeError, ShapeError
from spmd.ir.types import TensorType

LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def letters(n: int) -> str:
    return LETTERS[:n]


def same_shapes(name: str, *types: TensorType) -> None:
    shapes = {t.shape for t in types}
    if len(shapes) > 1:
        listed = ", ".join(str(t.shape) for t in types)
        raise ShapeError(
            f"{name} needs operands of one shape, got {listed}",
            hint="broadcast them first (spmd.numpy ops broadcast for you)",
        )


def same_dtypes(name: str, *types: TensorType) -> None:
    kinds = {t.dtype for t in types}
    if len(kinds) > 1:
        listed = ", ".join(t.dtype for t in types)
        raise DTypeError(
            f"{name} needs operands of one dtype, got {listed}",
            hint="convert with .astype(...) (spmd.numpy ops promote for you)",
        )


def need_float(name: str, t: TensorType) -> None:
    if not dtypes.is_float(t.dtype):
        raise DTypeError(
            f"{name} needs a floating-point operand, got {t.dtype}",
            hint="convert with .astype('float32')",
        )


def check_axis(name: str, axis: int, ndim: int) -> int:
    if not -ndim <= axis < max(ndim, 1) or (ndim == 0 and axis not in (0, -1)):
        raise ShapeError(
            f"{name}: axis {axis} is out of range for an array of rank {ndim}",
            hint=f"use an axis in [{-ndim}, {ndim})",
        )
    return axis % ndim if ndim else 0


def normalize_axes(name: str, axes: Any, ndim: int) -> tuple[int, ...]:
    if axes is None:
        return tuple(range(ndim))
    if isinstance(axes, int):
        axes = (axes,)
    out = tuple(sorted(check_axis(name, int(a), ndim) for a in axes))
    if len(set(out)) != len(out):
        raise ShapeError(f"{name}: repeated axis in {tuple(axes)}")
    return out

"""The Communicator interface and the checks every transport shares.

Imports nothing of ours except spmd.errors and spmd.mesh (the mesh-group arithmetic, one
home for partitioner, collectives and backends); knows nothing about the IR.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from spmd import config
from spmd.errors import DTypeError, MeshError, ShapeError
from spmd.mesh import check_axes as normalize_axes
from spmd.mesh import group_index, group_members, group_size

REDUCE_OPS = ("sum", "max", "min", "prod", "and", "or")
Axes = tuple[str, ...]


def collective_timeout() -> float:
    """Seconds a collective may wait: SPMD_COLLECTIVE_TIMEOUT, default 300; 0 or less: forever.

    The local transport raises CollectiveTimeoutError; the MPI transport's watchdog prints it
    and aborts the job (its calls block); with no timeout the watchdog is off.
    """
    return config.env("SPMD_COLLECTIVE_TIMEOUT")


def reduce_ufunc(op: str, dtype: np.dtype) -> np.ufunc:
    """The numpy ufunc that combines two operands for a reduction op."""
    dtype = np.dtype(dtype)
    if op in ("and", "or") and dtype != np.bool_:
        raise DTypeError(f"reduction op {op!r} needs bool operands, got {dtype}")
    if op in ("max", "min") and dtype.kind == "c":
        raise DTypeError(f"reduction op {op!r} is not defined for complex dtype {dtype}")
    table = {
        "sum": np.add,
        "max": np.maximum,
        "min": np.minimum,
        "prod": np.multiply,
        "and": np.logical_and,
        "or": np.logical_or,
    }
    if op not in table:
        raise DTypeError(f"unknown reduction op {op!r}", hint=f"use one of {REDUCE_OPS}")
    return table[op]


def normalize_dim(dim: int, ndim: int, kind: str) -> int:
    """A dimension index in [0, ndim); negative counts from the end."""
    if not -ndim <= dim < ndim:
        raise ShapeError(f"{kind}: dim {dim} is out of range for an operand of rank {ndim}")
    return dim % ndim


def check_divisible(shape: tuple[int, ...], dim: int, size: int, kind: str) -> None:
    """Raises ShapeError unless shape[dim] splits into size equal blocks."""
    if shape[dim] % size:
        raise ShapeError(
            f"{kind}: dim {dim} of shape {shape} has size {shape[dim]}, "
            f"not divisible by the group size {size}",
            hint="pad the operand so that the dim divides evenly",
        )


def check_pairs(pairs: Sequence[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """Checks permute pairs: indices in range, each source and each destination at most once."""
    result = [(int(src), int(dst)) for src, dst in pairs]
    for src, dst in result:
        if not (0 <= src < size and 0 <= dst < size):
            raise ShapeError(f"permute pair {(src, dst)} is out of range for group size {size}")
    sources = [src for src, _ in result]
    destinations = [dst for _, dst in result]
    if len(set(sources)) != len(sources) or len(set(destinations)) != len(destinations):
        raise ShapeError(f"permute pairs {result} repeat a source or a destination")
    return result


def block(x: np.ndarray, dim: int, index: int, count: int) -> np.ndarray:
    """View of block index of count equal blocks of x along dim."""
    width = x.shape[dim] // count
    key = [slice(None)] * x.ndim
    key[dim] = slice(index * width, (index + 1) * width)
    return x[tuple(key)]


def timeout_message(kind: str, axes: Axes, where: str | None, seconds: float) -> str:
    """The problem line of a CollectiveTimeoutError."""
    place = f" (called at {where})" if where else ""
    return f"{kind} over mesh axes {axes!r} waited more than {seconds:g} s{place}"


class Communicator(ABC):
    """One device's view of collectives over groups of mesh axes; inputs are never modified."""

    def __init__(self, rank: int, mesh_shape: Sequence[int], axis_names: Sequence[str]):
        self.mesh_shape = tuple(int(s) for s in mesh_shape)
        self.axis_names = tuple(axis_names)
        if len(self.mesh_shape) != len(self.axis_names):
            raise MeshError(
                f"mesh shape {self.mesh_shape} and axis names {self.axis_names} differ in length"
            )
        if len(set(self.axis_names)) != len(self.axis_names):
            raise MeshError(f"mesh axis names {self.axis_names} repeat a name")
        if not 0 <= rank < math.prod(self.mesh_shape):
            raise MeshError(f"rank {rank} is outside mesh {self.mesh_shape}")
        self.rank = int(rank)

    @property
    def size(self) -> int:
        """Number of devices in the mesh."""
        return math.prod(self.mesh_shape)

    def group_index(self, axes: str | Sequence[str]) -> int:
        """This device's index within its group over axes."""
        return group_index(self.rank, self.mesh_shape, self.axis_names, axes)

    def group_size(self, axes: str | Sequence[str]) -> int:
        """Number of devices in the group over axes."""
        return group_size(self.mesh_shape, self.axis_names, axes)

    def group_members(self, axes: str | Sequence[str]) -> list[int]:
        """Ranks of this device's group over axes, in group order."""
        return group_members(self.rank, self.mesh_shape, self.axis_names, axes)

    def all_reduce(
        self, x: np.ndarray, axes: str | Sequence[str], op: str = "sum", *, where: str | None = None
    ) -> np.ndarray:
        """Elementwise reduction of every member's x; every member gets the result."""
        x = np.asarray(x)
        reduce_ufunc(op, x.dtype)
        return self._all_reduce(x, normalize_axes(axes, self.axis_names), op, where)

    def all_gather(
        self, x: np.ndarray, axes: str | Sequence[str], dim: int, *, where: str | None = None
    ) -> np.ndarray:
        """Concatenation of every member's x along dim, in group order (tiled)."""
        x = np.asarray(x)
        dim = normalize_dim(dim, x.ndim, "all_gather")
        return self._all_gather(x, normalize_axes(axes, self.axis_names), dim, where)

    def reduce_scatter(
        self,
        x: np.ndarray,
        axes: str | Sequence[str],
        dim: int,
        op: str = "sum",
        *,
        where: str | None = None,
    ) -> np.ndarray:
        """Block i (along dim) of the reduction of every member's x goes to member i."""
        x = np.asarray(x)
        axes = normalize_axes(axes, self.axis_names)
        dim = normalize_dim(dim, x.ndim, "reduce_scatter")
        check_divisible(x.shape, dim, self.group_size(axes), "reduce_scatter")
        reduce_ufunc(op, x.dtype)
        return self._reduce_scatter(x, axes, dim, op, where)

    def all_to_all(
        self,
        x: np.ndarray,
        axes: str | Sequence[str],
        split_dim: int,
        concat_dim: int,
        *,
        where: str | None = None,
    ) -> np.ndarray:
        """Block j of x along split_dim goes to member j; received blocks concatenate on concat_dim."""
        x = np.asarray(x)
        axes = normalize_axes(axes, self.axis_names)
        split_dim = normalize_dim(split_dim, x.ndim, "all_to_all")
        concat_dim = normalize_dim(concat_dim, x.ndim, "all_to_all")
        check_divisible(x.shape, split_dim, self.group_size(axes), "all_to_all")
        return self._all_to_all(x, axes, split_dim, concat_dim, where)

    def permute(
        self,
        x: np.ndarray,
        axes: str | Sequence[str],
        pairs: Sequence[tuple[int, int]],
        *,
        where: str | None = None,
    ) -> np.ndarray:
        """Each (src, dst) sends src's x to dst; a device nobody sends to gets zeros."""
        x = np.asarray(x)
        axes = normalize_axes(axes, self.axis_names)
        checked = check_pairs(pairs, self.group_size(axes))
        return self._permute(x, axes, checked, where)

    def broadcast(
        self, x: np.ndarray, axes: str | Sequence[str], root: int = 0, *, where: str | None = None
    ) -> np.ndarray:
        """Every member gets a copy of member root's x."""
        x = np.asarray(x)
        axes = normalize_axes(axes, self.axis_names)
        if not 0 <= root < self.group_size(axes):
            raise ShapeError(f"broadcast root {root} is out of range for axes {axes!r}")
        return self._broadcast(x, axes, int(root), where)

    def barrier(self, *, where: str | None = None) -> None:
        """Waits until every device of the mesh reaches the barrier."""
        self._barrier(self.axis_names, where)

    @abstractmethod
    def _all_reduce(self, x: np.ndarray, axes: Axes, op: str, where: str | None) -> np.ndarray: ...

    @abstractmethod
    def _all_gather(self, x: np.ndarray, axes: Axes, dim: int, where: str | None) -> np.ndarray: ...

    @abstractmethod
    def _reduce_scatter(
        self, x: np.ndarray, axes: Axes, dim: int, op: str, where: str | None
    ) -> np.ndarray: ...

    @abstractmethod
    def _all_to_all(
        self, x: np.ndarray, axes: Axes, split_dim: int, concat_dim: int, where: str | None
    ) -> np.ndarray: ...

    @abstractmethod
    def _permute(
        self, x: np.ndarray, axes: Axes, pairs: list[tuple[int, int]], where: str | None
    ) -> np.ndarray: ...

    @abstractmethod
    def _broadcast(self, x: np.ndarray, axes: Axes, root: int, where: str | None) -> np.ndarray: ...

    @abstractmethod
    def _barrier(self, axes: Axes, where: str | None) -> None: ...


def gathered_shape(shape: tuple[int, ...], dim: int, count: int) -> tuple[int, ...]:
    """Shape of an all_gather result."""
    return shape[:dim] + (shape[dim] * count,) + shape[dim + 1 :]


def all_to_all_shape(
    shape: tuple[int, ...], split_dim: int, concat_dim: int, count: int
) -> tuple[int, ...]:
    """Shape of an all_to_all result."""
    result = list(shape)
    result[split_dim] //= count
    result[concat_dim] *= count
    return tuple(result)

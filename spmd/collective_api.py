"""Collectives of shard_map bodies, with JAX's lax names: psum, pmean, pmax, pmin, all_gather,
psum_scatter, all_to_all, ppermute, axis_index, axis_size. Each binds a registry collective
over the mesh that shard_map binds (a thread-local stack) while it traces its body.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from spmd.errors import ShapeError, ShardingError
from spmd.tracing import bind, describe_loc, type_of
from spmd.tree import tree_map


@dataclass(frozen=True)
class MeshAxes:
    """The mesh axes a shard_map body runs over: names and sizes, major first."""

    axis_names: tuple[str, ...]
    axis_sizes: tuple[int, ...]

    def size_of(self, axes: Sequence[str]) -> int:
        sizes = dict(zip(self.axis_names, self.axis_sizes))
        return math.prod(sizes[a] for a in axes)


_state = threading.local()


def _stack() -> list[MeshAxes]:
    if not hasattr(_state, "stack"):
        _state.stack = []
    return _state.stack


@contextmanager
def mesh_axes(axis_names: Sequence[str], axis_sizes: Sequence[int]) -> Iterator[MeshAxes]:
    """`with mesh_axes(names, sizes):` binds the axes collectives may name (shard_map uses it)."""
    axes = MeshAxes(tuple(axis_names), tuple(int(s) for s in axis_sizes))
    _stack().append(axes)
    try:
        yield axes
    finally:
        _stack().pop()


def current_mesh_axes() -> MeshAxes | None:
    """The innermost shard_map's mesh axes, or None outside any shard_map body."""
    stack = _stack()
    return stack[-1] if stack else None


def _resolve(what: str, axis_name: Any) -> tuple[tuple[str, ...], int]:
    """(axes, group size) of a collective over `axis_name` (a name or a tuple of names)."""
    names = (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)
    shown = repr(names[0]) if len(names) == 1 else repr(names)
    mesh = current_mesh_axes()
    if mesh is None:
        raise ShardingError(
            f"{what} of axis {shown} outside shard_map: no mesh axis is bound here",
            describe_loc(),
            "call it inside a function passed to spmd.shard_map(f, mesh, in_specs, out_specs); "
            "outside shard_map, shard arrays with NamedSharding and let jit insert collectives",
        )
    for name in names:
        if not isinstance(name, str) or name not in mesh.axis_names:
            raise ShardingError(
                f"{what}: unknown mesh axis {name!r}",
                describe_loc(),
                f"the shard_map's mesh has axes {mesh.axis_names!r}",
            )
    if len(set(names)) != len(names):
        raise ShardingError(
            f"{what}: mesh axis repeated in {names!r}",
            describe_loc(),
            "name each mesh axis at most once",
        )
    return names, mesh.size_of(names)


def _axis_in_range(what: str, axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise ShapeError(
            f"{what}: axis {axis} is out of range for rank {ndim - 1}"
            if ndim
            else f"{what}: axis {axis} is out of range",
            describe_loc(),
            f"use an axis in [{-ndim}, {ndim})",
        )
    return axis % ndim


def _all_reduce(what: str, x: Any, axis_name: Any, kind: str) -> Any:
    axes, size = _resolve(what, axis_name)

    def one(leaf: Any) -> Any:
        if isinstance(leaf, (int, float)) and not isinstance(leaf, bool) and kind == "sum":
            return leaf * size  # psum(1, 'data') is the axis size, as in JAX
        if not axes:
            return leaf
        return bind("all_reduce", leaf, axes=axes, group_size=size, kind=kind)

    return tree_map(one, x)


def psum(x: Any, axis_name: Any) -> Any:
    """Sum of x over the devices of `axis_name` (a name or tuple of names); x may be a pytree."""
    return _all_reduce("psum", x, axis_name, "sum")


def pmax(x: Any, axis_name: Any) -> Any:
    """Elementwise max of x over the devices of `axis_name`."""
    return _all_reduce("pmax", x, axis_name, "max")


def pmin(x: Any, axis_name: Any) -> Any:
    """Elementwise min of x over the devices of `axis_name`."""
    return _all_reduce("pmin", x, axis_name, "min")


def pmean(x: Any, axis_name: Any) -> Any:
    """Mean of x over the devices of `axis_name`."""
    from spmd import lax

    _, size = _resolve("pmean", axis_name)
    summed = _all_reduce("pmean", x, axis_name, "sum")
    return tree_map(lambda s: s / size if isinstance(s, (int, float)) else lax.div(s, size), summed)


def axis_size(axis_name: Any) -> int:
    """The number of devices along `axis_name` (a Python int)."""
    return _resolve("axis_size", axis_name)[1]


def axis_index(axis_name: Any) -> Any:
    """This device's index along `axis_name` (int32 scalar; major axis first for a tuple)."""
    axes, size = _resolve("axis_index", axis_name)
    return bind("axis_index", axes=axes, group_size=size)


def all_gather(x: Any, axis_name: Any, *, axis: int = 0, tiled: bool = False) -> Any:
    """Every device's x along `axis`: stacked on a new axis, or concatenated when tiled."""
    from spmd import lax

    axes, size = _resolve("all_gather", axis_name)

    def one(leaf: Any) -> Any:
        ndim = type_of(leaf).ndim
        dim = _axis_in_range("all_gather", axis, ndim if tiled else ndim + 1)
        if not tiled:
            leaf = lax.expand_dims(leaf, (dim,))
        return bind("all_gather", leaf, axes=axes, group_size=size, dim=dim)

    return tree_map(one, x)


def psum_scatter(x: Any, axis_name: Any, *, scatter_dimension: int = 0, tiled: bool = False) -> Any:
    """psum, then each device keeps its block of `scatter_dimension` (JAX's reduce-scatter).

    Untiled, that dim must equal the group size and is removed; tiled, it is divided.
    """
    from spmd import lax

    axes, size = _resolve("psum_scatter", axis_name)

    def one(leaf: Any) -> Any:
        t = type_of(leaf)
        dim = _axis_in_range("psum_scatter", scatter_dimension, t.ndim)
        _check_split("psum_scatter", t.shape, dim, size, tiled, axes)
        out = bind("reduce_scatter", leaf, axes=axes, group_size=size, dim=dim, kind="sum")
        return out if tiled else lax.squeeze(out, (dim,))

    return tree_map(one, x)


def all_to_all(
    x: Any, axis_name: Any, split_axis: int, concat_axis: int, *, tiled: bool = False
) -> Any:
    """Split `split_axis` into one block per device, send block i to device i, and join the
    received blocks along `concat_axis` (untiled: split_axis equals the group size and the
    blocks stack on a new axis at `concat_axis`, as in JAX)."""
    from spmd import lax

    axes, size = _resolve("all_to_all", axis_name)

    def one(leaf: Any) -> Any:
        t = type_of(leaf)
        split = _axis_in_range("all_to_all", split_axis, t.ndim)
        concat = _axis_in_range("all_to_all", concat_axis, t.ndim)
        _check_split("all_to_all", t.shape, split, size, tiled, axes)
        if tiled:
            return bind(
                "all_to_all", leaf, axes=axes, group_size=size, split_dim=split, concat_dim=concat
            )
        if split < concat:
            concat += 1  # concat_axis counts positions after split_axis is removed
            leaf = lax.expand_dims(leaf, (concat,))
        elif concat < split:
            leaf = lax.expand_dims(leaf, (concat,))
            split += 1
        out = bind(
            "all_to_all", leaf, axes=axes, group_size=size, split_dim=split, concat_dim=concat
        )
        return out if split == concat else lax.squeeze(out, (split,))

    return tree_map(one, x)


def ppermute(x: Any, axis_name: Any, perm: Sequence[tuple[int, int]], *, reason: str = "") -> Any:
    """Send x from device src to device dst for each (src, dst) in perm (indices along
    `axis_name`); a device that receives nothing gets zeros. `reason` (spmd.pipeline's
    "stage k -> k+1, microbatch m") replaces "written in shard_map" in the collective report."""
    axes, size = _resolve("ppermute", axis_name)
    pairs = tuple((int(src), int(dst)) for src, dst in perm)
    for src, dst in pairs:
        if not (0 <= src < size and 0 <= dst < size):
            raise ShardingError(
                f"ppermute: pair {(src, dst)!r} is out of range for axis "
                f"{axis_name!r} of size {size}",
                describe_loc(),
                f"use device indices in [0, {size})",
            )
    for side, picked in (("source", [s for s, _ in pairs]), ("destination", [d for _, d in pairs])):
        if len(set(picked)) != len(picked):
            raise ShardingError(
                f"ppermute: a {side} appears twice in {pairs!r}",
                describe_loc(),
                "perm must be a partial permutation: each device sends and receives at most once",
            )
    why = {"reason": reason} if reason else {}
    return tree_map(
        lambda leaf: bind(
            "collective_permute", leaf, axes=axes, group_size=size, pairs=pairs, **why
        ),
        x,
    )


def _check_split(
    what: str, shape: tuple[int, ...], dim: int, size: int, tiled: bool, axes: tuple[str, ...]
) -> None:
    if tiled and shape[dim] % size:
        raise ShapeError(
            f"{what}: dim {dim} of shape {shape} does not split into {size} "
            f"blocks (mesh axes {axes!r})",
            describe_loc(),
            f"make dim {dim} a multiple of {size}",
        )
    if not tiled and shape[dim] != size:
        raise ShapeError(
            f"{what}: untiled, dim {dim} of shape {shape} must equal the group "
            f"size {size} (mesh axes {axes!r})",
            describe_loc(),
            "pass tiled=True to split the dim into blocks instead",
        )

"""How one value is laid out: mesh axes per dim (major first) plus pending-sum axes.

Shards of a dim split over k devices all have ceil(n / k) rows; the last ones are padded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from spmd.ir.types import TensorType

AxisTuple = tuple[str, ...]


@dataclass(frozen=True)
class MeshShape:
    """The mesh as the partitioner sees it: axis names and sizes."""

    names: tuple[str, ...]
    sizes: tuple[int, ...]

    def size(self, axes: AxisTuple) -> int:
        return math.prod(self.sizes[self.names.index(a)] for a in axes)

    @property
    def num_devices(self) -> int:
        return math.prod(self.sizes)


@dataclass(frozen=True)
class ShardSpec:
    """dims: mesh axes per dim; partial: axes over which the value is a pending reduction."""

    dims: tuple[AxisTuple, ...]
    partial: AxisTuple = ()
    partial_kind: str = "sum"

    @staticmethod
    def replicated(ndim: int) -> ShardSpec:
        return ShardSpec(((),) * ndim)

    def used_axes(self) -> set[str]:
        return {a for d in self.dims for a in d} | set(self.partial)

    def __str__(self) -> str:
        dims = ", ".join("{" + ",".join(d) + "}" for d in self.dims)
        part = f" partial[{self.partial_kind}]={{{','.join(self.partial)}}}" if self.partial else ""
        return f"[{dims}]{part}"


def shard_size(n: int, shards: int) -> int:
    return -(-n // shards) if shards > 1 else n


def local_shape(t: TensorType, spec: ShardSpec, mesh: MeshShape) -> tuple[int, ...]:
    return tuple(shard_size(n, mesh.size(axes)) for n, axes in zip(t.shape, spec.dims))


def local_type(t: TensorType, spec: ShardSpec, mesh: MeshShape) -> TensorType:
    return (
        t.with_shape(local_shape(t, spec, mesh))
        if t.weak is False
        else TensorType(local_shape(t, spec, mesh), t.dtype, True)
    )


def padded_dims(t: TensorType, spec: ShardSpec, mesh: MeshShape) -> list[int]:
    """Dims whose shards carry padding (the size does not divide evenly)."""
    return [
        i for i, (n, axes) in enumerate(zip(t.shape, spec.dims)) if axes and n % mesh.size(axes)
    ]

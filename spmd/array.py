"""spmd.Array: a concrete value, laid out on devices by a sharding.

It holds either the global value or one buffer per device (its shards); each view is
built from the other on demand. The runtime decides which it keeps. On a mesh the views
are built by the layer that places arrays on devices (spmd/placement.py), which registers
itself here with `use_placement` when imported; every maker of a mesh Array imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

import numpy as np

from spmd import dtypes
from spmd.array_methods import ArrayMethods
from spmd.errors import InternalError
from spmd.ir.types import TensorType
from spmd.named_sharding import NamedSharding, Sharding, SingleDeviceSharding


class Shard:
    """One device's piece of an Array: its device, index (slices) and data."""

    def __init__(self, device: Any, index: tuple[slice, ...], data: np.ndarray):
        self.device = device
        self.index = index
        self.data = data

    def __repr__(self) -> str:
        return f"Shard(device={self.device!r}, index={self.index!r}, shape={self.data.shape})"


class Placement(Protocol):
    """How an Array on a mesh moves between its global value and its shards (through the
    installed runtime, which may hold shards in other processes): spmd/placement.py."""

    def assemble(self, array: Array) -> np.ndarray: ...

    def split(self, array: Array) -> list[np.ndarray]: ...

    def addressable_shards(self, array: Array) -> list[Shard]: ...


class Array(ArrayMethods):
    """A concrete array: np.asarray works, and so do operators and spmd.numpy."""

    __array_priority__ = 100
    _placement_layer: ClassVar[Placement | None] = None  # set once, by use_placement

    def __init__(
        self,
        value: np.ndarray | None = None,
        *,
        weak: bool = False,
        sharding: Sharding | None = None,
        shards: Sequence[np.ndarray] | None = None,
        aval: TensorType | None = None,
        committed: bool = False,
    ):
        if value is not None:
            value = np.asarray(value)
            aval = TensorType(value.shape, dtypes.canonical(value.dtype), weak)
            if value.dtype != dtypes.to_numpy(aval.dtype):  # x64 off: float64 -> float32
                value = value.astype(dtypes.to_numpy(aval.dtype))
        if aval is None:
            raise TypeError("Array needs a value or an aval")
        self.type = aval
        self._value = value
        self._shards = list(shards) if shards is not None else None
        self.sharding = sharding if sharding is not None else SingleDeviceSharding()
        self.committed = committed
        self.deleted = False

    # -- data ------------------------------------------------------------------------------
    def _global_value(self) -> np.ndarray:
        if self.deleted:
            raise RuntimeError(
                "this Array was donated to a jit call and deleted; use the call's result instead"
            )
        if self._value is None:
            on_one = isinstance(self.sharding, SingleDeviceSharding)
            self._value = self._shards[0] if on_one else self._placement().assemble(self)
        return self._value

    def device_buffers(self) -> list[np.ndarray]:
        """One buffer per device of the sharding's mesh (padded shards for uneven splits)."""
        if self._shards is None:
            on_one = isinstance(self.sharding, SingleDeviceSharding)
            self._shards = [self._value] if on_one else self._placement().split(self)
        return self._shards

    @property
    def addressable_shards(self) -> list[Shard]:
        if isinstance(self.sharding, SingleDeviceSharding):
            value = self._global_value()
            index = tuple(slice(0, n) for n in value.shape)
            return [Shard(self.sharding.device, index, value)]
        return self._placement().addressable_shards(self)

    def _placement(self) -> Placement:
        if Array._placement_layer is None:
            raise InternalError(
                "an Array on a mesh was made before spmd.placement was imported; this is a "
                "bug in spmd (whatever makes one imports spmd.placement)"
            )
        return Array._placement_layer

    @property
    def is_sharded(self) -> bool:
        """On a mesh (a NamedSharding): an op outside jit on it runs partitioned."""
        return isinstance(self.sharding, NamedSharding)

    @staticmethod
    def run_sharded(opdef: Any, inputs: Any, in_types: Any, attrs: dict[str, Any]) -> Any:
        """One op outside jit on sharded inputs, jitted and run partitioned (spmd.tracing's
        eager mode calls it)."""
        from spmd import eager  # the API layer: it jits

        return eager.eager_op(opdef, inputs, in_types, attrs)

    def devices(self) -> set[Any]:
        """The devices holding a piece of this array (JAX's Array.devices())."""
        return set(self.sharding.mesh.devices.flat)

    @property
    def device(self) -> Any:
        """The one device of a single-device array, else the sharding (JAX's Array.device)."""
        if isinstance(self.sharding, SingleDeviceSharding):
            return self.sharding.device
        return self.sharding

    # -- numpy protocol ------------------------------------------------------------------
    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        value = self._global_value()
        return value if dtype is None else value.astype(dtype)

    def block_until_ready(self) -> Array:
        return self

    def item(self) -> Any:
        return self._global_value().item()

    def tolist(self) -> Any:
        return self._global_value().tolist()

    def __bool__(self) -> bool:
        return bool(self._global_value())

    def __int__(self) -> int:
        return int(self._global_value())

    def __float__(self) -> float:
        return float(self._global_value())

    def __index__(self) -> int:
        return int(self._global_value())

    def __format__(self, spec: str) -> str:
        if not self.shape:
            return format(self._global_value().item(), spec)
        return format(str(self), spec)

    def __repr__(self) -> str:
        body = np.array2string(self._global_value(), separator=", ", prefix="Array(")
        return (
            f"Array({body}, dtype={self.type.dtype}{', weak_type=True' if self.weak_type else ''})"
        )

    def __str__(self) -> str:
        return str(self._global_value())

    def delete(self) -> None:
        self.deleted = True
        self._value = None
        self._shards = None

    def is_deleted(self) -> bool:
        return self.deleted


def use_placement(placement: Placement) -> None:
    """The one registration point: spmd/placement.py hands itself over when imported."""
    Array._placement_layer = placement


def global_value(a: Any, t: TensorType) -> np.ndarray:
    """a's whole value (an Array's, or any array-like's) as a numpy array of t's dtype."""
    value = a._global_value() if hasattr(a, "_global_value") else np.asarray(a)
    want = dtypes.to_numpy(t.dtype)
    return value if value.dtype == want else value.astype(want)


def block_until_ready(tree: Any) -> Any:
    """Wait for every Array in a pytree (ours run synchronously), then return it."""
    from spmd.tree import tree_leaves

    for leaf in tree_leaves(tree):
        if isinstance(leaf, Array):
            leaf.block_until_ready()
    return tree

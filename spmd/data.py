"""spmd.data: a deterministic, resumable loader that turns host arrays into global batches.

Each process reads only its contiguous slice of every global batch; the batch is assembled as
one global Array sharded over the mesh's data axis. Imports only the public spmd API.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

import spmd
from spmd.errors import CheckpointError, ShapeError
from spmd.mesh import Mesh, current_mesh
from spmd.named_sharding import NamedSharding, PartitionSpec

Batch = dict[str, Any] | tuple[Any, ...]


class DataLoader:
    """Batches of `arrays` (equal leading length), in a fresh order each epoch.

    The order of epoch e is a permutation drawn from numpy's Generator seeded by (seed, e),
    so every process, mesh and restart sees the same global batches. Iterating yields the
    rest of the current epoch and then moves to the next; `state_dict()` after k batches
    resumes exactly at batch k.

        >>> import numpy as np
        >>> loader = DataLoader({"x": np.arange(10)}, 4, shuffle=False)
        >>> [b["x"].tolist() for b in loader], len(loader)
        ([[0, 1, 2, 3], [4, 5, 6, 7]], 2)
    """

    def __init__(
        self,
        arrays: dict[str, np.ndarray] | Sequence[np.ndarray],
        batch_size: int,
        *,
        mesh: Mesh | None = None,
        batch_axis: str | tuple[str, ...] | None = "data",
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
        process_index: int | None = None,
        process_count: int | None = None,
    ):
        self.keys = list(arrays) if isinstance(arrays, dict) else None
        values = list(arrays.values()) if isinstance(arrays, dict) else list(arrays)
        self.arrays = [np.asarray(a) for a in values]
        self.size = _common_length(self.arrays, self.keys)
        self.batch_size = int(batch_size)
        self.process_index = _default(process_index, "process_index", 0)
        self.process_count = _default(process_count, "process_count", 1)
        _check_batch(self.batch_size, self.size, self.process_index, self.process_count)
        self.mesh = mesh if mesh is not None else current_mesh()
        self.batch_axis = batch_axis
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.epoch = 0
        self.step = 0

    def __len__(self) -> int:
        """Batches per epoch."""
        if self.drop_last:
            return self.size // self.batch_size
        return math.ceil(self.size / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        while self.step < len(self):
            batch = self.batch(self.epoch, self.step)
            self.step += 1
            yield batch
        self.epoch += 1
        self.step = 0

    def forever(self) -> Iterator[Batch]:
        """Batches across epochs without end (for step-counted training loops)."""
        while True:
            yield from self

    def order(self, epoch: int) -> np.ndarray:
        """The example indices of one epoch, in the order they are served."""
        if not self.shuffle:
            return np.arange(self.size)
        return np.random.default_rng((self.seed, epoch)).permutation(self.size)

    def batch_indices(self, epoch: int, step: int) -> np.ndarray:
        """The example indices of one global batch (all processes together)."""
        start = step * self.batch_size
        return self.order(epoch)[start : start + self.batch_size]

    def local_indices(self, epoch: int, step: int) -> np.ndarray:
        """This process's contiguous slice of the global batch.

        Under a multi-process runtime it is the rows this process's devices hold (processes
        that differ only along a model axis read the same rows).
        """
        indices = self.batch_indices(epoch, step)
        box = self._runtime_rows(len(indices))
        if box is not None:
            return indices[box]
        per_process = len(indices) // self.process_count
        start = self.process_index * per_process
        if self.process_index == self.process_count - 1:
            return indices[start:]
        return indices[start : start + per_process]

    def batch(self, epoch: int, step: int) -> Batch:
        """Global batch `step` of `epoch`, as Arrays sharded over the batch axis."""
        indices = self.local_indices(epoch, step)
        global_rows = len(self.batch_indices(epoch, step))
        leaves = [self._global_array(a[indices], global_rows) for a in self.arrays]
        if self.keys is None:
            return tuple(leaves)
        return dict(zip(self.keys, leaves))

    def sharding(self, ndim: int = 1) -> NamedSharding | None:
        """Where a batch leaf lives: dim 0 over the batch axis, the rest replicated."""
        if self.mesh is None:
            return None
        return NamedSharding(self.mesh, PartitionSpec(self.batch_axis, *([None] * (ndim - 1))))

    def _runtime_rows(self, global_rows: int) -> slice | None:
        """The batch rows the runtime places on this process, if several processes run."""
        runtime = _distributed()
        if runtime is None or self.mesh is None or runtime.process_count() == 1:
            return None
        return runtime.process_local_slices(self.sharding(1), (global_rows,))[0]

    def _global_array(self, local: np.ndarray, global_rows: int) -> Any:
        sharding = self.sharding(local.ndim)
        if self.process_count == 1:
            return spmd.device_put(local, sharding)
        make = getattr(_distributed(), "make_array_from_process_local_data", None)
        if make is None or sharding is None:
            raise ShapeError(
                f"DataLoader runs on {self.process_count} processes but "
                f"{'no mesh was given' if sharding is None else 'this spmd build cannot'} "
                f"assemble a global batch from per-process slices",
                hint="pass mesh= and run under a multi-process runtime (spmd-launch)",
            )
        return make(sharding, local, (global_rows, *local.shape[1:]))

    def state_dict(self) -> dict[str, int]:
        """Where the loader stands: save it with the model to resume at the same batch."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "size": self.size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state` (from state_dict()); the next batch is the one it names."""
        for name in ("seed", "batch_size", "size"):
            if name in state and int(state[name]) != getattr(self, name):
                raise CheckpointError(
                    f"loader state has {name}={int(state[name])!r} but this loader has "
                    f"{getattr(self, name)!r}",
                    hint="build the DataLoader with the same data, batch size and seed",
                )
        step = int(state["step"])
        if not 0 <= step <= len(self):
            raise CheckpointError(f"loader state step {step} is outside an epoch of {len(self)}")
        self.epoch = int(state["epoch"])
        self.step = step


def _common_length(arrays: list[np.ndarray], keys: list[str] | None) -> int:
    if not arrays:
        raise ShapeError("DataLoader got no arrays", hint="pass a dict or tuple of arrays")
    names = keys if keys is not None else [str(i) for i in range(len(arrays))]
    lengths = {name: (a.shape[0] if a.ndim else None) for name, a in zip(names, arrays)}
    if None in lengths.values() or len(set(lengths.values())) != 1:
        raise ShapeError(
            f"DataLoader arrays need one common leading length, got {lengths!r}",
            hint="every array holds one row per example",
        )
    return next(iter(lengths.values()))


def _distributed() -> Any:
    """spmd.distributed (the multi-process runtimes' API), or None in a build without it."""
    try:
        return importlib.import_module("spmd.distributed")
    except ImportError:
        return None


def _default(value: int | None, name: str, fallback: int) -> int:
    if value is not None:
        return int(value)
    query = getattr(_distributed(), name, None)
    return int(query()) if callable(query) else fallback


def _check_batch(batch_size: int, size: int, index: int, count: int) -> None:
    if batch_size < 1 or batch_size > size:
        raise ShapeError(f"batch_size {batch_size!r} must be between 1 and the {size} examples")
    if count < 1 or not 0 <= index < count:
        raise ShapeError(f"process_index {index!r} is outside process_count {count!r}")
    if batch_size % count:
        raise ShapeError(
            f"batch_size {batch_size} does not split over {count} processes",
            hint=f"use a multiple of {count}",
        )

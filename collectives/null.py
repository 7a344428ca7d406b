"""NullCommunicator: records every collective and returns right-shaped arrays without moving bytes.

For compile-only tests. Imports nothing of ours except collectives.base and the record.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from collectives.base import Axes, Communicator, all_to_all_shape, block, gathered_shape
from spmd.collective_record import CollectiveRecord


class NullCommunicator(Communicator):
    """Records calls in self.records; a 1-device group gets correct values, larger groups zeros."""

    def __init__(
        self, rank: int = 0, mesh_shape: Sequence[int] = (1,), axis_names: Sequence[str] = ("x",)
    ):
        super().__init__(rank, mesh_shape, axis_names)
        self.records: list[CollectiveRecord] = []

    def _record(self, kind: str, x: np.ndarray | None, axes: Axes, where: str | None) -> int:
        """Appends a record; returns the group size."""
        shape = () if x is None else tuple(x.shape)
        dtype = "uint8" if x is None else x.dtype.name
        nbytes = 0 if x is None else int(x.nbytes)
        size = self.group_size(axes)
        self.records.append(
            CollectiveRecord(kind, axes, nbytes, shape, dtype, where, group_size=size)
        )
        return size

    def _all_reduce(self, x: np.ndarray, axes: Axes, op: str, where: str | None) -> np.ndarray:
        if self._record("all_reduce", x, axes, where) == 1:
            return x.copy()
        return np.zeros_like(x)

    def _all_gather(self, x: np.ndarray, axes: Axes, dim: int, where: str | None) -> np.ndarray:
        count = self._record("all_gather", x, axes, where)
        if count == 1:
            return x.copy()
        return np.zeros(gathered_shape(x.shape, dim, count), x.dtype)

    def _reduce_scatter(
        self, x: np.ndarray, axes: Axes, dim: int, op: str, where: str | None
    ) -> np.ndarray:
        count = self._record("reduce_scatter", x, axes, where)
        if count == 1:
            return x.copy()
        return np.zeros_like(block(x, dim, 0, count))

    def _all_to_all(
        self, x: np.ndarray, axes: Axes, split_dim: int, concat_dim: int, where: str | None
    ) -> np.ndarray:
        count = self._record("all_to_all", x, axes, where)
        if count == 1:
            return x.copy()
        return np.zeros(all_to_all_shape(x.shape, split_dim, concat_dim, count), x.dtype)

    def _permute(
        self, x: np.ndarray, axes: Axes, pairs: list[tuple[int, int]], where: str | None
    ) -> np.ndarray:
        count = self._record("permute", x, axes, where)
        if count == 1 and (0, 0) in pairs:
            return x.copy()
        return np.zeros_like(x)

    def _broadcast(self, x: np.ndarray, axes: Axes, root: int, where: str | None) -> np.ndarray:
        if self._record("broadcast", x, axes, where) == 1:
            return x.copy()
        return np.zeros_like(x)

    def _barrier(self, axes: Axes, where: str | None) -> None:
        self._record("barrier", None, axes, where)

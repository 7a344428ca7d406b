"""NCCL transport: collectives on GPU arrays (cupy.cuda.nccl) with the methods of
collectives/base.py's Communicator, one NCCL communicator per group of mesh axes, on its own
stream. The GPU backend calls it from inside a compiled program (its run_op hook gets device
arrays); the runtime makes it beside its host communicator, which carries each group's NCCL
unique id (`exchange_through(comm)`; `mpi_exchange(comm)` for a bare mpi4py communicator).

Imports nothing of ours except spmd.errors and spmd.mesh; cupy is imported when one is built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from spmd import mesh
from spmd.errors import DTypeError, LaunchError, MeshError

# exchange(group_key, unique_id or None) -> the group root's unique id, called on every rank
Exchange = Callable[[tuple[str, ...], int, Any], Any]
_NCCL_TYPES = {
    "int8": "NCCL_INT8",
    "uint8": "NCCL_UINT8",
    "int32": "NCCL_INT32",
    "uint32": "NCCL_UINT32",
    "int64": "NCCL_INT64",
    "uint64": "NCCL_UINT64",
    "float16": "NCCL_FLOAT16",
    "float32": "NCCL_FLOAT32",
    "float64": "NCCL_FLOAT64",
    "bfloat16": "NCCL_BFLOAT16",
    "bool": "NCCL_UINT8",
}
_NCCL_OPS = {"sum": "NCCL_SUM", "prod": "NCCL_PROD", "max": "NCCL_MAX", "min": "NCCL_MIN"}
NCCL_ID_BYTES = 128  # ncclUniqueId
_BOOL_OPS = {"sum": "max", "or": "max", "max": "max", "prod": "min", "and": "min", "min": "min"}


def cupy_module() -> Any:
    """cupy, or a LaunchError saying how to get it (NCCL needs cupy and a GPU)."""
    try:
        import cupy
    except ImportError as err:
        raise LaunchError(
            f"the NCCL transport needs cupy, which does not import: {err}",
            hint="pip install cupy-cuda12x on a machine with an NVIDIA GPU, or use a cpu mesh",
        ) from None
    return cupy


def exchange_through(comm: Any) -> Exchange:
    """Exchange through a host Communicator (any transport): every member of the mesh calls
    it for the same axes in the same order (SPMD), and one all_gather over every mesh axis
    carries each group root's 128-byte id, tagged with its group key."""

    def exchange(axes: tuple[str, ...], key: int, unique_id: Any) -> Any:
        row = np.zeros(2 + NCCL_ID_BYTES, np.int64)
        row[0] = key
        if unique_id is not None:
            row[1] = 1
            row[2:] = np.asarray(unique_id, np.int64)
        rows = comm.all_gather(row[None], tuple(comm.axis_names), 0)
        for found in rows:
            if found[0] == key and found[1] == 1:
                return tuple(int(b) for b in found[2:])
        raise MeshError(f"no NCCL unique id for the group of axes {axes!r} (key {key})")

    return exchange


# One rank's row in the MPI exchange: group key (int64, little-endian), has-id flag, the id.
ROW_BYTES = 8 + 1 + NCCL_ID_BYTES


def pack_row(key: int, unique_id: Any) -> np.ndarray:
    """The fixed-size uint8 row a rank contributes: nothing in it is ever unpickled."""
    row = np.zeros(ROW_BYTES, np.uint8)
    row[:8] = np.frombuffer(np.array(key, "<i8").tobytes(), np.uint8)
    if unique_id is not None:
        values = np.asarray(unique_id, np.int64)
        if values.shape != (NCCL_ID_BYTES,) or values.min() < -128 or values.max() > 255:
            raise MeshError(
                f"an NCCL unique id is {NCCL_ID_BYTES} bytes, got "
                f"{values.shape} values in [{values.min()}, {values.max()}]"
            )
        row[8] = 1
        row[9:] = (values & 0xFF).astype(np.uint8)
    return row


def find_id(rows: np.ndarray, axes: tuple[str, ...], key: int) -> tuple[int, ...]:
    """The id of group `key` from every rank's row (as cupy's get_unique_id gives it: signed
    chars)."""
    keys = rows[:, :8].copy().view("<i8")[:, 0]
    for row, found in zip(rows, keys):
        if found == key and row[8] == 1:
            return tuple(int(b) for b in row[9:].view(np.int8))
    raise MeshError(f"no NCCL unique id for the group of axes {axes!r} (key {key})")


def mpi_exchange(comm: Any) -> Exchange:
    """Exchange through an mpi4py communicator: every rank calls it for the same axes in the
    same order (SPMD), so one Allgather of fixed-size uint8 rows (a buffer, never pickled)
    carries every group's root id."""

    def exchange(axes: tuple[str, ...], key: int, unique_id: Any) -> Any:
        rows = np.zeros((comm.Get_size(), ROW_BYTES), np.uint8)
        comm.Allgather(pack_row(key, unique_id), rows)
        return find_id(rows, axes, key)

    return exchange


class NcclCommunicator:
    """One GPU's view of collectives over groups of mesh axes (rank = row-major mesh index)."""

    def __init__(
        self,
        rank: int,
        mesh_shape: Sequence[int],
        axis_names: Sequence[str],
        exchange: Exchange,
        device_id: int = 0,
    ) -> None:
        self.cp = cupy_module()
        from cupy.cuda import nccl

        self.nccl = nccl
        self.rank, self.mesh_shape = int(rank), tuple(int(s) for s in mesh_shape)
        self.axis_names = tuple(axis_names)
        if len(self.mesh_shape) != len(self.axis_names):
            raise MeshError(
                f"mesh shape {self.mesh_shape} and axis names {self.axis_names} differ in length"
            )
        self.exchange = exchange
        self.device_id = device_id
        with self.cp.cuda.Device(device_id):
            self.stream = self.cp.cuda.Stream(non_blocking=True)
        self._comms: dict[tuple[str, ...], Any] = {}

    # -- mesh groups (spmd.mesh) --------------------------------------------------------------
    def _axes(self, axes: str | Sequence[str]) -> tuple[str, ...]:
        return mesh.check_axes(axes, self.axis_names)

    def group_index(self, axes: str | Sequence[str]) -> int:
        return mesh.group_index(self.rank, self.mesh_shape, self.axis_names, axes)

    def group_size(self, axes: str | Sequence[str]) -> int:
        return mesh.group_size(self.mesh_shape, self.axis_names, axes)

    def _group_key(self, axes: tuple[str, ...]) -> int:
        return mesh.group_key(self.rank, self.mesh_shape, self.axis_names, axes)

    def _comm(self, axes: str | Sequence[str]) -> Any:
        axes = self._axes(axes)
        if axes not in self._comms:
            root = self.group_index(axes) == 0
            uid = self.nccl.get_unique_id() if root else None
            uid = self.exchange(axes, self._group_key(axes), uid)
            with self.cp.cuda.Device(self.device_id):
                self._comms[axes] = self.nccl.NcclCommunicator(
                    self.group_size(axes), uid, self.group_index(axes)
                )
        return self._comms[axes]

    # -- helpers ------------------------------------------------------------------------------
    def _type(self, x: Any, dtype: str) -> int:
        name = _NCCL_TYPES.get(dtype)
        if name is None or not hasattr(self.nccl, name):
            raise DTypeError(f"NCCL cannot move dtype {dtype}")
        return getattr(self.nccl, name)

    def _op(self, op: str, dtype: str) -> int:
        if dtype == "bool":
            op = _BOOL_OPS[op]
        if op not in _NCCL_OPS:
            raise DTypeError(f"NCCL has no reduction {op!r} for dtype {dtype}")
        return getattr(self.nccl, _NCCL_OPS[op])

    def _run(self, fn: Callable[[Any], None]) -> None:
        with self.cp.cuda.Device(self.device_id):
            fn(self.stream.ptr)
            self.stream.synchronize()

    # -- the Communicator methods, on C-contiguous device arrays -----------------------------
    def all_reduce(
        self,
        x: Any,
        axes: str | Sequence[str],
        op: str = "sum",
        *,
        dtype: str = "",
        where: str | None = None,
    ) -> Any:
        dtype = dtype or x.dtype.name
        x = self.cp.ascontiguousarray(x)
        out = self.cp.empty_like(x)
        comm = self._comm(axes)
        self._run(
            lambda s: comm.allReduce(
                x.data.ptr, out.data.ptr, x.size, self._type(x, dtype), self._op(op, dtype), s
            )
        )
        return out

    def all_gather(
        self,
        x: Any,
        axes: str | Sequence[str],
        dim: int,
        *,
        dtype: str = "",
        where: str | None = None,
    ) -> Any:
        dtype = dtype or x.dtype.name
        n = self.group_size(axes)
        moved = self.cp.ascontiguousarray(self.cp.moveaxis(x, dim, 0))
        out = self.cp.empty((n, *moved.shape), moved.dtype)
        comm = self._comm(axes)
        self._run(
            lambda s: comm.allGather(
                moved.data.ptr, out.data.ptr, moved.size, self._type(x, dtype), s
            )
        )
        joined = out.reshape((n * moved.shape[0], *moved.shape[1:]))
        return self.cp.ascontiguousarray(self.cp.moveaxis(joined, 0, dim))

    def reduce_scatter(
        self,
        x: Any,
        axes: str | Sequence[str],
        dim: int,
        op: str = "sum",
        *,
        dtype: str = "",
        where: str | None = None,
    ) -> Any:
        dtype = dtype or x.dtype.name
        n = self.group_size(axes)
        moved = self.cp.ascontiguousarray(self.cp.moveaxis(x, dim, 0))
        out = self.cp.empty((moved.shape[0] // n, *moved.shape[1:]), moved.dtype)
        comm = self._comm(axes)
        self._run(
            lambda s: comm.reduceScatter(
                moved.data.ptr, out.data.ptr, out.size, self._type(x, dtype), self._op(op, dtype), s
            )
        )
        return self.cp.ascontiguousarray(self.cp.moveaxis(out, 0, dim))

    def broadcast(
        self,
        x: Any,
        axes: str | Sequence[str],
        root: int = 0,
        *,
        dtype: str = "",
        where: str | None = None,
    ) -> Any:
        dtype = dtype or x.dtype.name
        buf = self.cp.array(x, copy=True, order="C")
        comm = self._comm(axes)
        self._run(lambda s: comm.bcast(buf.data.ptr, buf.size, self._type(x, dtype), root, s))
        return buf

    def permute(
        self,
        x: Any,
        axes: str | Sequence[str],
        pairs: Sequence[tuple[int, int]],
        *,
        dtype: str = "",
        where: str | None = None,
    ) -> Any:
        """Each (src, dst) sends src's x to dst; a device nobody sends to gets zeros."""
        dtype = dtype or x.dtype.name
        me = self.group_index(axes)
        x = self.cp.ascontiguousarray(x)
        out = self.cp.zeros_like(x)
        comm, kind = self._comm(axes), self._type(x, dtype)

        def run(stream: int) -> None:
            self.nccl.groupStart()
            for src, dst in pairs:
                if src == me:
                    comm.send(x.data.ptr, x.size, kind, dst, stream)
                if dst == me:
                    comm.recv(out.data.ptr, out.size, kind, src, stream)
            self.nccl.groupEnd()

        self._run(run)
        return out

    def all_to_all(
        self,
        x: Any,
        axes: str | Sequence[str],
        split_dim: int,
        concat_dim: int,
        *,
        dtype: str = "",
        where: str | None = None,
    ) -> Any:
        """Block j of x along split_dim goes to member j; received blocks join on concat_dim."""
        dtype = dtype or x.dtype.name
        n, cp = self.group_size(axes), self.cp
        shape = x.shape[:split_dim] + (n, x.shape[split_dim] // n) + x.shape[split_dim + 1 :]
        blocks = cp.ascontiguousarray(cp.moveaxis(x.reshape(shape), split_dim, 0))
        received = cp.empty_like(blocks)
        comm, kind, count = self._comm(axes), self._type(x, dtype), blocks[0].size

        def run(stream: int) -> None:
            self.nccl.groupStart()
            for peer in range(n):
                comm.send(blocks[peer].data.ptr, count, kind, peer, stream)
                comm.recv(received[peer].data.ptr, count, kind, peer, stream)
            self.nccl.groupEnd()

        self._run(run)
        return cp.concatenate(list(received), axis=concat_dim)

    def barrier(self, *, where: str | None = None) -> None:
        one = self.cp.ones(1, np.float32)
        self.all_reduce(one, self.axis_names)

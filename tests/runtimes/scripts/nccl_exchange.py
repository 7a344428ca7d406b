"""Under `mpiexec -n 4`: collectives.nccl.mpi_exchange hands each group of a 2x2 mesh its
root's 128-byte NCCL unique id through a communicator that offers only the buffer Allgather
(a pickling call, allgather or bcast, would fail). Ids are made up here: no GPU needed.
Every rank prints "EXCHANGED rank=<r> groups=3" when each group's id arrived intact."""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from collectives.nccl import NCCL_ID_BYTES, mpi_exchange
from spmd import mesh

SHAPE, NAMES = (2, 2), ("data", "model")


class BuffersOnly:
    """An mpi4py communicator with its buffer methods only."""

    def __init__(self, comm):
        self._comm = comm

    def Get_size(self) -> int:
        return self._comm.Get_size()

    def Allgather(self, send, receive) -> None:
        self._comm.Allgather(send, receive)


def made_up_id(axes: tuple[str, ...], key: int) -> tuple[int, ...]:
    """A signed-char id as cupy's get_unique_id returns, the same on every rank."""
    rng = np.random.default_rng(1000 * len(axes) + key)
    values = rng.integers(-128, 128, NCCL_ID_BYTES)
    values[:2] = (-128, 127)  # both ends of the range
    return tuple(int(v) for v in values)


def main() -> None:
    rank = MPI.COMM_WORLD.Get_rank()
    exchange = mpi_exchange(BuffersOnly(MPI.COMM_WORLD))
    groups = [("data",), ("model",), ("data", "model")]
    for axes in groups:
        key = mesh.group_key(rank, SHAPE, NAMES, axes)
        root = mesh.group_index(rank, SHAPE, NAMES, axes) == 0
        got = exchange(axes, key, made_up_id(axes, key) if root else None)
        assert got == made_up_id(axes, key), (rank, axes)
    print(f"EXCHANGED rank={rank} groups={len(groups)}", flush=True)


if __name__ == "__main__":
    main()

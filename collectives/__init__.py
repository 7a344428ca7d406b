"""Collectives over groups of mesh axes: the Communicator interface and its transports.

Imports nothing of ours except spmd.errors; mpi4py is imported only when MPICommunicator is used.
"""

from __future__ import annotations

from typing import Any

from collectives.base import (
    Communicator,
    collective_timeout,
    group_index,
    group_members,
    group_size,
)
from collectives.local import LocalCommunicator, LocalWorld, run_on_devices
from collectives.null import CollectiveRecord, NullCommunicator

__all__ = [
    "CollectiveRecord",
    "Communicator",
    "LocalCommunicator",
    "LocalWorld",
    "NullCommunicator",
    "collective_timeout",
    "group_index",
    "group_members",
    "group_size",
    "run_on_devices",
]


def __getattr__(name: str) -> Any:
    """Imports the MPI transport (and so mpi4py) only when it is asked for."""
    if name == "MPICommunicator":
        from collectives.mpi import MPICommunicator

        return MPICommunicator
    raise AttributeError(f"module 'collectives' has no attribute {name!r}")

"""Collectives over groups of mesh axes: the Communicator interface and its transports.

Imports nothing of ours except spmd.errors. Only the transports that need no optional package
are re-exported here; the others are imported from their own modules
(`from collectives.mpi import MPICommunicator` loads mpi4py), so importing collectives never
loads mpi4py, ray or cupy.
"""

from __future__ import annotations

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

"""A per-communicator watchdog thread: ends the MPI job when a blocking collective passes its deadline.

Arming stores one (label, where) tuple and disarming clears it; the thread samples it a few times
per timeout, so the hot path reads no clock. Nothing polls MPI.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Callable

from collectives.base import Axes, timeout_message
from spmd.errors import CollectiveTimeoutError

# Exit status of a job ended by a collective timeout (as timeout(1) uses).
TIMEOUT_EXIT_CODE = 124
# After reporting, a rank waits this long before aborting, so that the other ranks stuck in the
# same (or another) collective print their own report before the job is torn down.
ABORT_GRACE_S = 1.0
# Samples of .armed per timeout: a stuck call is reported between 1 and 1 + 1/SAMPLES timeouts
# after it started.
SAMPLES = 4
HINT = "another rank died, is stuck, or called a different collective"


class Watchdog:
    """Watches one collective at a time; on expiry prints a CollectiveTimeoutError and aborts.

    arm(kind, axes, where) before a blocking call, disarm() after it (hot callers set .armed to a
    fresh ((kind, axes), where) tuple directly, and to None after). The thread fires when it has
    seen the very same tuple armed for a whole timeout: each call arms a new tuple, so a stream of
    short calls never fires.
    """

    def __init__(self, seconds: float, rank: int, abort: Callable[[int], None]):
        self.seconds = float(seconds)
        self.rank = rank
        self.abort = abort
        self.armed: tuple[tuple[str, Axes], str | None] | None = None
        self._thread = threading.Thread(target=self._run, name="spmd-mpi-watchdog", daemon=True)
        self._thread.start()

    def arm(self, kind: str, axes: Axes, where: str | None) -> None:
        """Starts watching one call."""
        self.armed = ((kind, axes), where)

    def disarm(self) -> None:
        """The watched call returned."""
        self.armed = None

    def message(self, kind: str, axes: Axes, where: str | None) -> str:
        """The report printed on expiry: the CollectiveTimeoutError a polling wait would raise."""
        error = CollectiveTimeoutError(
            timeout_message(kind, axes, where, self.seconds)
            + f" on MPI rank {self.rank} (pid {os.getpid()} on {socket.gethostname()})",
            loc=where or "",
            hint=HINT,
        )
        return f"CollectiveTimeoutError: {error}\n  (rank {self.rank} aborts the MPI job)"

    def _run(self) -> None:
        """Samples .armed; fires once the same armed call has been seen for a whole timeout."""
        seen = None
        since = 0.0
        while True:
            time.sleep(self.seconds / SAMPLES)
            armed = self.armed
            now = time.monotonic()
            if armed is None or armed is not seen:
                seen = armed  # holding it keeps its id from being reused by a later call's tuple
                since = now
                continue
            if now - since >= self.seconds:
                (kind, axes), where = armed
                self._fire(kind, axes, where)
                return

    def _fire(self, kind: str, axes: Axes, where: str | None) -> None:
        """Reports to stderr, lets the other ranks report, then aborts the job."""
        sys.stderr.write(self.message(kind, axes, where) + "\n")
        sys.stderr.flush()
        time.sleep(ABORT_GRACE_S)
        self.abort(TIMEOUT_EXIT_CODE)

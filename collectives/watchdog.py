"""A per-communicator watchdog thread: ends the MPI job when a blocking collective passes its deadline.

Arming stores one tuple and disarming clears it (well under a microsecond); nothing polls MPI.
"""

from __future__ import annotations

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
HINT = "another rank died, is stuck, or called a different collective"


class Watchdog:
    """Watches one collective at a time; on expiry prints a CollectiveTimeoutError and aborts.

    arm(kind, axes, where) before a blocking call, disarm() after it (hot callers may set
    .armed directly). A daemon thread sleeps until the armed call's deadline and fires only if
    that same call (same tuple) is still armed then.
    """

    def __init__(self, seconds: float, rank: int, abort: Callable[[int], None]):
        self.seconds = float(seconds)
        self.rank = rank
        self.abort = abort
        self.armed: tuple[float, str, Axes, str | None] | None = None
        self._thread = threading.Thread(target=self._run, name="spmd-mpi-watchdog", daemon=True)
        self._thread.start()

    def arm(self, kind: str, axes: Axes, where: str | None) -> None:
        """Starts watching one call."""
        self.armed = (time.monotonic() + self.seconds, kind, axes, where)

    def disarm(self) -> None:
        """The watched call returned."""
        self.armed = None

    def message(self, kind: str, axes: Axes, where: str | None) -> str:
        """The report printed on expiry: the CollectiveTimeoutError a polling wait would raise."""
        error = CollectiveTimeoutError(
            timeout_message(kind, axes, where, self.seconds) + f" on MPI rank {self.rank}",
            loc=where or "",
            hint=HINT,
        )
        return f"CollectiveTimeoutError: {error}\n  (rank {self.rank} aborts the MPI job)"

    def _run(self) -> None:
        """Sleeps until the armed deadline (or one timeout when idle); fires on a stale call."""
        while True:
            armed = self.armed
            if armed is None:
                time.sleep(self.seconds)
                continue
            wait = armed[0] - time.monotonic()
            if wait > 0:
                time.sleep(wait)
                continue
            if self.armed is armed:
                self._fire(*armed[1:])
                return

    def _fire(self, kind: str, axes: Axes, where: str | None) -> None:
        """Reports to stderr, lets the other ranks report, then aborts the job."""
        sys.stderr.write(self.message(kind, axes, where) + "\n")
        sys.stderr.flush()
        time.sleep(ABORT_GRACE_S)
        self.abort(TIMEOUT_EXIT_CODE)

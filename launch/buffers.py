"""The buffers a Ray device actor holds, by handle, safe against the actor's calls running out
of order.

A Ray actor with several threads (ours: one runs programs, others take deliveries and aborts)
does not run the calls of one caller in the order they were sent. The controller sends
`store(h)` without waiting and then `run(..., args=[h])`; the run may start first, and a
`free(h)` (the controller dropped h) may arrive before the `store(h)` it undoes. So a take
waits for its handles to arrive, and a free of a handle not stored yet leaves a tombstone that
drops the store when it comes. Handles are never reused, so a tombstone cannot hit another
buffer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np

from spmd.errors import RemoteError


class BufferTable:
    """handle -> numpy array; take() waits for handles still on their way."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._buffers: dict[int, np.ndarray] = {}
        self._freed: set[int] = set()  # handles freed before their store arrived
        self._error: str | None = None

    def __len__(self) -> int:
        with self._cond:
            return len(self._buffers)

    def store(self, handle: int, value: np.ndarray) -> None:
        with self._cond:
            if handle in self._freed:
                self._freed.discard(handle)
                return
            self._buffers[handle] = value
            self._cond.notify_all()

    def free(self, handles: Sequence[int]) -> None:
        with self._cond:
            for handle in handles:
                if self._buffers.pop(handle, None) is None:
                    self._freed.add(handle)

    def abort(self, message: str) -> None:
        """Wakes a waiting take() with RemoteError (another device failed)."""
        with self._cond:
            self._error = message
            self._cond.notify_all()

    def reset(self) -> None:
        """Forgets an abort (the next step starts clean); the buffers stay."""
        with self._cond:
            self._error = None

    def take(self, handles: Sequence[int], timeout: float) -> list[np.ndarray]:
        """The buffers of handles, waiting up to timeout seconds (<= 0: forever) for the stores
        still on their way."""
        deadline = time.monotonic() + timeout if timeout > 0 else None
        with self._cond:
            while missing := [h for h in handles if h not in self._buffers]:
                if self._error is not None:
                    raise RemoteError(self._error)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise RemoteError(
                        f"buffer handle(s) {missing} never reached this actor within "
                        f"{timeout:g} s (freed already, or the controller's store failed); "
                        f"this is a bug in spmd"
                    )
                self._cond.wait(remaining)
            return [self._buffers[h] for h in handles]

"""Which Ray actor a failed step blames. The first error the controller sees may come from an
actor that was only waiting: a peer's connection closed under it, or its collective timed out
waiting for a peer. Those are consequences; the step's error names the actor that failed by
itself (its rank, pid and node, and its traceback), or, when every error is a consequence, the
actor still running when the others gave up on it (stuck). The error's location is the user's
line in the controller that ran the step.
"""

from __future__ import annotations

import time
from typing import Any

import ray

from spmd.errors import CollectiveTimeoutError, RemoteError

# After a consequence arrives, how long the controller waits for the error that caused it
# (Ray reports a killed actor a moment after its peers saw its sockets close).
SETTLE_S = 3.0


def consequence(exc: BaseException) -> bool:
    """Whether an actor's error was caused by another actor: an abort, a lost peer, or a
    collective that timed out waiting for a peer."""
    cause = exc.cause if isinstance(exc, ray.exceptions.RayTaskError) else exc
    return isinstance(cause, (RemoteError, CollectiveTimeoutError))


def gather(
    first: tuple[int, BaseException], remaining: list[Any], refs: list[Any], devices: list[int]
) -> tuple[list[tuple[int, BaseException]], list[Any]]:
    """The failures after `first` (a consequence) in the order they arrive, for up to
    SETTLE_S or until one is not a consequence; and the refs still running."""
    failures = [first]
    deadline = time.monotonic() + SETTLE_S
    while remaining:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        done, remaining = ray.wait(remaining, num_returns=1, timeout=left)
        if not done:
            break
        try:
            ray.get(done[0])
        except (ray.exceptions.RayError, RemoteError) as exc:
            failures.append((devices[refs.index(done[0])], exc))
            if not consequence(exc):
                break
    return failures, remaining


def blame(
    failures: list[tuple[int, BaseException]], running: list[int], actors: list[tuple[str, int]]
) -> str:
    """The step's error message. actors: each device's (node address, pid)."""

    def who(device: int) -> str:
        host, pid = actors[device]
        return f"device {device} (Ray actor, pid {pid} on {host})"

    for device, exc in failures:
        if not consequence(exc):
            return f"{who(device)} failed first:\n{text(exc)}"
    first_device, first = failures[0]
    if running:
        waiting = ", ".join(str(device) for device, _ in failures)
        return (
            f"{who(running[0])} is stuck: device{'s' if len(failures) > 1 else ''} "
            f"{waiting} gave up waiting for it; device {first_device} said:\n{text(first)}"
        )
    return f"{who(first_device)} failed first:\n{text(first)}"


def text(exc: BaseException) -> str:
    """The remote traceback Ray carries (its text), or why the actor died."""
    return str(exc).rstrip()


__all__ = ["blame", "consequence", "gather"]

"""`spmd-launch --runtime tcp --max-restarts N --min-devices M`: after a failure the job starts
again on the devices that remain, on a smaller mesh, and the script resumes from its latest
checkpoint (spmd.checkpoint reshards on restore).

The mesh shrinks along its first axis (data parallelism: the global batch and the model's
shards stay the same): to the largest divisor of its size that fits the remaining devices,
so the batch still splits evenly. Imports nothing from spmd.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence


def shrink_mesh(shape: Sequence[int], remaining: int, minimum: int) -> tuple[int, ...] | None:
    """The mesh to continue on with `remaining` devices (shape itself if it still fits), or
    None when it would have fewer than `minimum` devices."""
    shape = tuple(shape)
    if math.prod(shape) <= remaining:
        return shape
    rest = math.prod(shape[1:])
    fits = [d for d in range(1, shape[0] + 1) if shape[0] % d == 0 and d * rest <= remaining]
    if not fits or fits[-1] * rest < minimum:
        return None
    return (fits[-1], *shape[1:])


def mesh_text(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


def restarts_on_remaining_devices(
    shape: Sequence[int],
    minimum: int | None,
    environments: Callable[[Mapping[str, str], int, int], Sequence[Mapping[str, str]]],
    base: Mapping[str, str],
) -> Callable[[int, list[str]], Sequence[Mapping[str, str]]]:
    """The environments(attempt, lost) for launch.processes.run_restarting: each attempt on the
    current mesh (SPMD_MESH); with `minimum`, every lost process takes its device away and the
    next attempt runs on shrink_mesh(...), said on stderr; [] (give up) below `minimum`.
    environments(base, size, attempt) makes one environment per process."""
    current = [tuple(shape)]

    def make(attempt: int, lost: list[str]) -> Sequence[Mapping[str, str]]:
        if attempt and lost and minimum is not None:
            devices = math.prod(current[0])
            remaining = devices - len(lost)
            smaller = shrink_mesh(current[0], remaining, minimum)
            why = "; ".join(lost)
            if smaller is None:
                _say(
                    f"cannot continue: {remaining} of {devices} devices remain after losing "
                    f"{why}, and no mesh like {mesh_text(current[0])} on them has "
                    f"--min-devices {minimum}"
                )
                return []
            current[0] = smaller
            _say(
                f"continuing on {mesh_text(smaller)} ({math.prod(smaller)} devices) after "
                f"losing {why}"
            )
        return environments(
            dict(base, SPMD_MESH=mesh_text(current[0])), math.prod(current[0]), attempt
        )

    return make


def _say(message: str) -> None:
    sys.stderr.write(f"spmd-launch: {message}\n")
    sys.stderr.flush()

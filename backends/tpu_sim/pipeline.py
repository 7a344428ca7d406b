"""Bubble accounting for pipeline schedules: lay a schedule table (spmd/pipeline_schedule.py,
read by duck typing: `.ticks`, `.devices`, `.name`, `.microbatches`) on the simulator's
per-device Timeline with the stage forward/backward and shift times the simulator priced.
Imports only spmd.errors, the stdlib and this package.

Two clocks: the *schedule* timeline runs each slot as soon as its device is free and its
input has arrived (a stage's output plus one shift), as an MPMD pipeline runs; idle spans
are "bubble" events. The *lockstep* time is what spmd's SPMD program executes: every tick
every device computes (masked where the table is idle), a forward and/or a backward, then
shifts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spmd.errors import SimulationError

from .timeline import Timeline

BUBBLE = "bubble"


@dataclass
class PipelineSim:
    """One training step of a pipeline schedule on the simulated slice (per pipe device)."""

    schedule: str
    devices: int
    microbatches: int
    forward_s: float
    backward_s: float
    shift_s: float
    step_time_s: float
    busy_s: list[float]
    lockstep_step_s: float
    timeline: Timeline

    @property
    def bubble_fraction(self) -> float:
        """Device time not spent on a slot of the table over the step's device time."""
        total = self.step_time_s * self.devices
        return 0.0 if total == 0 else 1.0 - sum(self.busy_s) / total

    def table(self) -> str:
        """A short text report: step time, bubble, per-slot costs."""
        return (
            f"pipeline {self.schedule}: {self.devices} devices x {self.microbatches} "
            f"microbatches\n  step {self.step_time_s * 1e3:.3f} ms, bubble "
            f"{self.bubble_fraction:.1%} (SPMD lockstep program "
            f"{self.lockstep_step_s * 1e3:.3f} ms)\n  forward {self.forward_s * 1e6:.1f} us,"
            f" backward {self.backward_s * 1e6:.1f} us, shift {self.shift_s * 1e6:.1f} us "
            f"per stage slot"
        )

    def to_chrome_trace(self, path: str | os.PathLike) -> Path:
        """Perfetto/Chrome trace JSON: one process per pipe device, bubbles as events."""
        return self.timeline.to_chrome_trace(path)


def schedule_timeline(
    schedule: Any, forward_s: float, backward_s: float, shift_s: float = 0.0
) -> PipelineSim:
    """Slots in table order per device; a forward waits for the previous stage's forward
    and its shift, a backward for the next stage's backward and its shift (the last stage
    for its own forward); the gap before a slot is a `bubble` event."""
    for name, value in (("forward_s", forward_s), ("backward_s", backward_s), ("shift_s", shift_s)):
        if value < 0:
            raise SimulationError(
                f"pipeline timeline: {name}={value!r} is negative",
                hint="pass seconds >= 0 (from the simulated stage program)",
            )
    p = int(schedule.devices)
    stages = p * int(getattr(schedule, "stages_per_device", 1))
    timeline = Timeline(p, overlap=True)
    busy, free = [0.0] * p, [0.0] * p
    arrived: dict[tuple[str, int, int], float] = {}
    for t, row in enumerate(schedule.ticks):
        for d, slot in enumerate(row):
            if slot is None:
                continue
            cost = backward_s if slot.kind == "B" else forward_s
            ready = max(free[d], _input_ready(slot, arrived, stages))
            if ready > free[d]:
                timeline.add(d, BUBBLE, ready - free[d], BUBBLE, {"tick": t}, ready=free[d])
            event = timeline.add(
                d,
                str(slot),
                cost,
                "compute",
                {"stage": slot.stage, "microbatch": slot.microbatch, "kind": slot.kind, "tick": t},
                ready=ready,
            )
            busy[d] += cost
            free[d] = event.end
            arrived[(slot.kind, slot.stage, slot.microbatch)] = _send(
                timeline, slot, d, p, stages, event.end, shift_s
            )
    end = max(free, default=0.0)
    for d in range(p):
        if end > free[d]:
            timeline.add(d, BUBBLE, end - free[d], BUBBLE, {"tick": "drain"}, ready=free[d])
    return PipelineSim(
        str(schedule.name),
        p,
        int(schedule.microbatches),
        forward_s,
        backward_s,
        shift_s,
        end,
        busy,
        lockstep_seconds(schedule, forward_s, backward_s, shift_s),
        timeline,
    )


def _input_ready(slot: Any, arrived: dict[tuple[str, int, int], float], stages: int) -> float:
    if slot.kind == "F":
        return arrived.get(("F", slot.stage - 1, slot.microbatch), 0.0) if slot.stage else 0.0
    if slot.stage == stages - 1:
        return arrived[("F", slot.stage, slot.microbatch)]
    return arrived[("B", slot.stage + 1, slot.microbatch)]


def _send(
    timeline: Timeline, slot: Any, d: int, p: int, stages: int, done: float, shift_s: float
) -> float:
    """When the slot's output is on the device that needs it (its own, for the last stage's
    forward and the first stage's backward)."""
    last_forward = slot.kind == "F" and slot.stage == stages - 1
    if last_forward or (slot.kind == "B" and slot.stage == 0) or p == 1 or not shift_s:
        return done
    to = (d + 1) % p if slot.kind == "F" else (d - 1) % p
    # on the sender's ICI stream only: a ring neighbour's send and receive use two links
    return timeline.add(
        d,
        f"shift {slot} -> device {to}",
        shift_s,
        "collective",
        {"kind": slot.kind, "to": to},
        ready=done,
    ).end


def lockstep_seconds(schedule: Any, forward_s: float, backward_s: float, shift_s: float) -> float:
    """The SPMD program's time: a tick of one kind runs it on every device (masked where
    idle); a tick that mixes them branches on each device's role (spmd/pipeline_grad_ticks.py),
    so it lasts its longer slot; then one shift per direction used."""
    total = 0.0
    for t, row in enumerate(schedule.ticks):
        kinds = {s.kind for s in row if s is not None}
        total += max(forward_s * ("F" in kinds), backward_s * ("B" in kinds))
        if t + 1 < len(schedule.ticks):
            total += shift_s * len(kinds)
    return total

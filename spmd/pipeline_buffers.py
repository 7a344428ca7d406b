"""Buffer slots for running a schedule table explicitly (spmd.pipeline_value_and_grad):
per device, where each stage input is kept until its backward (the stash) and where an
activation or gradient that arrived early waits until its slot runs (the inboxes).
Pure data from the table, so the simulator and the memory tests read the same sizes.
Imports nothing of ours but the schedule (a core module).

    >>> from spmd.pipeline_schedule import gpipe, one_f_one_b
    >>> plan(one_f_one_b(4, 16)).stash_slots, plan(gpipe(4, 16)).stash_slots
    (4, 16)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from spmd.pipeline_schedule import BACKWARD, FORWARD, Schedule, Slot

Key = tuple[int, int]  # (stage, microbatch)


@dataclass
class TickPlan:
    """What every device does at one tick; -1 where a device has nothing to do."""

    f_stash_write: list[int]  # stash slot the forward's input goes to
    f_inbox_read: list[int]  # forward inbox slot its input comes from (-1: injected)
    b_stash_read: list[int]  # stash slot the backward's stage input comes from
    b_inbox_read: list[int]  # backward inbox slot its cotangent comes from (-1: loss)
    f_inbox_write: list[int]  # after the shift: slot the received activation goes to
    b_inbox_write: list[int]  # after the shift: slot the received cotangent goes to
    chunk: list[int]  # which of the device's stage chunks runs (slot.stage // p)

    @property
    def any_forward(self) -> bool:
        return any(s >= 0 for s in self.f_stash_write)

    @property
    def any_backward(self) -> bool:
        return any(s >= 0 for s in self.b_stash_read)


@dataclass
class BufferPlan:
    """Per-tick slots and the buffer sizes they need (the same on every device)."""

    ticks: list[TickPlan] = field(default_factory=list)
    stash_slots: int = 1
    f_inbox_slots: int = 1
    b_inbox_slots: int = 1

    def activations_per_device(self) -> int:
        """Stage-sized buffers one device holds: the stash and both inboxes."""
        return self.stash_slots + self.f_inbox_slots + self.b_inbox_slots


class _Slots:
    """A free list per device: the lowest free slot, reused once its value is consumed."""

    def __init__(self, devices: int):
        self.held: list[dict[Key, int]] = [{} for _ in range(devices)]
        self.size = 1

    def take(self, d: int, key: Key) -> int:
        used = set(self.held[d].values())
        slot = next(i for i in range(len(used) + 1) if i not in used)
        self.held[d][key] = slot
        self.size = max(self.size, slot + 1)
        return slot

    def give(self, d: int, key: Key) -> int:
        return self.held[d].pop(key)


def plan(schedule: Schedule) -> BufferPlan:
    """Slots for every tick of `schedule`: a forward stashes its input until its backward;
    a value sent at tick t is stored on arrival and read by the slot that needs it."""
    p, stages = schedule.devices, schedule.stages
    stash, f_inbox, b_inbox = _Slots(p), _Slots(p), _Slots(p)
    out = BufferPlan()
    for row in schedule.ticks:
        tp = TickPlan(*([-1] * p for _ in range(6)), chunk=[0] * p)
        for d, slot in enumerate(row):
            if slot is None:
                continue
            tp.chunk[d] = slot.stage // p
            key = (slot.stage, slot.microbatch)
            if slot.kind == FORWARD:
                tp.f_inbox_read[d] = f_inbox.give(d, key) if slot.stage else -1
                tp.f_stash_write[d] = stash.take(d, key)
            else:
                tp.b_stash_read[d] = stash.give(d, key)
                tp.b_inbox_read[d] = b_inbox.give(d, key) if slot.stage < stages - 1 else -1
        for d, slot in enumerate(row):
            _deliver(slot, d, p, stages, tp, f_inbox, b_inbox)
        out.ticks.append(tp)
    out.stash_slots, out.f_inbox_slots, out.b_inbox_slots = stash.size, f_inbox.size, b_inbox.size
    return out


def _deliver(
    slot: Slot | None, d: int, p: int, stages: int, tp: TickPlan, f_inbox: _Slots, b_inbox: _Slots
) -> None:
    """A forward's output goes to the next stage's device, a backward's input cotangent to
    the previous stage's (one ring step either way)."""
    if slot is None:
        return
    if slot.kind == FORWARD and slot.stage < stages - 1:
        to = (d + 1) % p
        tp.f_inbox_write[to] = f_inbox.take(to, (slot.stage + 1, slot.microbatch))
    if slot.kind == BACKWARD and slot.stage > 0:
        to = (d - 1) % p
        tp.b_inbox_write[to] = b_inbox.take(to, (slot.stage - 1, slot.microbatch))

"""Pipeline schedules as data: per tick, which (stage, microbatch, forward/backward) each
device of the pipe axis runs. spmd.pipeline and the TPU simulator's bubble accounting both
read these tables. Imports nothing of ours but errors (a core module).

A tick is one stage-chunk's forward or backward on one device (both cost one tick here;
`Schedule.bubble_fraction(backward_cost=...)` weighs them). Stage j of S = p*v lives on
device j % p as its chunk j // p (the circular layout: with v = 1, stage j on device j).

    >>> s = gpipe(4, 8)
    >>> s.num_ticks, round(s.bubble_fraction(), 4), s.peak_live_activations()
    (22, 0.2727, 8)
    >>> one_f_one_b(4, 8).peak_live_activations()
    4
"""

from __future__ import annotations

from dataclasses import dataclass

from spmd.errors import ShapeError

FORWARD = "F"
BACKWARD = "B"
SCHEDULES = ("gpipe", "1f1b", "interleaved")


@dataclass(frozen=True)
class Slot:
    """One unit of work: `kind` ("F"/"B") of global `stage` on `microbatch`."""

    stage: int
    microbatch: int
    kind: str

    def __str__(self) -> str:
        return f"{self.kind}{self.microbatch}@s{self.stage}"


@dataclass(frozen=True)
class Schedule:
    """ticks[t][d]: the Slot device d runs at tick t, or None (a bubble)."""

    name: str
    devices: int
    stages_per_device: int
    microbatches: int
    ticks: tuple[tuple[Slot | None, ...], ...]

    @property
    def stages(self) -> int:
        return self.devices * self.stages_per_device

    @property
    def num_ticks(self) -> int:
        return len(self.ticks)

    def forward_ticks(self) -> list[tuple[Slot | None, ...]]:
        """The ticks that hold forwards only (for all-forward-then-backward schedules, the
        forward half that spmd.pipeline unrolls; autodiff runs the rest in reverse)."""
        return [
            row
            for row in self.ticks
            if any(s is not None for s in row) and all(s is None or s.kind == FORWARD for s in row)
        ]

    def bubble_fraction(self, backward_cost: float = 1.0) -> float:
        """Idle device-time over total device-time, a backward costing `backward_cost`
        forwards (a tick lasts as long as its slowest slot)."""
        total = busy = 0.0
        for row in self.ticks:
            cost = [0.0 if s is None else backward_cost if s.kind == BACKWARD else 1.0 for s in row]
            length = max(cost)
            total += length * self.devices
            busy += sum(cost)
        return 0.0 if total == 0 else 1.0 - busy / total

    def live_activations(self, device: int) -> list[int]:
        """Per tick, the (stage, microbatch) forwards of `device` whose backward has not run
        yet: the activations it must keep."""
        live: set[tuple[int, int]] = set()
        out = []
        for row in self.ticks:
            slot = row[device]
            if slot is not None and slot.kind == FORWARD:
                live.add((slot.stage, slot.microbatch))
            elif slot is not None:
                live.discard((slot.stage, slot.microbatch))
            out.append(len(live))
        return out

    def peak_live_activations(self) -> int:
        """The most stage activations any device keeps at once."""
        return max(max(self.live_activations(d), default=0) for d in range(self.devices))

    def as_text(self) -> str:
        """The table, one line per tick: `t: F0@s0  .  ...` ('.' a bubble)."""
        lines = []
        for t, row in enumerate(self.ticks):
            cells = " ".join(f"{str(s) if s else '.':<9}" for s in row)
            lines.append(f"{t:>3}: {cells}".rstrip())
        return "\n".join(lines)


def _check(devices: int, microbatches: int, stages_per_device: int) -> None:
    for name, value in (
        ("pipe axis size", devices),
        ("num_microbatches", microbatches),
        ("stages_per_device", stages_per_device),
    ):
        if not isinstance(value, int) or value < 1:
            raise ShapeError(
                f"pipeline schedule: {name} must be a positive int, got {value!r}",
                hint=f"pass a {name} >= 1",
            )


def _list_schedule(name: str, devices: int, v: int, m: int, orders: list[list[Slot]]) -> Schedule:
    """Run each device's ordered slot list as early as its dependencies allow: F(i, j)
    after F(i, j-1); B(i, j) after B(i, j+1) (after F(i, S-1) on the last stage)."""
    stages = devices * v
    done: dict[tuple[str, int, int], int] = {}
    pos = [0] * devices
    rows: list[tuple[Slot | None, ...]] = []
    while any(pos[d] < len(orders[d]) for d in range(devices)):
        row: list[Slot | None] = []
        for d in range(devices):
            slot = orders[d][pos[d]] if pos[d] < len(orders[d]) else None
            if slot is not None and not _ready(slot, done, stages, len(rows)):
                slot = None
            row.append(slot)
        if all(s is None for s in row):
            raise ShapeError(
                f"pipeline schedule {name!r} deadlocks at tick {len(rows)}",
                hint="this is a bug in the schedule's slot orders",
            )
        for d, slot in enumerate(row):
            if slot is not None:
                done[(slot.kind, slot.stage, slot.microbatch)] = len(rows)
                pos[d] += 1
        rows.append(tuple(row))
    return Schedule(name, devices, v, m, tuple(rows))


def _ready(slot: Slot, done: dict[tuple[str, int, int], int], stages: int, tick: int) -> bool:
    i, j = slot.microbatch, slot.stage
    if slot.kind == FORWARD:
        need = None if j == 0 else (FORWARD, j - 1, i)
    else:
        need = (FORWARD, j, i) if j == stages - 1 else (BACKWARD, j + 1, i)
    return need is None or done.get(need, tick) < tick


def gpipe(devices: int, microbatches: int) -> Schedule:
    """All forwards in microbatch order, then all backwards in reverse (what autodiff of the
    unrolled forward runs): bubble (p-1)/(m+p-1), every device keeps m activations."""
    _check(devices, microbatches, 1)
    orders = [
        [Slot(d, i, FORWARD) for i in range(microbatches)]
        + [Slot(d, i, BACKWARD) for i in reversed(range(microbatches))]
        for d in range(devices)
    ]
    return _list_schedule("gpipe", devices, 1, microbatches, orders)


def one_f_one_b(devices: int, microbatches: int) -> Schedule:
    """PipeDream-flush: device d warms up with p-1-d forwards, then alternates one forward
    and one backward: the same bubble as GPipe, at most p activations kept per device."""
    _check(devices, microbatches, 1)
    orders = []
    for d in range(devices):
        warm = min(devices - 1 - d, microbatches)
        order = [Slot(d, i, FORWARD) for i in range(warm)]
        for i in range(warm, microbatches):
            order += [Slot(d, i, FORWARD), Slot(d, i - warm, BACKWARD)]
        order += [Slot(d, i, BACKWARD) for i in range(microbatches - warm, microbatches)]
        orders.append(order)
    return _list_schedule("1f1b", devices, 1, microbatches, orders)


def interleaved(devices: int, stages_per_device: int, microbatches: int) -> Schedule:
    """Circular (GSPMD / praxis): v chunks per device, microbatches in groups of p go round
    the ring v times, all forwards then all backwards: bubble (p-1)/(v*m+p-1) when p
    divides m. A last group of r < p microbatches waits p - r ticks at each lap's end on
    device 0 (its first microbatch is still going round), a larger bubble, same results."""
    _check(devices, microbatches, stages_per_device)
    v = stages_per_device
    groups = [range(g, min(g + devices, microbatches)) for g in range(0, microbatches, devices)]
    orders = []
    for d in range(devices):
        fwd = [
            Slot(k * devices + d, i, FORWARD) for group in groups for k in range(v) for i in group
        ]
        orders.append(fwd + [Slot(s.stage, s.microbatch, BACKWARD) for s in reversed(fwd)])
    return _list_schedule("interleaved", devices, v, microbatches, orders)


def make_schedule(
    name: str, devices: int, microbatches: int, stages_per_device: int = 1
) -> Schedule:
    """The named schedule's table for a pipe axis of `devices` devices."""
    if name not in SCHEDULES:
        raise ShapeError(
            f"unknown pipeline schedule {name!r}",
            hint=f"use one of {', '.join(map(repr, SCHEDULES))}",
        )
    if name != "interleaved" and stages_per_device != 1:
        raise ShapeError(
            f"schedule {name!r} runs one stage per device, got "
            f"stages_per_device={stages_per_device}",
            hint="use schedule='interleaved' for several stages per device",
        )
    if name == "gpipe":
        return gpipe(devices, microbatches)
    if name == "1f1b":
        return one_f_one_b(devices, microbatches)
    return interleaved(devices, stages_per_device, microbatches)

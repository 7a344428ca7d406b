"""Per-device event timeline (compute and ICI streams) and its Chrome/Perfetto trace JSON.

Imports only spmd.errors and the stdlib.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from spmd.errors import SimulationError

STREAMS = ("compute", "ici", "host")
# Categories that run on the ICI stream; "host" (copies over the host link) on its own;
# everything else is compute.
COMM_CATEGORIES = frozenset({"collective", "communication", "ici", "send", "recv"})


@dataclass(frozen=True, slots=True)
class Event:
    """One span on one device's stream; times in seconds."""

    device: int
    stream: str
    name: str
    start: float
    duration: float
    category: str = "compute"
    args: dict = field(default_factory=dict)

    @property
    def end(self) -> float:
        """When the event finishes."""
        return self.start + self.duration


class Timeline:
    """Schedules events on each device's compute and ICI streams.

    With overlap=True a collective runs on the ICI stream alongside independent compute
    (the caller says what an event depends on through `ready`); with overlap=False both
    streams share one clock, so every event waits for everything before it.
    """

    def __init__(self, num_devices: int, overlap: bool = True) -> None:
        if num_devices < 1:
            raise SimulationError(
                f"a timeline needs >= 1 device, got {num_devices!r}",
                hint="pass the mesh's device count",
            )
        self.num_devices = num_devices
        self.overlap = overlap
        self.events: list[Event] = []
        self._free = [dict.fromkeys(STREAMS, 0.0) for _ in range(num_devices)]

    def _stream(self, category: str) -> str:
        if category == "host":
            return "host"
        return "ici" if category in COMM_CATEGORIES else "compute"

    def _earliest(self, device: int, stream: str) -> float:
        if not 0 <= device < self.num_devices:
            raise SimulationError(
                f"device {device!r} out of range for a {self.num_devices}-device timeline",
                hint=f"use a device index in [0, {self.num_devices})",
            )
        free = self._free[device]
        return free[stream] if self.overlap else max(free.values())

    def add(
        self,
        device: int,
        name: str,
        duration: float,
        category: str = "compute",
        args: dict | None = None,
        ready: float = 0.0,
    ) -> Event:
        """Append an event on `device` starting once its stream is free and at >= `ready`."""
        if duration < 0:
            self._negative(name, duration)
        stream = self._stream(category)
        start = max(ready, self._earliest(device, stream))
        event = Event(device, stream, name, start, duration, category, dict(args or {}))
        self._free[device][stream] = event.end
        self.events.append(event)
        return event

    def add_group(
        self,
        devices: Iterable[int],
        name: str,
        duration: float,
        category: str = "collective",
        args: dict | None = None,
        ready: float = 0.0,
    ) -> list[Event]:
        """One synchronised event across `devices` (a collective): all start together."""
        if duration < 0:
            self._negative(name, duration)
        devices = list(devices)
        stream = self._stream(category)
        start = max([ready, *(self._earliest(d, stream) for d in devices)])
        events = []
        for d in devices:
            event = Event(d, stream, name, start, duration, category, dict(args or {}))
            self._free[d][stream] = event.end
            self.events.append(event)
            events.append(event)
        return events

    def _negative(self, name: str, duration: float) -> None:
        raise SimulationError(
            f"event {name!r} has negative duration {duration!r}",
            hint="durations are seconds >= 0",
        )

    def device_end(self, device: int) -> float:
        """When `device`'s last event finishes."""
        return max(self._free[device].values())

    def step_time(self) -> float:
        """When the last event on any device finishes."""
        return max((e.end for e in self.events), default=0.0)

    def busy_time(self, device: int, stream: str = "compute") -> float:
        """Total seconds `device` spends on `stream`."""
        return sum(e.duration for e in self.events if e.device == device and e.stream == stream)

    def to_chrome_trace(self, path: str | os.PathLike) -> Path:
        """Write Chrome/Perfetto trace JSON (one process per device, a thread per stream)."""
        trace: list[dict] = []
        for d in range(self.num_devices):
            trace.append(
                {
                    "ph": "M",
                    "name": "process_name",
                    "pid": d,
                    "tid": 0,
                    "args": {"name": f"device {d}"},
                }
            )
            for tid, stream in enumerate(STREAMS):
                trace.append(
                    {
                        "ph": "M",
                        "name": "thread_name",
                        "pid": d,
                        "tid": tid,
                        "args": {"name": stream},
                    }
                )
        for e in sorted(self.events, key=lambda e: (e.device, e.start)):
            trace.append(
                {
                    "ph": "X",
                    "name": e.name,
                    "cat": e.category,
                    "pid": e.device,
                    "tid": STREAMS.index(e.stream),
                    "ts": e.start * 1e6,
                    "dur": e.duration * 1e6,
                    "args": {k: _jsonable(v) for k, v in e.args.items()},
                }
            )
        path = Path(path)
        payload = json.dumps({"traceEvents": trace, "displayTimeUnit": "ns"})
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(payload)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path


def _jsonable(value: object) -> object:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)

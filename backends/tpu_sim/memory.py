"""Live-buffer and peak-HBM accounting for one simulated device; OOM names the culprits.

Imports only spmd.errors and the stdlib.
"""

from __future__ import annotations

from dataclasses import dataclass

from spmd.errors import SimulationError


@dataclass(frozen=True)
class Buffer:
    """A live allocation: its name, size and the user line that made it."""

    name: str
    nbytes: int
    loc: str | None = None


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


class MemoryTracker:
    """Tracks named buffers on one device against its HBM capacity."""

    def __init__(self, capacity_bytes: int, device: int = 0, report_top: int = 5) -> None:
        self.capacity = int(capacity_bytes)
        self.device = device
        self.report_top = report_top
        self.live: dict[str, Buffer] = {}
        self.current = 0
        self.peak = 0
        self.peak_live: tuple[Buffer, ...] = ()

    def alloc(self, name: str, nbytes: int, loc: str | None = None) -> Buffer:
        """Allocate `name`; raises SimulationError if live bytes would exceed capacity."""
        if name in self.live:
            raise SimulationError(
                f"buffer {name!r} is already live on device {self.device}",
                loc=loc,
                hint="free it first or use a unique name",
            )
        if nbytes < 0:
            raise SimulationError(
                f"buffer {name!r} has negative size {nbytes!r}",
                loc=loc,
                hint="sizes are bytes >= 0",
            )
        buf = Buffer(name, int(nbytes), loc)
        if self.current + buf.nbytes > self.capacity:
            self._oom(buf)
        self.live[name] = buf
        self.current += buf.nbytes
        if self.current > self.peak:
            self.peak = self.current
            self.peak_live = tuple(self.live.values())
        return buf

    def free(self, name: str) -> None:
        """Release a live buffer."""
        buf = self.live.pop(name, None)
        if buf is None:
            raise SimulationError(
                f"free of buffer {name!r} that is not live on device {self.device}",
                hint="this is likely a bug in the caller",
            )
        self.current -= buf.nbytes

    def largest(self, k: int | None = None) -> list[Buffer]:
        """The k largest live buffers, biggest first."""
        ordered = sorted(self.live.values(), key=lambda b: b.nbytes, reverse=True)
        return ordered[: k or self.report_top]

    def _oom(self, buf: Buffer) -> None:
        culprits = sorted([*self.live.values(), buf], key=lambda b: b.nbytes, reverse=True)
        lines = [
            f"    {b.name}: {_fmt_bytes(b.nbytes)}" + (f" at {b.loc}" if b.loc else "")
            for b in culprits[: self.report_top]
        ]
        raise SimulationError(
            f"device {self.device} out of HBM: allocating {buf.name!r} "
            f"({_fmt_bytes(buf.nbytes)}) needs {_fmt_bytes(self.current + buf.nbytes)} of "
            f"{_fmt_bytes(self.capacity)}; largest live buffers:\n" + "\n".join(lines),
            loc=buf.loc,
            hint="shard the largest buffers over more devices, rematerialise them, "
            "or use a chip with more HBM",
        )

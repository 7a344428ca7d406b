"""SimReport: what one simulated step costs (time, compute/ICI split, MFU, peak HBM, per-op rows).

Imports only spmd.errors, the stdlib and this package.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .memory import Buffer, _fmt_bytes
from .timeline import Event, Timeline


@dataclass
class OpRow:
    """One op of the per-device program (a fused group, a matmul, a collective...).

    time_s, flops and bytes add up over every execution (a scan body op runs `count` times).
    bytes is HBM traffic for compute ops and the per-device payload for collectives.
    """

    op: str
    kind: str
    time_s: float
    flops: float
    bytes: float
    loc: str
    count: int = 1
    axes: tuple[str, ...] = ()


@dataclass
class SimReport:
    """The simulated cost of one call of a per-device program on a TPU slice."""

    chip: str
    mesh: dict[str, int]
    topology: tuple[int, ...]
    step_time_s: float
    compute_time_s: float
    collective_time_s: float
    flops: float
    peak_flops: float
    peak_memory_bytes: int
    hbm_bytes: int
    ops: list[OpRow]
    timeline: Timeline
    peak_buffers: tuple[Buffer, ...] = ()
    overlap: bool = False
    notes: list[str] = field(default_factory=list)
    peak_host_bytes: int = 0  # offloaded residuals in pinned host memory
    program: Any = field(default=None, repr=False, compare=False)  # the simulated Graph

    @property
    def num_devices(self) -> int:
        """Chips in the simulated slice."""
        n = 1
        for size in self.mesh.values():
            n *= size
        return n

    @property
    def mfu(self) -> float:
        """Model FLOPs utilisation: useful FLOPs per chip / (step time x bf16 peak)."""
        if self.step_time_s <= 0:
            return 0.0
        return self.flops / (self.step_time_s * self.peak_flops)

    @property
    def collective_bytes(self) -> float:
        """Bytes each device feeds into collectives over the step."""
        return sum(r.bytes for r in self.ops if r.kind == "collective")

    @property
    def exposed_collective_s(self) -> float:
        """Collective time not hidden behind compute."""
        return max(0.0, self.step_time_s - self.compute_time_s)

    def collectives(self) -> list[OpRow]:
        """The collective rows, slowest first."""
        return sorted((r for r in self.ops if r.kind == "collective"), key=lambda r: -r.time_s)

    def by_kind(self) -> dict[str, float]:
        """Seconds per op kind (matmul, fusion, copy, collective...)."""
        out: dict[str, float] = defaultdict(float)
        for r in self.ops:
            out[r.kind] += r.time_s
        return dict(out)

    def table(self, top: int = 15) -> str:
        """The printed report: summary, split by kind, slowest ops and collectives."""
        mesh = "x".join(str(s) for s in self.mesh.values()) or "1"
        names = ",".join(self.mesh) or "-"
        lines = [
            (
                f"TPU simulation: {self.chip} x {self.num_devices} (mesh {mesh} [{names}], "
                f"torus {'x'.join(map(str, self.topology))}, overlap={self.overlap})"
            ),
            f"  step time       {_fmt_s(self.step_time_s)}",
            f"  compute         {_fmt_s(self.compute_time_s)}",
            (
                f"  collectives     {_fmt_s(self.collective_time_s)} "
                f"({_fmt_s(self.exposed_collective_s)} exposed, "
                f"{_fmt_bytes(self.collective_bytes)} per device)"
            ),
            f"  MFU             {self.mfu * 100:.1f}%  ({self.flops:.3g} FLOPs per device)",
            (
                f"  peak HBM        {_fmt_bytes(self.peak_memory_bytes)} of "
                f"{_fmt_bytes(self.hbm_bytes)} per device"
                + (
                    f" (+ {_fmt_bytes(self.peak_host_bytes)} offloaded to host)"
                    if self.peak_host_bytes
                    else ""
                )
            ),
            "  time by kind    "
            + ", ".join(
                f"{k} {_fmt_s(v)}" for k, v in sorted(self.by_kind().items(), key=lambda kv: -kv[1])
            ),
            "",
            f"  {'op':<28} {'kind':<11} {'time':>10} {'count':>6} {'GFLOP':>9} {'MB':>9}  line",
        ]
        for r in sorted(self.ops, key=lambda r: -r.time_s)[:top]:
            name = r.op if not r.axes else f"{r.op}[{','.join(r.axes)}]"
            lines.append(
                f"  {name[:28]:<28} {r.kind:<11} {_fmt_s(r.time_s):>10} {r.count:>6} "
                f"{r.flops / 1e9:>9.2f} {r.bytes / 1e6:>9.2f}  {r.loc or '?'}"
            )
        lines += [f"  {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def to_chrome_trace(self, path: str | os.PathLike, max_devices: int | None = None) -> Path:
        """Write a Perfetto/Chrome trace: one track (process) per device, compute and ICI threads.

        Every device runs the same SPMD program, so each track repeats device 0's schedule;
        max_devices caps the tracks for very large slices.
        """
        n = self.num_devices if max_devices is None else min(self.num_devices, max_devices)
        full = Timeline(n, overlap=self.overlap)
        for d in range(n):
            full.events.extend(
                Event(d, e.stream, e.name, e.start, e.duration, e.category, e.args)
                for e in self.timeline.events
            )
        return full.to_chrome_trace(path)


def _fmt_s(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.1f} us"

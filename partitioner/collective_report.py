"""One record per collective the partitioner inserts: what, over which axes, how many
bytes, for which user line, and why. No reason, no collective."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CollectiveRecord:
    """bytes: the per-device operand payload (the buffer one device feeds in, as XLA counts)."""

    kind: str
    axes: tuple[str, ...]
    bytes: int
    shape: tuple[int, ...]
    dtype: str
    loc: str
    reason: str
    value: int = field(default=0, repr=False, compare=False)  # the collective's output id

    def __str__(self) -> str:
        shape = "x".join(map(str, self.shape)) or "scalar"
        return (f"{self.kind:<18} axes={','.join(self.axes):<12} {self.bytes:>10} B  "
                f"{self.dtype}[{shape}]  {self.loc or '?'}  {self.reason}")


def format_report(records: list[CollectiveRecord]) -> str:
    total = sum(r.bytes for r in records)
    lines = [str(r) for r in records]
    lines.append(f"{len(records)} collectives, {total} bytes per device")
    return "\n".join(lines)

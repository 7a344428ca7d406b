"""One record per collective: what, over which axes, how many bytes, for which user line,
and why. The partitioner writes one for each collective it inserts (no reason, no
collective); a `NullCommunicator` (collectives/null.py) one for each call it sees. Core, so
that both layers import it (docs/architecture.md); it imports nothing of ours."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CollectiveRecord:
    """bytes: the per-device operand payload (the buffer one device feeds in, as XLA counts);
    loc: the user's line (None where a runtime call names none)."""

    kind: str
    axes: tuple[str, ...]
    bytes: int
    shape: tuple[int, ...]
    dtype: str
    loc: str | None = None
    reason: str = ""
    value: int = field(default=0, repr=False, compare=False)  # the collective's output id
    group_size: int = field(default=1, compare=False)

    @property
    def moved(self) -> float:
        """Bytes one device sends on a ring (DESIGN.md's table): what the planner minimises."""
        return moved_bytes(self.kind, self.bytes, self.group_size)

    def __str__(self) -> str:
        shape = "x".join(map(str, self.shape)) or "scalar"
        return (
            f"{self.kind:<18} axes={','.join(self.axes):<12} {self.bytes:>10} B  "
            f"{self.dtype}[{shape}]  {self.loc or '?'}  {self.reason}"
        )


# Per collective: the bytes one device sends on a ring, from its operand bytes and the
# group size n (DESIGN.md's table).
RING_BYTES: dict[str, Callable[[float, int], float]] = {
    "all_gather": lambda b, n: b * (n - 1),
    "all_reduce": lambda b, n: 2 * b * (n - 1) / n,
    "reduce_scatter": lambda b, n: b * (n - 1) / n,
    "all_to_all": lambda b, n: b * (n - 1) / n,
    "collective_permute": lambda b, n: float(b),  # the whole operand goes to another device
}


def moved_bytes(kind: str, operand: float, n: int) -> float:
    """Per-device bytes a collective of `operand` bytes per device moves over a group of n."""
    if n <= 1:
        return 0.0
    return RING_BYTES.get(kind, RING_BYTES["collective_permute"])(operand, n)

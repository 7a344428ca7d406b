"""Buffer planning: liveness-based reuse of temporaries, in-place reuse of dying (or donated)
inputs, and the planned peak bytes of live buffers.

A step defines values in one of three ways: it allocates them (kernels, dots: planned
slots), it aliases its inputs (views, fallback ops whose outputs may be views), or it
brings its own memory (constants, fallback results), counted but not planned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

END = 1 << 60


@dataclass
class StepUse:
    """What the planner needs of one step."""

    uses: list[int]
    allocates: list[int] = field(default_factory=list)
    aliases: list[int] = field(default_factory=list)  # outputs that may view the inputs
    external: list[int] = field(default_factory=list)  # outputs with their own memory
    inplace: dict[int, list[int]] = field(default_factory=dict)  # output -> inputs it may overwrite


@dataclass
class Slot:
    nbytes: int
    kind: str  # "param", "temp", "result"
    param: int = -1  # index of the param whose buffer this is


@dataclass
class Plan:
    slots: list[Slot]
    slot_of: dict[int, int]  # value id -> slot (allocated values and params)
    peak_bytes: int
    reused: int  # values placed in a slot another value used before


def plan_memory(
    params: list[int],
    donated: list[bool],
    results: list[int],
    steps: list[StepUse],
    nbytes: dict[int, int],
) -> Plan:
    """Greedy first-fit by size over the step order; slots of dead values are reused."""
    bases: dict[int, set[int]] = {v: {v} for v in params}
    last: dict[int, int] = {}
    for t, step in enumerate(steps):
        inherited = set().union(*(bases.get(v, set()) for v in step.uses)) if step.uses else set()
        for v in step.allocates + step.external + step.aliases:
            owned = v in step.allocates or v in step.external
            bases[v] = ({v} if owned else set()) | (inherited if v in step.aliases else set())
            if owned:
                last[v] = t
    for t, step in enumerate(steps):
        for v in step.uses:
            for base in bases.get(v, ()):
                last[base] = t
    escaping = set().union(*(bases.get(v, set()) for v in results)) if results else set()
    for base in escaping:
        last[base] = END

    slots: list[Slot] = []
    slot_of: dict[int, int] = {}
    free: list[int] = []
    reused = 0
    owner: dict[int, int] = {}  # slot -> the value now in it
    for k, (v, d) in enumerate(zip(params, donated)):
        slots.append(Slot(nbytes[v], "param", k))
        slot_of[v] = k
        owner[k] = v
        if d and last.get(v, -1) == -1 and v not in escaping:
            free.append(k)
    live_bytes = sum(s.nbytes for s in slots)
    peak = live_bytes
    external_live: dict[int, int] = {}
    for t, step in enumerate(steps):
        for v in step.allocates:
            size, escapes = nbytes[v], v in escaping
            candidates = [
                u
                for u in step.inplace.get(v, [])
                if u in slot_of
                and owner.get(slot_of[u]) == u
                and _releasable(slots[slot_of[u]], donated)
            ]
            slot = _pick(slots, free, size, escapes, candidates, slot_of, last, t)
            if slot is None:
                slots.append(Slot(size, "result" if escapes else "temp"))
                slot = len(slots) - 1
                live_bytes += size
            else:
                free.remove(slot)
                reused += 1
            slot_of[v] = slot
            owner[slot] = v
        for v in step.external:
            external_live[v] = nbytes[v]
            live_bytes += nbytes[v]
        peak = max(peak, live_bytes)
        for base, end in last.items():
            if end != t:
                continue
            if base in external_live:
                live_bytes -= external_live.pop(base)
            elif (
                base in slot_of
                and owner.get(slot_of[base]) == base
                and _releasable(slots[slot_of[base]], donated)
            ):
                free.append(slot_of[base])
                live_bytes -= slots[slot_of[base]].nbytes
    return Plan(slots, slot_of, peak, reused)


def _releasable(slot: Slot, donated: list[bool]) -> bool:
    return slot.kind == "temp" or (slot.kind == "param" and donated[slot.param])


def _pick(
    slots: list[Slot],
    free: list[int],
    size: int,
    escapes: bool,
    inplace: list[int],
    slot_of: dict[int, int],
    last: dict[int, int],
    t: int,
) -> int | None:
    """A free slot of the same size: first an input dying here that may be overwritten in
    place, then any free slot. Escaping values (results) only take donated param slots."""
    dying = [slot_of[v] for v in inplace if v in slot_of and last.get(v) == t]
    for slot in dying:
        if slots[slot].nbytes == size and _usable(slots[slot], escapes) and slot not in free:
            free.append(slot)  # the caller takes it out again
            return slot
    for slot in free:
        if slots[slot].nbytes == size and _usable(slots[slot], escapes):
            return slot
    return None


def _usable(slot: Slot, escapes: bool) -> bool:
    return slot.kind == "param" or not escapes


def inplace_candidates(kernel: Any) -> dict[int, list[int]]:
    """Outputs of a fused kernel that may overwrite an input: every load of that input
    walks exactly as the store does, with the same dtype."""
    spec = kernel.spec
    loads: dict[int, set[tuple[int, ...]]] = {}
    for node in spec.nodes:
        if node[0] == "load":
            loads.setdefault(node[2], set()).add(node[3])
    found: dict[int, list[int]] = {}
    for _, arg, strides in spec.stores:
        out = kernel.outputs[arg - spec.n_in]
        found[out] = [
            kernel.inputs[i]
            for i, s in loads.items()
            if s == {strides} and spec.arg_dtypes[i] == spec.arg_dtypes[arg]
        ]
    return found


def step_use(kind: str, op: Any, kernel: Any = None) -> StepUse:
    """What one executable step (kernel, dot, view, const or fallback) needs of the plan;
    shared by every backend that runs the CPU backend's fusion groups."""
    if kind == "kernel":
        return StepUse(
            list(kernel.inputs), allocates=list(kernel.outputs), inplace=inplace_candidates(kernel)
        )
    if kind == "dot":
        return StepUse(list(op.inputs), allocates=list(op.outputs))
    if kind == "view":
        return StepUse(list(op.inputs), aliases=list(op.outputs))
    if kind == "const":
        return StepUse([], external=list(op.outputs))
    return StepUse(list(op.inputs), aliases=list(op.outputs), external=list(op.outputs))

"""Physical chip topology (torus or switch) and the ring each mesh axis rides on.

Imports only spmd.errors, the stdlib and this package's chips module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from spmd.errors import SimulationError

from .chips import ChipSpec


@dataclass(frozen=True)
class RingPart:
    """The piece of one physical axis a mesh axis uses.

    stride is the distance in hops between ring neighbours: a mesh axis folded as the
    major half of a physical axis talks to chips `stride` hops away, and the `stride`
    interleaved rings share those links, so bandwidth divides by stride too.
    """

    physical_axis: int
    n: int
    wraparound: bool
    stride: int = 1


@dataclass(frozen=True)
class AxisRing:
    """Ring structure of one mesh axis: chips on it, wraparound, links per direction."""

    n: int
    wraparound: bool
    links_per_direction: int
    parts: tuple[RingPart, ...]
    switch: bool = False


@dataclass(frozen=True)
class Topology:
    """Physical axes with their wraparound, and how mesh axes map onto them.

    With mesh_parts=None each mesh axis is the physical axis of the same index.
    kind is "torus" (2D/3D, wraparound per axis) or "switch" (all chips one hop apart).
    """

    shape: tuple[int, ...]
    wraparound: tuple[bool, ...]
    links_per_direction: int = 1
    kind: str = "torus"
    mesh_parts: tuple[tuple[RingPart, ...], ...] | None = None
    # Multi-slice pods: how many slices each mesh axis spans (its DCN part); None: one slice
    mesh_slices: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.shape) != len(self.wraparound):
            raise SimulationError(
                f"topology shape {self.shape!r} and wraparound {self.wraparound!r} differ in rank",
                hint="give one wraparound flag per physical axis",
            )
        if self.kind not in ("torus", "switch"):
            raise SimulationError(f"unknown topology kind {self.kind!r}", hint="torus or switch")

    @property
    def num_chips(self) -> int:
        """Chips in the slice."""
        return math.prod(self.shape)

    @property
    def num_mesh_axes(self) -> int:
        """Mesh axes this topology maps."""
        return len(self.shape) if self.mesh_parts is None else len(self.mesh_parts)

    def parts(self, mesh_axis: int) -> tuple[RingPart, ...]:
        """The physical ring parts mesh axis `mesh_axis` uses."""
        if not 0 <= mesh_axis < self.num_mesh_axes:
            raise SimulationError(
                f"mesh axis {mesh_axis!r} out of range for a {self.num_mesh_axes}-axis mesh",
                hint=f"use an axis index in [0, {self.num_mesh_axes})",
            )
        if self.mesh_parts is not None:
            return self.mesh_parts[mesh_axis]
        n = self.shape[mesh_axis]
        return (RingPart(mesh_axis, n, self.wraparound[mesh_axis]),) if n > 1 else ()

    @property
    def num_slices(self) -> int:
        """Slices (ICI-connected pods) joined by the data-center network."""
        return math.prod(self.mesh_slices) if self.mesh_slices else 1

    def slices_of(self, mesh_axis: int) -> int:
        """How many slices mesh axis `mesh_axis` spans (1: it stays inside one slice)."""
        return self.mesh_slices[mesh_axis] if self.mesh_slices else 1

    def ring(self, mesh_axis: int) -> AxisRing:
        """Ring structure of a mesh axis."""
        parts = self.parts(mesh_axis)
        n = math.prod(p.n for p in parts)
        wrap = bool(parts) and all(p.wraparound for p in parts)
        return AxisRing(n, wrap, self.links_per_direction, parts, self.kind == "switch")


def parse_shape(text: str) -> tuple[int, ...]:
    """'4x4x4' -> (4, 4, 4)."""
    try:
        shape = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise SimulationError(
            f"cannot read topology {text!r}", hint="write it like '4x4x4' or '16x16'"
        )
    return shape


def _fits(shape: tuple[int, ...], max_shape: tuple[int, ...]) -> bool:
    if len(shape) > len(max_shape):
        return False
    dims = sorted(shape, reverse=True) + [1] * (len(max_shape) - len(shape))
    return all(d <= m for d, m in zip(dims, sorted(max_shape, reverse=True)))


def _default_shape(mesh_shape: tuple[int, ...], max_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Lay the mesh's axes on physical axes in order, merging or splitting to fit."""
    dims = [d for d in mesh_shape if d > 1] or [1]
    while len(dims) > len(max_shape):
        i = min(range(len(dims) - 1), key=lambda j: dims[j] * dims[j + 1])
        dims[i : i + 2] = [dims[i] * dims[i + 1]]
    largest = max(max_shape)
    while len(dims) < len(max_shape) and max(dims) > largest:
        i = dims.index(max(dims))
        f = max(f for f in range(1, largest + 1) if dims[i] % f == 0)
        if f == 1:
            break
        dims[i : i + 1] = [dims[i] // f, f]
    return tuple(dims)


def _fill_shape(mesh_shape: tuple[int, ...], max_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Fallback layout: pour the mesh's axes, minor first, into the max pod's axes."""
    phys = [1] * len(max_shape)
    p = len(max_shape) - 1
    for size in reversed(mesh_shape):
        left = size
        while left > 1 and p >= 0:
            g = math.gcd(left, max_shape[p] // phys[p])
            phys[p] *= g
            left //= g
            if g == 1 or phys[p] == max_shape[p]:
                p -= 1
        if left > 1:
            return tuple(mesh_shape)
    return tuple(d for d in phys if d > 1) or (1,)


def _map_axes(
    mesh_shape: tuple[int, ...], shape: tuple[int, ...], wrap: tuple[bool, ...]
) -> tuple[tuple[RingPart, ...], ...]:
    """Map mesh axes onto physical axes in row-major order, minor axes first."""
    mapping: list[tuple[RingPart, ...]] = []
    p = len(shape) - 1
    used = 1  # chips of physical axis p already taken by more minor mesh axes
    for size in reversed(mesh_shape):
        parts: list[RingPart] = []
        left = size
        while left > 1:
            while p >= 0 and used == shape[p]:
                p, used = p - 1, 1
            cap = shape[p] // used if p >= 0 else 0
            take = left if cap and cap % left == 0 else cap
            if take <= 1 or left % take:
                raise SimulationError(
                    f"mesh shape {mesh_shape!r} cannot be laid in order on topology {shape!r}",
                    hint="pick a physical shape whose axes split or merge the mesh's axes",
                )
            part_wrap = wrap[p] if used * take == shape[p] else False  # completes the axis
            parts.append(RingPart(p, take, part_wrap and take > 2, used))
            used *= take
            left //= take
        mapping.append(tuple(reversed(parts)))
    return tuple(reversed(mapping))


def multi_slice(
    chip: ChipSpec, mesh_shape: tuple[int, ...], slices: int, explicit: str | None = None
) -> Topology:
    """`slices` pods of `chip` joined by DCN: the mesh's major axes span the slices (as
    jax's create_hybrid_device_mesh lays them), the rest is one slice's torus."""
    if slices < 1 or math.prod(mesh_shape) % slices:
        raise SimulationError(
            f"a mesh of {math.prod(mesh_shape)} chips cannot be split into {slices} equal slices",
            hint="use a slice count dividing it",
        )
    if not chip.dcn_bandwidth:
        raise SimulationError(
            f"chip {chip.name!r} has no [dcn] bandwidth for multi-slice pods",
            hint="add a [dcn] table (bandwidth, latency_s) to its TOML file",
        )
    left = slices
    spans, inner = [], []
    for size in mesh_shape:
        span = math.gcd(size, left)
        if left > 1 and span == 1 and size > 1:
            raise SimulationError(
                f"mesh {mesh_shape!r} does not put its {slices} slices on its major axes",
                hint="make the leading mesh axes' sizes multiply to the slice count, e.g. "
                f"make_mesh(({slices}, ...), ('replica', ...))",
            )
        spans.append(span)
        inner.append(size // span)
        left //= span
    one = topology_for(chip, tuple(inner), explicit)
    parts = tuple(one.parts(i) for i in range(len(inner)))
    return Topology(
        one.shape, one.wraparound, one.links_per_direction, one.kind, parts, tuple(spans)
    )


def topology_for(
    chip: ChipSpec,
    mesh_shape: tuple[int, ...],
    explicit: str | None = None,
    slices: int | None = None,
) -> Topology:
    """Topology of a slice of `chip` holding a mesh of `mesh_shape` (or `explicit`, '4x4x4');
    `slices` > 1 (or a mesh larger than one pod) makes it a multi-slice pod."""
    mesh_shape = tuple(int(d) for d in mesh_shape)
    chips = math.prod(mesh_shape)
    if (
        slices is None
        and chips > chip.max_chips
        and chips % chip.max_chips == 0
        and chip.dcn_bandwidth
    ):
        slices = chips // chip.max_chips
    if slices is not None and slices > 1:
        return multi_slice(chip, mesh_shape, slices, explicit)
    if chips > chip.max_chips:
        raise SimulationError(
            f"mesh {mesh_shape!r} needs {chips} chips but a {chip.name} pod has {chip.max_chips}"
            f" (max shape {'x'.join(map(str, chip.max_pod_shape))})",
            hint="use a smaller mesh, a chip with a larger pod, or simulate(slices=N)",
        )
    if chip.topology == "switch":
        parts = tuple((RingPart(0, n, True),) if n > 1 else () for n in mesh_shape)
        return Topology((chips,), (True,), chip.links_per_chip, "switch", parts)
    shape = parse_shape(explicit) if explicit else _default_shape(mesh_shape, chip.max_pod_shape)
    if not explicit and not _fits(shape, chip.max_pod_shape):
        shape = _fill_shape(mesh_shape, chip.max_pod_shape)
    if math.prod(shape) != chips:
        raise SimulationError(
            f"topology {explicit!r} has {math.prod(shape)} chips but mesh {mesh_shape!r} has {chips}",
            hint="make the topology's chip count equal the mesh's",
        )
    if not _fits(shape, chip.max_pod_shape):
        raise SimulationError(
            f"mesh {mesh_shape!r} as physical {'x'.join(map(str, shape))} does not fit a "
            f"{chip.name} pod of max shape {'x'.join(map(str, chip.max_pod_shape))}",
            hint="reshape the mesh or pass an explicit topology such as '4x4x4'",
        )
    wrap = tuple(chip.wraps(d, chips) for d in shape)
    links = max(1, chip.links_per_chip // (2 * chip.ndim))
    return Topology(shape, wrap, links, "torus", _map_axes(mesh_shape, shape, wrap))

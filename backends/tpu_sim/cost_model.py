"""Roofline op times and ICI collective times, in seconds, after "How to Scale Your Model".

Pure functions of a ChipSpec and a Topology. Imports only spmd.errors and this package.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from spmd.errors import SimulationError

from .chips import ChipSpec
from .memory import MemoryTracker
from .timeline import Event, Timeline
from .topology import RingPart, Topology

__all__ = [
    "COLLECTIVES",
    "CollectiveCost",
    "Event",
    "MemoryTracker",
    "Timeline",
    "collective_cost",
    "collective_time",
    "mxu_padding_factor",
    "op_time",
]

COLLECTIVES = (
    "all_gather",
    "reduce_scatter",
    "all_reduce",
    "all_to_all",
    "collective_permute",
    "broadcast",
)


def mxu_padding_factor(mxu_dims: Sequence[int], tile: int) -> float:
    """Ratio of FLOPs the MXU does to useful FLOPs when each of M, N, K pads up to `tile`."""
    if tile <= 1:
        return 1.0
    factor = 1.0
    for d in mxu_dims:
        if d > 0:
            factor *= math.ceil(d / tile) * tile / d
    return factor


def op_time(
    chip: ChipSpec,
    flops: float,
    bytes_accessed: float,
    dtype: str = "bf16",
    mxu_dims: Sequence[int] | None = None,
    elements: float = 0.0,
) -> float:
    """Calibrated roofline of one kernel: overhead + max(flops / (peak(dtype) x matmul
    efficiency), bytes / (HBM bandwidth x hbm efficiency), elements / VPU element rate).

    mxu_dims=(M, N, K) marks a matmul: each dim pads to a multiple of the chip's MXU
    size, so a 129-wide matmul on a 128x128 MXU costs like a 256-wide one, and the chip's
    matmul efficiency applies. `elements` is what a VPU fusion streams (its largest
    operand or result); chip.ideal() prices everything at 100% of spec.

    >>> from backends.tpu_sim.chips import load_chip
    >>> round(op_time(load_chip("v5e").ideal(), 2 * 8192**3, 3 * 2 * 8192**2) * 1e3, 2)
    5.58
    """
    if flops < 0 or bytes_accessed < 0:
        raise SimulationError(
            f"op_time got negative work: flops={flops!r}, bytes={bytes_accessed!r}",
            hint="pass FLOPs and bytes >= 0",
        )
    compute = flops / chip.peak_flops(dtype)
    overhead = chip.op_overhead_s
    rate = chip.vpu_elements_per_cycle * chip.clock_hz
    if mxu_dims is not None:
        compute *= mxu_padding_factor(mxu_dims, chip.mxu_dim) / chip.matmul_efficiency
        overhead = chip.matmul_overhead_s
        # the result drains through the VPU at about twice a fusion's element rate (libtpu
        # prices a 16384x4096x128 matmul by its output: 75 elements/cycle on v5e)
        elements = elements or mxu_dims[0] * mxu_dims[1] / 2
    memory = bytes_accessed / (chip.hbm_bandwidth * chip.hbm_efficiency)
    vpu = elements / rate if elements and rate else 0.0
    return overhead + max(compute, memory, vpu)


@dataclass(frozen=True)
class CollectiveCost:
    """A collective's predicted time and how it splits; seconds = max(latency, bandwidth)."""

    kind: str
    seconds: float
    latency_s: float
    bandwidth_s: float
    hops: int


@dataclass(frozen=True)
class _Ring:
    """One physical ring a collective runs on, merged from the mesh axes' parts."""

    n: int
    wrap: bool
    switch: bool
    bandwidth: float  # bytes/s per direction per chip, after stride sharing
    hop_latency: float  # seconds per ring step
    dcn: bool = False  # between slices, over the data-center network


def _rings(chip: ChipSpec, topology: Topology, axes: Sequence[int]) -> list[_Ring]:
    by_axis: dict[int, list[RingPart]] = {}
    for a in axes:
        for part in topology.parts(a):
            by_axis.setdefault(part.physical_axis, []).append(part)
    rings = []
    slices = math.prod(topology.slices_of(a) for a in axes)
    if slices > 1:  # every slice one DCN hop from every other, at the chip's DCN rate
        rings.append(_Ring(slices, True, True, chip.dcn_bandwidth, chip.dcn_latency_s, True))
    switch = topology.kind == "switch"
    per_dir = chip.link_bandwidth * topology.links_per_direction * chip.ici_efficiency
    for parts in by_axis.values():
        n = math.prod(p.n for p in parts)
        stride = min(p.stride for p in parts)
        major = max(parts, key=lambda p: p.stride)
        wrap = switch or (major.wraparound and n > 2)
        hop = chip.hop_latency_s * (1 if switch else stride)
        rings.append(_Ring(n, wrap, switch, per_dir / (1 if switch else stride), hop))
    return rings


def _gather_steps(ring: _Ring) -> tuple[float, int]:
    """(shards each link direction carries, latency hops) for an all-gather on one ring.

    Bidirectional ring with wraparound: n/2 steps each way, so T = V / W_bidirectional as
    in the scaling book (it rounds the n-1 shards up to n). No wraparound: the far ends
    are n-1 hops apart, T = V (n-1)/n / W_one_way. A switch runs a one-way ring at the
    chip's full egress bandwidth.
    """
    if ring.switch or not ring.wrap:
        return float(ring.n - 1), ring.n - 1
    return ring.n / 2, ring.n // 2


def _gather(rings: list[_Ring], shard: float) -> tuple[float, float, int]:
    """Multi-axis all-gather of `shard` bytes per device: all axes' links at once.

    Follows the scaling book (ch. sharding): gathering over k axes at once uses every
    axis's links, so T = V / (sum of the axes' bandwidths); latency hops add up.
    """
    total = shard * math.prod(r.n for r in rings)
    rate = 0.0
    hops = 0
    latency = 0.0
    for r in rings:
        steps, h = _gather_steps(r)
        rate += r.n * r.bandwidth / steps
        hops += h
        latency += h * r.hop_latency
    return latency, total / rate, hops


def _all_to_all(rings: list[_Ring], nbytes: float) -> tuple[float, float, int]:
    """Axis by axis; on one ring the bisection carries a quarter of the axis's data.

    Scaling book: all-to-all on a bidirectional ring is V / (4 W_bidirectional) with V the
    bytes of the whole array on the axis; without wraparound half the bisection links exist.
    """
    latency = bandwidth = 0.0
    hops = 0
    for r in rings:
        h = _gather_steps(r)[1]
        if r.switch:
            bandwidth += nbytes * (r.n - 1) / r.n / r.bandwidth
        else:
            bandwidth += r.n * nbytes / 4 / (r.bandwidth * (2 if r.wrap else 1))
        hops += h
        latency += h * r.hop_latency
    return latency, bandwidth, hops


def collective_cost(
    chip: ChipSpec,
    topology: Topology,
    kind: str,
    bytes_per_device: float,
    axes: int | Sequence[int],
    *,
    shift: int = 1,
) -> CollectiveCost:
    """Predicted cost of one collective over mesh axes `axes` (indices into the mesh).

    bytes_per_device is the operand one device feeds in, as XLA's HLO counts it:
    all_gather: the local shard (the full result is n x that); reduce_scatter and
    all_reduce: the full local buffer; all_to_all: the local buffer; broadcast: the
    buffer; collective_permute: what each device sends (shifted `shift` places).
    all_reduce = reduce_scatter + all_gather; reduction arithmetic is not charged.
    Each phase costs max(latency x hops, bytes / bandwidth).
    """
    if kind not in COLLECTIVES:
        raise SimulationError(
            f"unknown collective {kind!r}", hint=f"use one of {', '.join(COLLECTIVES)}"
        )
    if bytes_per_device < 0:
        raise SimulationError(
            f"{kind} got negative bytes {bytes_per_device!r}", hint="pass the operand size in bytes"
        )
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    rings = _rings(chip, topology, axes)
    n = math.prod(r.n for r in rings)
    if n <= 1:
        return CollectiveCost(kind, 0.0, 0.0, 0.0, 0)
    dcn = [r for r in rings if r.dcn]
    ici = [r for r in rings if not r.dcn]
    if dcn and ici and kind in ("all_gather", "reduce_scatter", "all_reduce"):
        phases = _hierarchical(kind, ici, dcn, bytes_per_device)
    elif kind == "all_gather":
        phases = [_gather(rings, bytes_per_device)]
    elif kind == "reduce_scatter":
        phases = [_gather(rings, bytes_per_device / n)]
    elif kind == "all_reduce":
        phases = [_gather(rings, bytes_per_device / n)] * 2
    elif kind == "all_to_all":
        phases = [_all_to_all(rings, bytes_per_device)]
    elif kind == "broadcast":
        phases = [_broadcast(rings, bytes_per_device)]
    else:
        phases = [_permute(rings, bytes_per_device, shift)]
    latency = chip.collective_call_s + sum(p[0] for p in phases)
    bandwidth = sum(p[1] for p in phases)
    seconds = chip.collective_call_s + sum(max(p[0], p[1]) for p in phases)
    return CollectiveCost(kind, seconds, latency, bandwidth, sum(p[2] for p in phases))


def _hierarchical(
    kind: str, ici: list[_Ring], dcn: list[_Ring], nbytes: float
) -> list[tuple[float, float, int]]:
    """A collective over slices and ICI axes at once, as XLA runs it across a multi-slice
    pod: the ICI phase works on the whole buffer, the DCN phase only on the ICI shard.

    all_gather: DCN gathers the shard, then ICI gathers n_dcn shards; reduce_scatter: ICI
    reduce-scatters, then DCN on what is left; all_reduce: ICI reduce-scatter, DCN
    all-reduce of the shard, ICI all-gather.
    """
    n_ici = math.prod(r.n for r in ici)
    n_dcn = math.prod(r.n for r in dcn)
    if kind == "all_gather":
        return [_gather(dcn, nbytes), _gather(ici, nbytes * n_dcn)]
    shard = nbytes / n_ici
    if kind == "reduce_scatter":
        return [_gather(ici, shard), _gather(dcn, shard / n_dcn)]
    return [
        _gather(ici, shard),
        _gather(dcn, shard / n_dcn),
        _gather(dcn, shard / n_dcn),
        _gather(ici, shard),
    ]


def _broadcast(rings: list[_Ring], nbytes: float) -> tuple[float, float, int]:
    """Pipelined from the root along each ring (both ways with wraparound)."""
    hops = sum(_gather_steps(r)[1] for r in rings)
    latency = sum(_gather_steps(r)[1] * r.hop_latency for r in rings)
    return latency, nbytes / min(r.bandwidth for r in rings), hops


def _permute(rings: list[_Ring], nbytes: float, shift: int) -> tuple[float, float, int]:
    """Every device sends to the one `shift` places on along the (first) ring."""
    r = rings[0]
    k = shift % r.n
    hops = 1 if r.switch else (min(k, r.n - k) if r.wrap else k)
    return hops * r.hop_latency, nbytes / r.bandwidth if k else 0.0, hops


def collective_time(
    chip: ChipSpec,
    topology: Topology,
    kind: str,
    bytes_per_device: float,
    axes: int | Sequence[int],
    *,
    shift: int = 1,
) -> float:
    """Seconds for one collective; see collective_cost for what bytes_per_device means."""
    return collective_cost(chip, topology, kind, bytes_per_device, axes, shift=shift).seconds

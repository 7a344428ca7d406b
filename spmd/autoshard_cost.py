"""What the auto-sharding search pays per op and per edge, read off the mesh's own simulator
(tpu-sim's chip and ICI model, or the CPU host's): FLOP rate, memory bandwidth, and per mesh
axis the bandwidth and latency of a collective, each measured by simulating a small program.
Edge bytes come from the resharding planner's dry run (spmd.dispatch.reshard_moved).
"""

from __future__ import annotations

import functools
from typing import Any

from spmd.ir.types import TensorType
from spmd.mesh import Mesh

Dims = tuple[tuple[str, ...], ...]


@functools.lru_cache(maxsize=16)
def calibrate(mesh: Mesh) -> dict[str, float]:
    """Rates for the cost model: 'flops' (per s), 'hbm' (bytes/s), 'bw:AXIS' and 'lat:AXIS'."""
    import spmd
    import spmd.numpy as snp
    from spmd.api import ShapeDtypeStruct
    from spmd.sharding import NamedSharding, P
    from spmd.sim import simulate

    rep = NamedSharding(mesh, P())
    n = 2048
    mat = ShapeDtypeStruct((n, n), "float32", rep)
    r = simulate(spmd.jit(lambda a, b: a @ b), mat, mat, check_memory=False)
    rates = {"flops": 2.0 * n ** 3 / max(r.compute_time_s, 1e-12)}
    vec = ShapeDtypeStruct((1 << 24,), "float32", rep)
    r = simulate(spmd.jit(lambda a: snp.exp(a)), vec, check_memory=False)
    rates["hbm"] = 2.0 * vec.aval.nbytes / max(r.compute_time_s, 1e-12)
    for axis, size in zip(mesh.axis_names, mesh.axis_sizes):
        if size == 1:
            continue
        times = []
        for rows in (size, size * 8192):
            x = ShapeDtypeStruct((rows, 64), "float32", NamedSharding(mesh, P(axis)))
            gather = spmd.jit(lambda a: a * 1.0, out_shardings=rep)
            times.append(simulate(gather, x, check_memory=False).collective_time_s)
        moved = (size * 8192 - size) * 64 * 4 * (size - 1) / size  # bytes received per device
        rates[f"bw:{axis}"] = moved / max(times[1] - times[0], 1e-15)
        rates[f"lat:{axis}"] = max(times[0], 0.0)
    return rates


def edge_time(mesh: Mesh, rates: dict[str, float], t: TensorType,
              src: tuple[Dims, tuple[str, ...]], dst: Dims) -> float:
    """Seconds to bring a value from src (dims, pending-sum axes) into dst: the planner's
    bytes over the slowest axis involved, plus one collective latency per axis."""
    dims, partial = src
    if not partial and dims == dst:
        return 0.0
    moved = _moved(mesh, t, dims, partial, dst)
    if moved <= 0.0:
        return 0.0
    axes = set(partial) | {a for d, e in zip(dims, dst) if d != e for a in d + e}
    axes = {a for a in axes if f"bw:{a}" in rates} or {
        a for a in mesh.axis_names if f"bw:{a}" in rates}
    if not axes:
        return 0.0
    bw = min(rates[f"bw:{a}"] for a in axes)
    return moved / bw + sum(rates[f"lat:{a}"] for a in axes)


@functools.lru_cache(maxsize=65536)
def _moved(mesh: Mesh, t: TensorType, dims: Dims, partial: tuple[str, ...], dst: Dims) -> float:
    """Bytes received per device, per axis in closed form (DESIGN.md's collective table):
    slicing is free, a pending sum costs a reduce-scatter (kept sharded) or an all-reduce,
    an axis moving between dims an all-to-all, an axis dropped an all-gather.

    The resharding planner's dry run (dispatch.reshard_moved, partitioner/cost.py) gives the
    exact figure but takes 0.05-7 s per layout pair on a 256-chip mesh, and the search asks
    about thousands of pairs; `planner_moved` below is kept to check this formula against.
    """
    size = dict(zip(mesh.axis_names, mesh.axis_sizes))
    src_at = {a: i for i, d in enumerate(dims) for a in d}
    dst_at = {a: i for i, d in enumerate(dst) for a in d}
    local = t.nbytes / max(1, _prod(size[a] for a in src_at))
    moved = 0.0
    for a in dst_at:  # newly sharded: each device keeps its slice
        if a not in src_at and a not in partial:
            local /= size[a]
    for a in partial:
        k = size[a]
        if a in dst_at and a not in src_at:
            moved += local * (k - 1) / k
            local /= k
        else:
            moved += 2 * local * (k - 1) / k
    for a, i in src_at.items():
        k = size[a]
        if dst_at.get(a) == i:
            continue
        if a in dst_at:
            moved += local * (k - 1) / k
        else:
            moved += local * (k - 1)
            local *= k
    return moved


def _prod(xs: Any) -> int:
    out = 1
    for x in xs:
        out *= x
    return out


def planner_moved(mesh: Mesh, t: TensorType, dims: Dims, partial: tuple[str, ...],
                  dst: Dims) -> float:
    """The resharding planner's exact bytes for the same change (slow; for checks)."""
    from spmd import dispatch

    return dispatch.reshard_moved(mesh, t, dims, partial, dst)


def describe_bytes(n: float) -> str:
    for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def plan_rows(report: Any) -> list[str]:
    """The plan's simulated figures in one line each."""
    return [(f"step time {report.step_time_s * 1e3:.3f} ms "
             f"(compute {report.compute_time_s * 1e3:.3f} ms, "
             f"collectives {report.collective_time_s * 1e3:.3f} ms)"),
            f"peak memory {describe_bytes(report.peak_memory_bytes)} per device"]

"""What the auto-sharding search pays per op and per edge, read off the mesh's own simulator
(tpu-sim's chip and ICI model, or the CPU host's): FLOP rate, memory bandwidth, and per mesh
axis the bandwidth and latency of a collective, each measured by simulating a small program.
Edge bytes follow the resharding planner's steps in closed form (its dry run,
spmd.dispatch.reshard_moved, is the check).
"""

from __future__ import annotations

import functools
import itertools
from typing import Any

from spmd import runtime_state
from spmd.ir.opdef import REGISTRY, AttrKind, Trait
from spmd.ir.types import TensorType
from spmd.mesh import Mesh

Dims = tuple[tuple[str, ...], ...]


def sim_options(mesh: Mesh) -> dict[str, str]:
    """The simulator options autoshard prices a mesh with: a tpu-sim mesh's own chip; a CPU
    mesh one logical device of the embedded runtime as measured on this host
    (configs/chips/cpu_local.toml), not spmd.sim's default v5e, so the plan chosen for the
    local runtime weighs its compute against its shared-memory copies as they run."""
    return {} if str(mesh.device_kind).startswith("tpu-sim") else {"chip": "cpu_local"}


def is_contraction(op: Any) -> bool:
    """An op priced by its FLOPs: one whose attributes spell dot dimensions (the OpDef's
    fact, not its name)."""
    return any(kind is AttrKind.DOT_DIMS for kind in REGISTRY[op.name].attr_kinds.values())


def is_counted_loop(op: Any) -> bool:
    """A loop whose body is solved once for all its steps (spmd/autoshard_scan.py)."""
    return REGISTRY[op.name].has(Trait.COUNTED_LOOP)


@functools.lru_cache(maxsize=16)
def calibrate(mesh: Mesh) -> dict[str, float]:
    """Rates for the cost model: 'flops' (per s), 'hbm' (bytes/s), 'bw:AXIS' and 'lat:AXIS',
    and for every set of two or more axes 'bw:A+B' and 'lat:A+B' (names sorted): one
    collective over several axes at once (a dim sharded over both) runs at its own rate,
    not the slowest axis's with a latency per axis (on the CPU 2x4 mesh a reduce-scatter
    over both axes takes 39 us where the per-axis figures said 109 us)."""
    import spmd
    import spmd.numpy as snp
    from spmd.api import ShapeDtypeStruct
    from spmd.named_sharding import NamedSharding, P
    from spmd.sim import simulate

    rep = NamedSharding(mesh, P())
    options = {"check_memory": False, **sim_options(mesh)}
    n = 2048
    mat = ShapeDtypeStruct((n, n), "float32", rep)
    r = simulate(spmd.jit(lambda a, b: a @ b), mat, mat, **options)
    rates = {"flops": 2.0 * n**3 / max(r.compute_time_s, 1e-12)}
    # the tile the chip pads a matmul's M, N and K to (cpu_local: 1, no padding; v5e: 128)
    rates["tile"] = float(runtime_state.simulator().chip(r.chip).mxu_dim)
    vec = ShapeDtypeStruct((1 << 24,), "float32", rep)
    r = simulate(spmd.jit(lambda a: snp.exp(a)), vec, **options)
    rates["hbm"] = 2.0 * vec.aval.nbytes / max(r.compute_time_s, 1e-12)
    live = [(a, n) for a, n in zip(mesh.axis_names, mesh.axis_sizes) if n > 1]
    for k in range(1, len(live) + 1):
        for group in itertools.combinations(live, k):
            axes = tuple(a for a, _ in group)
            size = _prod(n for _, n in group)
            times = []
            for rows in (size, size * 8192):
                x = ShapeDtypeStruct((rows, 64), "float32", NamedSharding(mesh, P(axes)))
                gather = spmd.jit(lambda a: a * 1.0, out_shardings=rep)
                times.append(simulate(gather, x, **options).collective_time_s)
            moved = (size * 8192 - size) * 64 * 4 * (size - 1) / size  # received per device
            key = "+".join(sorted(axes))
            rates[f"bw:{key}"] = moved / max(times[1] - times[0], 1e-15)
            rates[f"lat:{key}"] = max(times[0], 0.0)
    return rates


def edge_time(
    mesh: Mesh, rates: dict[str, float], t: TensorType, src: tuple[Dims, tuple[str, ...]], dst: Dims
) -> float:
    """Seconds to bring a value from src (dims, pending-sum axes) into dst: the planner's
    bytes over the slowest axis involved, plus one collective latency per axis, plus a
    local slice's pass over HBM where dst shards an axis src has nowhere (the simulator
    prices a dynamic_slice by the block it reads and the block it writes)."""
    dims, partial = src
    if not partial and dims == dst:
        return 0.0
    moved = _moved(mesh, t, dims, partial, dst)
    held = {a for d in dims for a in d} | set(partial)
    if any(a not in held for d in dst for a in d):
        size = dict(zip(mesh.axis_names, mesh.axis_sizes))
        blocks = [t.nbytes / _prod(size[a] for d in x for a in d) for x in (dims, dst)]
        slice_s = sum(blocks) / rates["hbm"]
    else:
        slice_s = 0.0
    if moved <= 0.0:
        return slice_s
    axes = set(partial) | {a for d, e in zip(dims, dst) if d != e for a in d + e}
    axes = {a for a in axes if f"bw:{a}" in rates} or {
        a for a in mesh.axis_names if f"bw:{a}" in rates
    }
    if not axes:
        return 0.0
    key = "+".join(sorted(axes))
    if len(axes) > 1 and f"bw:{key}" in rates and _one_collective(axes, dims, partial, dst):
        return moved / rates[f"bw:{key}"] + rates[f"lat:{key}"] + slice_s
    bw = min(rates[f"bw:{a}"] for a in axes)
    return moved / bw + sum(rates[f"lat:{a}"] for a in axes) + slice_s


def _one_collective(axes: set[str], dims: Dims, partial: tuple[str, ...], dst: Dims) -> bool:
    """The planner moves these axes in one collective: they shard one dim together (a
    gather of it, a reduce-scatter into it) or are all pending and dst shards none of them
    (one all-reduce); otherwise it runs a collective per dim and each axis pays its own."""
    if set(partial) == axes and not any(set(d) & axes for d in dst):
        return True
    together = [d for d in (*dims, *dst) if set(d) == axes]
    rest = [d for d in (*dims, *dst) if set(d) & axes and set(d) != axes]
    return bool(together) and not rest


@functools.lru_cache(maxsize=65536)
def _moved(mesh: Mesh, t: TensorType, dims: Dims, partial: tuple[str, ...], dst: Dims) -> float:
    """Bytes received per device, in closed form, in the resharding planner's order
    (partitioner/reshard.py): a pending sum reduce-scatters into a dim the target shards
    that is unsharded yet, the rest all-reduces; then all-to-alls for axes that move to
    another dim, all-gathers of the axes a dim does not keep, slices (free); or, where that
    moves more, the permute plan, each device receiving its new block.

    The planner's dry run (`planner_moved`) gives the exact figure but takes 0.05-7 s per
    layout pair on a 256-chip mesh, and the search asks about thousands of pairs;
    tests/autoshard/test_edge_bytes.py checks the two against hand-derived bytes.
    """
    size = dict(zip(mesh.axis_names, mesh.axis_sizes))

    def k(axes: Any) -> int:
        return _prod(size[a] for a in axes)

    cur = [tuple(d) for d in dims]
    local = t.nbytes / k(a for d in cur for a in d)
    moved = 0.0
    pending = list(partial)
    for i, want in enumerate(dst):
        if cur[i] or not want or not set(want) <= set(pending) or t.shape[i] % k(want):
            continue
        moved += local * (k(want) - 1) / k(want)
        local /= k(want)
        cur[i] = tuple(want)
        pending = [a for a in pending if a not in want]
    if pending:
        moved += 2 * local * (k(pending) - 1) / k(pending)
    if tuple(cur) == tuple(dst):
        return moved
    steps = _steps(t.shape, size, cur, dst, local)
    even = all(n % k(d) == 0 for n, d in zip(t.shape, list(cur) + list(dst)))
    involved = k({a for d in list(cur) + list(dst) for a in d})
    if even and involved <= 256:  # partitioner/permute_plan.py's MAX_DEVICES
        steps = min(steps, t.nbytes / k(a for d in dst for a in d))
    return moved + steps


def _steps(
    shape: tuple[int, ...],
    size: dict[str, int],
    cur: list[tuple[str, ...]],
    dst: Dims,
    local: float,
) -> float:
    """All-to-alls (a minor run of axes leaving dim i for the end of dim j), then gathers."""
    moved = 0.0
    again = True
    while again:
        again = False
        for i, j, run in _runs(shape, size, cur, dst):
            n = _prod(size[a] for a in run)
            moved += local * (n - 1) / n
            cur[i], cur[j] = cur[i][: -len(run)], cur[j] + run
            again = True
            break
    for i, axes in enumerate(cur):
        keep = len(axes)
        while tuple(dst[i][:keep]) != axes[:keep]:
            keep -= 1
        n = _prod(size[a] for a in axes[keep:])
        moved += local * (n - 1)
        local *= n
    return moved


def _runs(
    shape: tuple[int, ...], size: dict[str, int], cur: list[tuple[str, ...]], dst: Dims
) -> list[tuple[int, int, tuple[str, ...]]]:
    out = []
    for i, axes in enumerate(cur):
        for length in range(len(axes), 0, -1):
            run = axes[-length:]
            if set(run) & set(dst[i]):
                continue
            for j in range(len(cur)):
                grown = cur[j] + run
                if (
                    j != i
                    and tuple(dst[j][: len(grown)]) == grown
                    and shape[i] % _prod(size[a] for a in axes) == 0
                    and shape[j] % _prod(size[a] for a in grown) == 0
                ):
                    out.append((i, j, run))
    return out


def _prod(xs: Any) -> int:
    out = 1
    for x in xs:
        out *= x
    return out


def planner_moved(
    mesh: Mesh, t: TensorType, dims: Dims, partial: tuple[str, ...], dst: Dims
) -> float:
    """The resharding planner's exact bytes for the same change (slow; for checks)."""
    from spmd import dispatch

    return dispatch.reshard_moved(mesh, t, dims, partial, dst)


def describe_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def plan_rows(report: Any) -> list[str]:
    """The plan's simulated figures in one line each."""
    return [
        (
            f"step time {report.step_time_s * 1e3:.3f} ms "
            f"(compute {report.compute_time_s * 1e3:.3f} ms, "
            f"collectives {report.collective_time_s * 1e3:.3f} ms)"
        ),
        f"peak memory {describe_bytes(report.peak_memory_bytes)} per device",
    ]

"""The resharding planner: moves a value from one layout to another with the fewest
bytes, and emits the collectives into the per-device program.

Order: resolve pending sums (reduce-scatter where the target shards that dim on the
summed axes, all-reduce otherwise), then move axes between dims (all-to-all), then
gather axes the target drops (all-gather), then slice axes the target adds (free).
"""

from __future__ import annotations

import functools
import warnings

from partitioner.builder import ProgramBuilder
from partitioner.dry_run import plan_moved
from partitioner.permute_plan import permute_plan, pieces
from partitioner.spec import AxisTuple, MeshShape, ShardSpec, shard_size
from spmd.ir.types import TensorType

Dims = tuple[AxisTuple, ...]

IDENTITY = {"sum": 0, "max": float("-inf"), "min": float("inf"), "prod": 1}


class ReplicationWarning(UserWarning):
    """A layout change had to gather a whole dim where a cheaper plan was wanted."""


def _even(n: int, mesh: MeshShape, axes: AxisTuple) -> bool:
    return n % mesh.size(axes) == 0


def reshard(
    b: ProgramBuilder, x: int, gtype: TensorType, src: ShardSpec, dst: Dims, loc: str, reason: str
) -> tuple[int, ShardSpec]:
    """Emit what turns x (laid out as src) into the layout dst, with no pending sum."""
    x, spec = resolve_partial(b, x, gtype, src, dst, loc, reason)
    if spec.dims == tuple(dst):
        return x, spec
    permuted = _permutes_if_cheaper(b, x, gtype, spec.dims, tuple(dst), loc, reason)
    if permuted is not None:
        return permuted, ShardSpec(tuple(dst))
    return _collective_steps(b, x, gtype, spec.dims, tuple(dst), loc, reason), ShardSpec(tuple(dst))


def _collective_steps(
    b: ProgramBuilder, x: int, gtype: TensorType, src: Dims, dst: Dims, loc: str, reason: str
) -> int:
    """All-to-alls for axes that move to another dim, gathers, then local slices."""
    cur = list(src)
    x = _all_to_all_moves(b, x, gtype, cur, dst, loc, reason)
    x = _gathers(b, x, gtype, cur, dst, loc, reason)
    return _slices(b, x, gtype, cur, dst, loc, reason)


def _permutes_if_cheaper(
    b: ProgramBuilder, x: int, gtype: TensorType, src: Dims, dst: Dims, loc: str, reason: str
) -> int | None:
    """The permute plan where it moves fewer bytes than the collective steps would."""
    costs = _plan_costs(b.mesh, b.types[x], gtype, src, dst)
    if costs is None:
        return None
    steps, cost = costs
    return permute_plan(
        b,
        [x],
        [(gtype, None)],
        src,
        dst,
        loc,
        f"{reason} (permutes {cost:.0f} B moved over gather/all-to-all steps {steps:.0f} B)",
    )


@functools.lru_cache(maxsize=4096)
def _plan_costs(
    mesh: MeshShape,
    local: TensorType,
    gtype: TensorType,
    src: Dims,
    dst: Dims,
) -> tuple[float, float] | None:
    """(collective steps, permutes) bytes moved where the permutes are cheaper; else None.
    Memoised by layouts: a program repeats the same layout changes."""
    if pieces([(gtype, None)], src, dst, mesh) is None:
        return None
    steps = plan_moved(mesh, local, lambda s, v: _collective_steps(s, v, gtype, src, dst, "", ""))
    cost = plan_moved(
        mesh, local, lambda s, v: permute_plan(s, [v], [(gtype, None)], src, dst, "", "")
    )
    return (steps, cost) if cost < steps else None


def resolve_partial(
    b: ProgramBuilder, x: int, gtype: TensorType, spec: ShardSpec, dst: Dims, loc: str, reason: str
) -> tuple[int, ShardSpec]:
    """Finish a pending reduction: reduce-scatter into dims dst shards, all-reduce the rest."""
    if not spec.partial:
        return x, spec
    pending = list(spec.partial)
    dims = list(spec.dims)
    kind = spec.partial_kind
    for i, want in enumerate(dst):
        if dims[i] or not want or not set(want) <= set(pending):
            continue
        k = b.mesh.size(want)
        size = shard_size(gtype.shape[i], k)
        if b.types[x].shape[i] != size * k:
            x = _pad_dim(b, x, i, size * k - b.types[x].shape[i], loc)
        x = b.collective(
            "reduce_scatter",
            x,
            want,
            loc,
            f"{reason}: pending {kind} over {','.join(want)}, consumer wants dim {i} sharded",
            dim=i,
            kind=kind,
        )
        dims[i] = want
        pending = [a for a in pending if a not in want]
    if pending:
        axes = tuple(a for a in b.mesh.names if a in pending)
        x = b.collective(
            "all_reduce", x, axes, loc, f"{reason}: pending {kind} over {','.join(axes)}", kind=kind
        )
    return x, ShardSpec(tuple(dims))


def _all_to_all_moves(
    b: ProgramBuilder,
    x: int,
    gtype: TensorType,
    cur: list[AxisTuple],
    dst: Dims,
    loc: str,
    reason: str,
) -> int:
    """Axes leaving dim i for dim j move in one all-to-all instead of gather + slice; the
    longest such run of minor axes moves at once (one collective, same bytes)."""
    moved = True
    while moved:
        moved = False
        for i, j, suffix in _moves(gtype, cur, dst, b.mesh):
            x = b.collective(
                "all_to_all",
                x,
                suffix,
                loc,
                f"{reason}: move axes {','.join(suffix)} from dim {i} to dim {j}",
                split_dim=j,
                concat_dim=i,
            )
            cur[i], cur[j] = cur[i][: -len(suffix)], cur[j] + suffix
            moved = True
            break
    return x


def _moves(
    gtype: TensorType,
    cur: list[AxisTuple],
    dst: Dims,
    mesh: MeshShape,
) -> list[tuple[int, int, AxisTuple]]:
    out = []
    for i, axes in enumerate(cur):
        for length in range(len(axes), 0, -1):
            suffix = axes[-length:]
            if set(suffix) & set(dst[i]):
                continue
            for j in range(len(cur)):
                grown = cur[j] + suffix
                if j == i or dst[j][: len(grown)] != grown:
                    continue
                if _even(gtype.shape[i], mesh, axes) and _even(gtype.shape[j], mesh, grown):
                    out.append((i, j, suffix))
    return out


def _gathers(
    b: ProgramBuilder,
    x: int,
    gtype: TensorType,
    cur: list[AxisTuple],
    dst: Dims,
    loc: str,
    reason: str,
) -> int:
    """Each dim gathers, in one all-gather, the minor axes the target does not keep."""
    for i in range(len(cur)):
        axes = cur[i]
        keep = len(axes)
        while dst[i][:keep] != axes[:keep]:
            keep -= 1
        if keep == len(axes):
            continue
        n = gtype.shape[i]
        if _even(n, b.mesh, axes):
            dropped = axes[keep:]
            x = b.collective(
                "all_gather",
                x,
                dropped,
                loc,
                f"{reason}: dim {i} drops axes {','.join(dropped)}",
                dim=i,
            )
            cur[i] = axes[:keep]
            continue
        # Uneven shards: gather the whole dim at once, then drop the padding.
        x = b.collective(
            "all_gather",
            x,
            axes,
            loc,
            f"{reason}: dim {i} (uneven, {n} over {b.mesh.size(axes)}) gathered whole",
            dim=i,
        )
        x = _slice_dim(b, x, i, 0, n, loc)
        cur[i] = ()
    return x


def _slices(
    b: ProgramBuilder,
    x: int,
    gtype: TensorType,
    cur: list[AxisTuple],
    dst: Dims,
    loc: str,
    reason: str,
) -> int:
    for i in range(len(cur)):
        if cur[i] == dst[i]:
            continue
        n = gtype.shape[i]
        target = dst[i]
        if not _even(n, b.mesh, target) and cur[i]:
            warnings.warn(
                ReplicationWarning(
                    f"{loc}: {reason}: re-sharding uneven dim {i} ({n}) from {cur[i]} to {target} "
                    f"gathers the dim first"
                ),
                stacklevel=2,
            )
            x = b.collective(
                "all_gather", x, cur[i], loc, f"{reason}: dim {i} uneven re-split", dim=i
            )
            x = _slice_dim(b, x, i, 0, n, loc)
            cur[i] = ()
        extra = target[len(cur[i]) :]
        size = shard_size(n, b.mesh.size(target))
        have = b.types[x].shape[i]
        need = size * b.mesh.size(extra)
        if have < need:
            x = _pad_dim(b, x, i, need - have, loc)
        index = b.axis_index(extra)
        offset = b.emit("mul", (index, b.const(size, "int32")), loc)
        x = _dynamic_slice_dim(b, x, i, offset, size, loc)
        cur[i] = target
    return x


def _pad_dim(b: ProgramBuilder, x: int, dim: int, amount: int, loc: str) -> int:
    t = b.types[x]
    config = tuple((0, amount if d == dim else 0, 0) for d in range(t.ndim))
    return b.emit("pad", (x, b.const(0, t.dtype)), loc, padding_config=config)


def _slice_dim(b: ProgramBuilder, x: int, dim: int, start: int, stop: int, loc: str) -> int:
    t = b.types[x]
    starts = tuple(start if d == dim else 0 for d in range(t.ndim))
    limits = tuple(stop if d == dim else s for d, s in enumerate(t.shape))
    return b.emit(
        "slice", (x,), loc, start_indices=starts, limit_indices=limits, strides=(1,) * t.ndim
    )


def _dynamic_slice_dim(
    b: ProgramBuilder, x: int, dim: int, offset: int, size: int, loc: str
) -> int:
    t = b.types[x]
    zero = b.const(0, "int32")
    starts = tuple(offset if d == dim else zero for d in range(t.ndim))
    sizes = tuple(size if d == dim else s for d, s in enumerate(t.shape))
    return b.emit("dynamic_slice", (x, *starts), loc, slice_sizes=sizes)


def mask_padding(
    b: ProgramBuilder,
    x: int,
    gtype: TensorType,
    spec: ShardSpec,
    dims: list[int],
    fill: float,
    loc: str,
) -> int:
    """Replace the padding rows of sharded dims by `fill` (the reduction's identity)."""
    t = b.types[x]
    valid = None
    for i in dims:
        axes = spec.dims[i]
        size = t.shape[i]
        pos = b.emit("iota", (), loc, dtype="int32", shape=t.shape, dimension=i)
        offset = b.emit("mul", (b.axis_index(axes), b.const(size, "int32")), loc)
        offset = b.emit("broadcast_in_dim", (offset,), loc, shape=t.shape, broadcast_dimensions=())
        limit = b.full(gtype.shape[i], t.with_dtype("int32"))
        ok = b.emit("lt", (b.emit("add", (pos, offset), loc), limit), loc)
        valid = ok if valid is None else b.emit("and", (valid, ok), loc)
    if valid is None:
        return x
    from spmd import dtypes

    if not dtypes.is_float(t.dtype) and fill in (float("inf"), float("-inf")):
        import numpy as np

        info = np.iinfo(dtypes.to_numpy(t.dtype)) if t.dtype != "bool" else None
        fill = (info.max if fill > 0 else info.min) if info else (fill > 0)
    return b.emit("select", (valid, x, b.full(fill, t.strong())), loc)


def estimate_bytes(gtype: TensorType, src: ShardSpec, dst: Dims, mesh: MeshShape) -> float:
    """Bytes per device that reshard(src -> dst) moves, by the cost table of DESIGN.md."""
    shards = mesh.size(tuple(a for d in src.dims for a in d))
    local = gtype.nbytes / max(shards, 1)
    cost = 0.0
    if src.partial:
        n = mesh.size(src.partial)
        scattered = any(not s and d and set(d) <= set(src.partial) for s, d in zip(src.dims, dst))
        cost += local * (n - 1) / n * (1 if scattered else 2)
    kept = {a for d in dst for a in d}
    moved = tuple(a for s, d in zip(src.dims, dst) for a in s if a not in d and a in kept)
    dropped = tuple(a for s, d in zip(src.dims, dst) for a in s if a not in kept)
    if moved:  # an all-to-all: each device sends all but its own block
        n = mesh.size(moved)
        cost += local * (n - 1) / n
    if dropped:  # an all-gather: each device receives the other n - 1 blocks
        n = mesh.size(dropped)
        cost += local * n * (n - 1) / n
    return cost

"""Resharding by point-to-point permutes: each device receives exactly the pieces of its
new block that it does not hold, in rounds of collective permutes (each device sends and
receives at most one piece per round).

It is the plan for layout changes the gather / all-to-all steps can only do by gathering,
e.g. a 2-D sharded array whose two dims swap their mesh axes (a transpose into the same
out sharding): each device sends its block's pieces to the 2 devices that need them, V
bytes in all, where gathering both dims moves 7V. Even layouts only, whose block sizes
divide each other per dim; the resharding planner prices it against its other plan.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from partitioner.builder import ProgramBuilder
from partitioner.layout import device_coords, group_index
from partitioner.spec import AxisTuple, MeshShape
from spmd.ir.types import TensorType

Dims = tuple[AxisTuple, ...]
MAX_DEVICES = 256  # the schedule is built per device in Python: bounded compile time
MAX_ROUNDS = 16

# (sending device, receiving device, offset in the sender's block, offset in the receiver's
# block, which source value)
Piece = tuple[int, int, tuple[int, ...], tuple[int, ...], int]
Window = Sequence[tuple[int, int]]
Found = tuple[MeshShape, list[int], list[int], list[Piece], list[Piece]]


def _block_sizes(shape: Sequence[int], dims: Dims, mesh: MeshShape) -> list[int] | None:
    sizes = []
    for n, axes in zip(shape, dims):
        k = mesh.size(axes)
        if n % k:
            return None
        sizes.append(n // k)
    return sizes


def pieces(
    sources: Sequence[tuple[TensorType, Window | None]], src: Dims, dst: Dims, mesh: MeshShape
) -> Found | None:
    """(sub-mesh of the axes involved, piece shape, new block shape, transfers, local
    copies), or None when the layouts are not even or need too many pieces.

    sources: each value's global type and window: per dim (start, size) of the part of the
    value the new layout holds, in the value's coordinates (a slice that keeps its
    sharding; a concatenate's operand, shifted by its offset); by default the whole value.
    All values share the layouts src and dst and the window size."""
    involved = {a for d in src + dst for a in d}
    names = tuple(a for a in mesh.names if a in involved)
    sub = MeshShape(names, tuple(mesh.sizes[mesh.names.index(a)] for a in names))
    if not names or sub.num_devices > MAX_DEVICES:
        return None
    windows = [list(w) if w is not None else [(0, n) for n in g.shape] for g, w in sources]
    blocks = [_block_sizes(g.shape, src, mesh) for g, _ in sources]
    t = _block_sizes([size for _, size in windows[0]], dst, mesh)
    if (
        t is None
        or any(s is None for s in blocks)
        or 0 in t
        or any([size for _, size in w] != [size for _, size in windows[0]] for w in windows)
    ):
        return None
    # Pieces: the largest blocks that lie in one old and one new block of every value.
    p = list(t)
    for (g, _), s, w in zip(sources, blocks, windows):
        # A piece never straddles an old block's edge, nor the value's start or end.
        p = [math.gcd(q, a, c, start) for q, a, c, (start, _) in zip(p, s, t, w)]
    if math.prod(c // q for c, q in zip(t, p)) > MAX_ROUNDS:
        return None
    coords = device_coords(sub)
    sends = [0] * len(coords)
    transfers: list[Piece] = []
    local: list[Piece] = []
    grid = list(itertools.product(*(range(c // q) for c, q in zip(t, p))))
    for k, (s, w) in enumerate(zip(blocks, windows)):
        src_at = np.array(
            [[group_index(c, axes, sub) * n for axes, n in zip(src, s)] for c in coords]
        )
        for e, ce in enumerate(coords):
            base = [
                start + group_index(ce, axes, sub) * n for axes, n, (start, _) in zip(dst, t, w)
            ]
            for q in grid:
                at = np.array([o + i * n for o, i, n in zip(base, q, p)], dtype=np.int64)
                holds = np.all((src_at <= at) & (at < src_at + np.array(s)), axis=1)
                if not holds.any():
                    continue  # outside the value (another operand of a concatenate)
                dst_off = tuple(i * n for i, n in zip(q, p))
                if holds[e]:
                    local.append((e, e, tuple(int(v) for v in at - src_at[e]), dst_off, k))
                    continue
                c = min(np.flatnonzero(holds), key=lambda d: (sends[d], d))
                sends[c] += 1
                transfers.append((int(c), e, tuple(int(v) for v in at - src_at[c]), dst_off, k))
    return sub, p, t, transfers, local


def schedule(transfers: list[Piece]) -> list[list[Piece]]:
    """Rounds in which each device sends at most one piece and receives at most one."""
    rounds: list[list[Piece]] = []
    busy: list[tuple[set[int], set[int]]] = []
    for piece in transfers:
        for r, (senders, receivers) in enumerate(busy):
            if piece[0] not in senders and piece[1] not in receivers:
                rounds[r].append(piece)
                senders.add(piece[0])
                receivers.add(piece[1])
                break
        else:
            rounds.append([piece])
            busy.append(({piece[0]}, {piece[1]}))
    return rounds


def _local_rounds(local: list[Piece]) -> list[list[Piece]]:
    by_device: dict[int, list[Piece]] = {}
    for piece in local:
        by_device.setdefault(piece[1], []).append(piece)
    depth = max((len(v) for v in by_device.values()), default=0)
    return [[v[i] for v in by_device.values() if i < len(v)] for i in range(depth)]


def permute_plan(
    b: ProgramBuilder,
    xs: Sequence[int],
    sources: Sequence[tuple[TensorType, Window | None]],
    src: Dims,
    dst: Dims,
    loc: str,
    reason: str,
    fill: int | None = None,
) -> int | None:
    """Emit the permute plan that builds each device's dst block from the values xs (laid
    out as src); None where it does not apply. Rows of a block outside every value hold
    the scalar `fill` (0 by default)."""
    found = pieces(sources, src, dst, b.mesh)
    if found is None:
        return None
    sub, p, t, transfers, local = found
    rounds = schedule(transfers)
    if len(rounds) > MAX_ROUNDS:
        return None
    n = sub.num_devices
    me = b.axis_index(sub.names)
    # A spare block past the block: devices with nothing to place in a round write
    # there, and it is sliced off at the end.
    spare = tuple(t[0] if d == 0 else 0 for d in range(len(t)))
    block = TensorType((2 * t[0], *t[1:]), sources[0][0].dtype)
    out = (
        b.full(0, block)
        if fill is None
        else b.emit("broadcast_in_dim", (fill,), loc, shape=block.shape, broadcast_dimensions=())
    )
    for r, batch in enumerate(rounds + _local_rounds(local)):
        piece = _round_piece(b, xs, me, n, batch, p, loc)
        if r < len(rounds):
            pairs = tuple((c, e) for c, e, *_ in batch)
            piece = b.collective(
                "collective_permute",
                piece,
                sub.names,
                loc,
                f"{reason}: round {r + 1} of {len(rounds)}, pieces "
                f"{'x'.join(map(str, p))} to the devices that need them",
                pairs=pairs,
            )
        dst_off = [spare] * n
        for _, e, _, do, _ in batch:
            dst_off[e] = do
        out = b.emit("dynamic_update_slice", (out, piece, *_offsets(b, me, dst_off, loc)), loc)
    return b.emit(
        "slice",
        (out,),
        loc,
        start_indices=(0,) * len(t),
        limit_indices=tuple(t),
        strides=(1,) * len(t),
    )


def _round_piece(
    b: ProgramBuilder,
    xs: Sequence[int],
    me: int,
    n: int,
    batch: list[Piece],
    p: list[int],
    loc: str,
) -> int:
    """The piece each device sends (or keeps) in one round: cut from the value it names."""
    used = sorted({k for *_, k in batch})
    cut: dict[int, int] = {}
    for k in used:
        offsets = [(0,) * len(p)] * n
        for c, _, so, _, kk in batch:
            if kk == k:
                offsets[c] = so
        cut[k] = _dynamic_slice(b, xs[k], me, offsets, p, loc)
    piece = cut[used[0]]
    if len(used) == 1:
        return piece
    which = [used[0]] * n
    for c, _, _, _, k in batch:
        which[c] = k
    mine = _offsets(b, me, [(k,) for k in which], loc)[0]
    for k in used[1:]:
        hit = b.emit("eq", (mine, b.const(k, "int32")), loc)
        hit = b.emit("broadcast_in_dim", (hit,), loc, shape=tuple(p), broadcast_dimensions=())
        piece = b.emit("select", (hit, cut[k], piece), loc)
    return piece


def _dynamic_slice(
    b: ProgramBuilder, x: int, me: int, offsets: list[tuple[int, ...]], sizes: list[int], loc: str
) -> int:
    if tuple(sizes) == b.types[x].shape:
        return x
    return b.emit(
        "dynamic_slice", (x, *_offsets(b, me, offsets, loc)), loc, slice_sizes=tuple(sizes)
    )


def _offsets(
    b: ProgramBuilder,
    me: int,
    per_device: list[tuple[int, ...]],
    loc: str,
) -> list[int]:
    """Per dim, this device's entry of a per-device table (a constant where all agree)."""
    out = []
    for d in range(len(per_device[0])):
        column = [o[d] for o in per_device]
        if len(set(column)) == 1:
            out.append(b.const(column[0], "int32"))
            continue
        table = b.const(np.array(column, dtype=np.int32), "int32")
        out.append(b.emit("gather", (table, me), loc, axis=0))
    return out

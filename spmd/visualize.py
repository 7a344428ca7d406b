"""visualize_sharding: which device holds which block of a 1-d or 2-d array."""

from __future__ import annotations

import itertools
from typing import Any

from spmd.errors import ShardingError


def _blocks(x: Any) -> dict[tuple[tuple[int, int], ...], list[int]]:
    from spmd.tracing import Tracer

    if isinstance(x, Tracer):
        return _traced_blocks(x)
    blocks: dict[tuple[tuple[int, int], ...], list[int]] = {}
    for shard in x.addressable_shards:
        key = tuple((s.start, s.stop) for s in shard.index)
        blocks.setdefault(key, []).append(shard.device.id)
    return blocks


def _traced_blocks(x: Any) -> dict[tuple[tuple[int, int], ...], list[int]]:
    """Inside jit: the blocks the sharding in x's type gives (spmd.typeof(x).sharding):
    a dim over axes of n devices in all splits into blocks of ceil(size / n), the last
    clipped, numbered major axis first (as arrays are laid out)."""
    from spmd.explicit import typeof
    from spmd.named_sharding import NamedSharding

    sharding = typeof(x).sharding
    if not isinstance(sharding, NamedSharding):
        return {tuple((0, n) for n in x.shape): [0]}
    mesh = sharding.mesh
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
    dims = sharding.dim_axes(x.ndim)
    blocks: dict[tuple[tuple[int, int], ...], list[int]] = {}
    for device, coords in zip(mesh.devices.flat, itertools.product(*map(range, mesh.axis_sizes))):
        at = dict(zip(mesh.axis_names, coords))
        box = []
        for n, axes in zip(x.shape, dims):
            index, parts = 0, 1
            for a in axes:
                index, parts = index * sizes[a] + at[a], parts * sizes[a]
            step = -(-n // parts)
            box.append((min(index * step, n), min(index * step + step, n)))
        blocks.setdefault(tuple(box), []).append(device.id)
    return blocks


def sharding_table(x: Any) -> str:
    """The text visualize_sharding prints: one cell per block, listing its devices."""
    if x.ndim > 2:
        raise ShardingError(
            f"visualize_sharding shows 1-d and 2-d arrays, got rank {x.ndim}",
            hint="reshape to 2-d first, or print x.sharding",
        )
    blocks = _blocks(x)
    if x.ndim < 2:
        rows = [(0, 1)]
        cols = sorted({k[0] for k in blocks}) if x.ndim == 1 else [(0, 1)]
    else:
        rows = sorted({k[0] for k in blocks})
        cols = sorted({k[1] for k in blocks})
    cells = []
    for r in rows:
        line = []
        for c in cols:
            key = (c,) if x.ndim == 1 else (r, c) if x.ndim == 2 else ()
            devices = blocks.get(key, [])
            line.append("dev " + ",".join(map(str, devices)))
        cells.append(line)
    width = max(len(c) for line in cells for c in line) + 2
    sep = "+" + "+".join("-" * width for _ in cols) + "+"
    out = [sep]
    for line in cells:
        out.append("|" + "|".join(c.center(width) for c in line) + "|")
        out.append(sep)
    sharding = getattr(x, "sharding", None)
    if sharding is None:
        from spmd.explicit import typeof

        sharding = typeof(x).sharding
    title = f"{x.shape} {x.dtype} {sharding!r}"
    return title + "\n" + "\n".join(out)


def visualize_sharding(x: Any) -> None:
    """Print which device holds which block (JAX's jax.debug.visualize_array_sharding)."""
    print(sharding_table(x))

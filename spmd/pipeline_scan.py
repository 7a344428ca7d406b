"""spmd.pipeline's forward ticks as one lax.scan over ticks (`unroll=False`): the schedule
table becomes data (per tick, the microbatch device 0 injects and each device's stage
chunk), so the program holds one tick's body whatever m and p are, where the unrolled
runner (spmd/pipeline.py) holds m+p-1 copies (m*v+p-1 interleaved). The one permute's
reason names the range of ticks it runs. Api-level; imports no backend.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from spmd import control, lax
from spmd.collective_api import axis_index, ppermute, psum
from spmd.pipeline_checks import check_stage_output, like
from spmd.pipeline_schedule import Schedule, Slot
from spmd.tracing import type_of
from spmd.tree import tree_flatten, tree_unflatten


def run_forward_scan(
    stage_fn: Callable[[Any, Any], Any],
    params: Any,
    x: Any,
    table: Schedule,
    axis: str,
    rows: list[tuple[Slot | None, ...]],
) -> Any:
    """One device's program (inside shard_map): `rows` (the table's forward ticks, checked
    by the caller) as a scan whose body runs the stage and shifts its output."""
    p, v, m, stages = table.devices, table.stages_per_device, table.microbatches, table.stages
    t = type_of(x)
    mb = lax.reshape(x, (m, t.shape[0] // m) + t.shape[1:])
    inject = np.array(
        [-1 if r[0] is None or r[0].stage else r[0].microbatch for r in rows], np.int32
    )
    chunks = np.array([[0 if s is None else s.stage // p for s in r] for r in rows], np.int32)
    me = axis_index(axis)
    first = lax.eq(me, lax.constant(np.int32(0)))
    leaves, treedef = tree_flatten(params)
    ring = [(d, (d + 1) % p) for d in range(p)] if v > 1 else [(d, d + 1) for d in range(p - 1)]
    reason = (
        f"pipeline {table.name} ticks 0-{len(rows) - 2} (scan over the table): stage "
        f"k->k+1 of {stages}, the tick's microbatch"
    )

    def tick(state: Any, row: tuple[Any, Any], shift: bool) -> tuple[Any, Any]:
        injected, ks = row
        take = lax.bitwise_and(first, lax.ge(injected, lax.constant(np.int32(0))))
        fresh = lax.dynamic_index_in_dim(
            mb, lax.max(injected, lax.constant(np.int32(0))), keepdims=False
        )
        state = lax.select(like(take, state), fresh, state)
        k = lax.dynamic_index_in_dim(ks, me, keepdims=False)
        chunk = [lax.dynamic_index_in_dim(w, k, keepdims=False) for w in leaves]
        y = stage_fn(tree_unflatten(treedef, chunk), state)
        check_stage_output(y, state, 0)
        return (ppermute(y, axis, ring, reason=reason) if shift else y), y

    state = lax.squeeze(lax.slice_in_dim(mb, 0, 1, axis=0), (0,))  # real data in bubbles
    state = lax.pvary(state, (axis,))  # the carry differs per pipe device from the first tick
    ys = []
    if len(rows) > 1:
        state, stacked = control.scan(
            lambda s, r: tick(s, r, True),
            state,
            (lax.constant(inject[:-1]), lax.constant(chunks[:-1])),
        )
        ys.append(stacked)
    _, y_last = tick(state, (lax.constant(inject[-1]), lax.constant(chunks[-1])), False)
    ys = lax.concatenate(ys + [lax.expand_dims(y_last, (0,))], 0)
    # the last device's output at the tick each microbatch leaves the last stage
    leaving = {
        r[p - 1].microbatch: i
        for i, r in enumerate(rows)
        if r[p - 1] is not None and r[p - 1].stage == stages - 1
    }
    runs: list[list[int]] = []  # microbatches leaving on consecutive ticks: one slice each
    for i in range(m):
        if runs and leaving[i] == leaving[runs[-1][-1]] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    outs = lax.concatenate(
        [lax.slice_in_dim(ys, leaving[r[0]], leaving[r[-1]] + 1, axis=0) for r in runs], 0
    )
    last = lax.eq(me, lax.constant(np.int32(p - 1)))
    outs = lax.select(like(last, outs), outs, lax.zeros_like(outs))
    return lax.reshape(psum(outs, axis), t.shape)

"""spmd.pipeline: pipeline parallelism over a mesh axis in the SPMD formulation (GSPMD §3.3).

Stage parameters are stacked on a leading dim sharded over the pipe axis; every device
runs the same unrolled program: each forward tick of the schedule table
(spmd/pipeline_schedule.py) runs the stage body on the device's slot and shifts the
activations one device along the axis with a collective permute whose report reason names
the tick, the stages and the microbatches. Backwards come from autodiff (spmd.grad), so
gpipe and interleaved run all forwards then all backwards; 1F1B needs the loss inside the
pipeline: spmd.pipeline_value_and_grad (spmd/pipeline_grad.py). Built on spmd.shard_map;
imports no backend.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from spmd import lax
from spmd.collective_api import axis_index, ppermute, psum
from spmd.errors import InternalError, ShapeError
from spmd.mesh import Mesh
from spmd.named_sharding import PartitionSpec
from spmd.pipeline_checks import check_stage_output, lay_out, like
from spmd.pipeline_scan import run_forward_scan
from spmd.pipeline_schedule import FORWARD, Schedule, Slot
from spmd.shard_map import shard_map
from spmd.tracing import type_of
from spmd.tree import tree_flatten, tree_unflatten


def pipeline(
    stage_fn: Callable[[Any, Any], Any],
    stage_params: Any,
    inputs: Any,
    *,
    axis: str = "pipe",
    num_microbatches: int,
    schedule: str = "gpipe",
    stages_per_device: int = 1,
    mesh: Mesh | None = None,
    param_specs: Any = None,
    input_spec: PartitionSpec | None = None,
    unroll: bool = True,
) -> Any:
    """Apply stages 0..S-1 of `stage_fn` in sequence to `inputs`, pipelined over `axis`.

    stage_fn(params_of_one_stage, x) -> y of x's shape and dtype, written for one device's
    blocks (as in shard_map: a stage whose weights are sharded over "model" psums over it).
    stage_params: a pytree whose leaves have a leading dim S = axis size * stages_per_device
    (stage order); inputs: one array whose leading (batch) dim splits into num_microbatches.
    Specs default to each argument's own sharding (inside jit, the traced value's; a
    parameter's dim 0 goes on `axis`), or pass param_specs (a pytree of P) / input_spec.
    Returns stage S-1's outputs for the whole batch, laid out like inputs. schedule "gpipe"
    or "interleaved" (stages_per_device > 1: circular, a smaller bubble); differentiate it
    with spmd.grad. Each tick's permute is named in compiled.collectives(). unroll=False
    runs the ticks as one lax.scan with the table as data (spmd/pipeline_scan.py): a
    program of one tick's size for any m and p, its permutes named once.

        >>> import spmd, numpy as np, spmd.numpy as snp
        >>> mesh = spmd.make_mesh((4,), ("pipe",))
        >>> w = np.full((4, 3, 3), 0.5, np.float32)
        >>> y = spmd.pipeline(lambda w, x: snp.tanh(x @ w), w, np.ones((8, 3), np.float32),
        ...                   num_microbatches=4, mesh=mesh)
        >>> y.shape
        (8, 3)
    """
    if schedule == "1f1b":
        raise ShapeError(
            "spmd.pipeline(schedule='1f1b') needs the loss inside the pipeline "
            "(a backward starts before the last forward)",
            hint="use spmd.pipeline_value_and_grad(stage_fn, loss_fn, params, "
            "inputs, targets, schedule='1f1b')",
        )
    layout = lay_out(
        stage_params,
        inputs,
        axis=axis,
        num_microbatches=num_microbatches,
        schedule=schedule,
        stages_per_device=stages_per_device,
        mesh=mesh,
        param_specs=param_specs,
        input_spec=input_spec,
    )
    table, xspec = layout.table, layout.input_spec

    def body(local_leaves: list[Any], x: Any) -> Any:
        params = tree_unflatten(layout.treedef, local_leaves)
        if unroll:
            return run_forward(stage_fn, params, x, table, axis)
        rows = table.forward_ticks()
        _check_forward_rows(rows, table)
        return run_forward_scan(stage_fn, params, x, table, axis, rows)

    mapped = shard_map(
        body, mesh=layout.grid, in_specs=(layout.param_specs, xspec), out_specs=xspec
    )
    return mapped(layout.leaves, inputs)


def run_forward(
    stage_fn: Callable[[Any, Any], Any], params: Any, x: Any, table: Schedule, axis: str
) -> Any:
    """One device's program (inside shard_map): the forward ticks of `table`, unrolled."""
    p, v, m = table.devices, table.stages_per_device, table.microbatches
    rows = table.forward_ticks()
    _check_forward_rows(rows, table)
    t = type_of(x)
    mb = lax.reshape(x, (m, t.shape[0] // m) + t.shape[1:])
    micro = [lax.squeeze(lax.slice_in_dim(mb, i, i + 1, axis=0), (0,)) for i in range(m)]
    me = axis_index(axis)
    first, last = _is_device(me, 0), _is_device(me, p - 1)
    state = micro[0]  # bubble slots compute on real data (no 0/0 in their masked gradients)
    outs: list[Any] = [None] * m
    ring = [(d, (d + 1) % p) for d in range(p)] if v > 1 else [(d, d + 1) for d in range(p - 1)]
    for tick, row in enumerate(rows):
        head = row[0]
        if head is not None and head.stage == 0:
            state = lax.select(like(first, state), micro[head.microbatch], state)
        y = stage_fn(_chunk(params, row, me, v, p), state)
        check_stage_output(y, state, tick)
        tail = row[p - 1]
        if tail is not None and tail.stage == table.stages - 1:
            outs[tail.microbatch] = y
        if tick + 1 < len(rows):
            state = ppermute(y, axis, ring, reason=_reason(table, tick, row))
    if any(o is None for o in outs):
        raise InternalError(
            "pipeline: a microbatch never left the last stage; this is a bug in spmd"
        )
    stacked = lax.concatenate([lax.expand_dims(o, (0,)) for o in outs], 0)
    stacked = lax.select(like(last, stacked), stacked, lax.zeros_like(stacked))
    return lax.reshape(psum(stacked, axis), t.shape)


def _reason(table: Schedule, tick: int, row: tuple[Slot | None, ...]) -> str:
    moves = [
        f"stage {s.stage}->{s.stage + 1} microbatch {s.microbatch}"
        for s in row
        if s is not None and s.stage < table.stages - 1
    ]
    what = ", ".join(moves) if moves else "bubble only"
    return f"pipeline {table.name} tick {tick}: {what}"


def _chunk(params: Any, row: tuple[Slot | None, ...], me: Any, v: int, p: int) -> Any:
    """This device's stage parameters at this tick: its block's chunk k (k read from the
    table per device, so every device runs the same program)."""
    leaves, treedef = tree_flatten(params)
    if v == 1:
        return tree_unflatten(
            treedef, [lax.squeeze(lax.slice_in_dim(x, 0, 1, axis=0), (0,)) for x in leaves]
        )
    ks = np.array([0 if s is None else s.stage // p for s in row], np.int32)
    k = lax.dynamic_index_in_dim(lax.constant(ks), me, keepdims=False)
    return tree_unflatten(treedef, [lax.dynamic_index_in_dim(x, k, keepdims=False) for x in leaves])


def _is_device(me: Any, d: int) -> Any:
    return lax.eq(me, lax.constant(np.int32(d)))


def _check_forward_rows(rows: list[tuple[Slot | None, ...]], table: Schedule) -> None:
    """Each forward must consume what the previous device sent at the previous tick."""
    when = {(s.stage, s.microbatch): t for t, row in enumerate(rows) for s in row if s}
    for t, row in enumerate(rows):
        for d, s in enumerate(row):
            if s is None or s.kind != FORWARD:
                continue
            if s.stage % table.devices != d:
                raise InternalError(f"schedule puts stage {s.stage} on device {d}; a bug")
            if s.stage and when.get((s.stage - 1, s.microbatch)) != t - 1:
                raise InternalError(
                    f"schedule {table.name}: {s} does not follow its input "
                    f"by one tick; this is a bug in spmd"
                )

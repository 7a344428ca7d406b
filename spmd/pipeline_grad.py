"""spmd.pipeline_value_and_grad: a training step (loss and parameter gradients) that runs
every tick of a schedule table explicitly, forwards and backwards, so 1F1B keeps at most
`stages` stage inputs per device (the buffer plan of spmd/pipeline_buffers.py).

Each backward recomputes its stage's forward from the stashed input (spmd.vjp at the
backward's tick), so a device keeps stage inputs only. Every device runs the same program:
a tick of forwards only computes one forward on every device, masked where the table says
idle (the same for backwards); a tick that mixes them (1F1B's steady state) branches on the
device's role (lax.switch: idle, forward, backward), so a device computes only its own
slot and the tick lasts one backward, not a forward plus a backward. Built on shard_map,
like spmd.pipeline; each device's program is spmd/pipeline_grad_ticks.py (the ticks
unrolled) or spmd/pipeline_grad_scan.py (one scan over the table).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from spmd.collective_api import psum
from spmd.errors import ShapeError
from spmd.mesh import Mesh
from spmd.named_sharding import P, PartitionSpec
from spmd.pipeline import pipeline
from spmd.pipeline_buffers import plan
from spmd.pipeline_checks import circular, lay_out
from spmd.pipeline_grad_scan import ScanRun
from spmd.pipeline_grad_ticks import UnrolledRun
from spmd.shard_map import shard_map
from spmd.tracing import describe_loc, type_of
from spmd.tree import tree_flatten, tree_unflatten

__all__ = ["pipeline", "pipeline_value_and_grad"]


def pipeline_value_and_grad(
    stage_fn: Callable[[Any, Any], Any],
    loss_fn: Callable[[Any, Any], Any],
    stage_params: Any,
    inputs: Any,
    targets: Any,
    *,
    axis: str = "pipe",
    num_microbatches: int,
    schedule: str = "1f1b",
    stages_per_device: int = 1,
    mesh: Mesh | None = None,
    param_specs: Any = None,
    input_spec: PartitionSpec | None = None,
    unroll: bool = True,
) -> tuple[Any, Any]:
    """(loss, grads of stage_params) of mean over microbatches (and batch shards) of
    loss_fn(stages(x_mb), targets_mb), running the named schedule's table tick by tick.

    stage_fn, stage_params, inputs and the specs are as in spmd.pipeline; targets split
    like inputs (same batch dim and spec); loss_fn(y_mb, t_mb) returns a float scalar for
    one device's block of a microbatch. schedule: "1f1b" (bounded activations), "gpipe" or
    "interleaved" (stages_per_device > 1). unroll=False runs the ticks as one lax.scan
    with the table as data (spmd/pipeline_grad_scan.py): one tick's program for any m, p.
    """
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
    grid, table, p = layout.grid, layout.table, layout.table.devices
    leaves, treedef = layout.leaves, layout.treedef
    pspecs, xspec = layout.param_specs, layout.input_spec
    if type_of(targets).shape[:1] != type_of(inputs).shape[:1]:
        raise ShapeError(
            f"pipeline_value_and_grad: targets of shape {type_of(targets).shape} "
            f"do not match the batch of inputs {type_of(inputs).shape}",
            describe_loc(),
            "give one target row per input row",
        )
    batch_axes = _axes_of(xspec)[:1]
    batch_axes = batch_axes[0] if batch_axes else ()
    replicated = tuple(
        a for a in grid.axis_names if a != axis and a not in {n for e in _axes_of(xspec) for n in e}
    )
    shards = int(np.prod([grid.axis_sizes[grid.axis_names.index(a)] for a in batch_axes]))
    buffers = plan(table)

    def body(local: list[Any], x: Any, t: Any) -> Any:
        run = (UnrolledRun if unroll else ScanRun)(
            stage_fn,
            loss_fn,
            tree_unflatten(treedef, local),
            table,
            buffers,
            axis,
            1.0 / (num_microbatches * shards),
            replicated,
        )
        loss, grads = run.all_ticks(x, t)
        loss = psum(loss, (axis,) + tuple(batch_axes)) if batch_axes else psum(loss, axis)
        grads = [_sum_unmentioned(g, s, grid, axis) for g, s in zip(tree_flatten(grads)[0], pspecs)]
        return loss, grads

    mapped = shard_map(
        body, mesh=grid, in_specs=(pspecs, xspec, xspec), out_specs=(P(), pspecs), check_vma=False
    )
    loss, grads = mapped(leaves, inputs, targets)
    if stages_per_device > 1:
        grads = [circular(g, stages_per_device, p) for g in grads]  # back to stage order
    return loss, tree_unflatten(treedef, grads)


def _axes_of(spec: PartitionSpec) -> list[tuple[str, ...]]:
    return [(e,) if isinstance(e, str) else tuple(e or ()) for e in tuple(spec)]


def _sum_unmentioned(g: Any, spec: PartitionSpec, grid: Mesh, axis: str) -> Any:
    """A gradient's addends over the axes its parameter is replicated on (batch shards,
    and 'model' for a parameter every model device holds) sum to the true gradient."""
    named = {n for e in _axes_of(spec) for n in e}
    axes = tuple(a for a in grid.axis_names if a != axis and a not in named)
    return psum(g, axes) if axes else g

"""spmd.pipeline_value_and_grad: a training step (loss and parameter gradients) that runs
every tick of a schedule table explicitly, forwards and backwards, so 1F1B keeps at most
`stages` stage inputs per device (the buffer plan of spmd/pipeline_buffers.py).

Each backward recomputes its stage's forward from the stashed input (spmd.vjp at the
backward's tick), so a device keeps stage inputs only. Every device runs the same program:
a tick of forwards only computes one forward on every device, masked where the table says
idle (the same for backwards); a tick that mixes them (1F1B's steady state) branches on the
device's role (lax.switch: idle, forward, backward), so a device computes only its own
slot and the tick lasts one backward, not a forward plus a backward. Built on shard_map,
like spmd.pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from spmd import control, lax
from spmd.autodiff import value_and_grad, vjp
from spmd.collective_api import axis_index, ppermute, psum
from spmd.errors import ShapeError
from spmd.pipeline import pipeline
from spmd.pipeline_buffers import BufferPlan, TickPlan, plan
from spmd.pipeline_checks import (
    check_input,
    check_stage_dim,
    check_stage_output,
    circular,
    like,
    mesh_of,
    own_spec,
    pipe_size,
    stage_specs,
)
from spmd.pipeline_schedule import BACKWARD, FORWARD, Schedule, Slot, make_schedule
from spmd.shard_map import shard_map
from spmd.sharding import Mesh, P, PartitionSpec
from spmd.tracing import describe_loc, type_of
from spmd.tree import tree_flatten, tree_map, tree_unflatten

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
    grid = mesh_of(mesh, stage_params, inputs)
    p = pipe_size(grid, axis)
    table = make_schedule(schedule, p, num_microbatches, stages_per_device)
    leaves, treedef = tree_flatten(stage_params)
    check_stage_dim(leaves, table.stages)
    leaves = [circular(x, p, stages_per_device) for x in leaves]
    pspecs = stage_specs(param_specs, leaves, treedef, grid, axis)
    xspec = input_spec if input_spec is not None else own_spec(inputs, grid, axis)
    check_input(inputs, xspec, grid, axis, num_microbatches)
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
        from spmd.pipeline_grad_scan import ScanRun  # it builds on _Run

        run = (_Run if unroll else ScanRun)(
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


class _Run:
    """One device's program: the ticks of the table with its buffer plan."""

    def __init__(
        self,
        stage_fn: Callable[[Any, Any], Any],
        loss_fn: Callable[[Any, Any], Any],
        params: Any,
        table: Schedule,
        buffers: BufferPlan,
        axis: str,
        scale: float,
        replicated: tuple[str, ...],
    ):
        self.stage_fn, self.loss_fn, self.params = stage_fn, loss_fn, params
        self.table, self.buffers, self.axis = table, buffers, axis
        self.scale, self.replicated = scale, replicated
        self.me = axis_index(axis)
        p = table.devices
        wrap = table.stages_per_device > 1
        self.forward_ring = [(d, (d + 1) % p) for d in range(p if wrap else p - 1)]
        self.backward_ring = [((d + 1) % p, d) for d in range(p if wrap else p - 1)]

    def pick(self, per_device: list[int]) -> Any:
        """This device's entry of a per-device table column (the same program everywhere)."""
        column = lax.constant(np.maximum(np.array(per_device, np.int32), 0))
        return lax.dynamic_index_in_dim(column, self.me, keepdims=False)

    def doing(self, per_device: list[int]) -> Any:
        """Whether this device has a slot in the column (-1: none)."""
        return lax.eq(self.pick([int(s >= 0) for s in per_device]), lax.constant(np.int32(1)))

    def all_ticks(self, x: Any, t: Any) -> tuple[Any, Any]:
        m = self.table.microbatches
        self.micro, self.targets = _split(x, m), _split(t, m)
        mb = self.micro[0]
        self.stash = _slots(mb, self.buffers.stash_slots)
        self.f_inbox = _slots(mb, self.buffers.f_inbox_slots)
        self.b_inbox = _slots(mb, self.buffers.b_inbox_slots)
        self.grads = tree_map(lax.zeros_like, self.params)
        self.loss = lax.constant(np.float32(0))
        self.last = lax.eq(self.me, lax.constant(np.int32(self.table.devices - 1)))
        # the loss gradient's addend form: nonzero on the first device of each replicated axis
        self.first_replica = lax.constant(True)
        for a in self.replicated:
            self.first_replica = lax.bitwise_and(
                self.first_replica, lax.eq(axis_index(a), lax.constant(np.int32(0)))
            )
        for tick, (row, tp) in enumerate(zip(self.table.ticks, self.buffers.ticks)):
            if tp.any_forward and tp.any_backward:
                sent_f, sent_b = self.mixed(row, tp)
            else:
                sent_f = self.forward(row, tp) if tp.any_forward else None
                sent_b = self.backward(row, tp) if tp.any_backward else None
            self.shift(tick, row, tp, sent_f, sent_b)
        return self.loss, self.grads

    def chunk(self, tp: TickPlan) -> tuple[Any, Any]:
        k = self.pick(tp.chunk)
        return k, tree_map(lambda w: lax.dynamic_index_in_dim(w, k, keepdims=False), self.params)

    def forward_input(self, row: tuple[Slot | None, ...], tp: TickPlan) -> Any:
        """The forward's input (from the inbox, or a microbatch on device 0), stashed."""
        x_in = lax.dynamic_index_in_dim(self.f_inbox, self.pick(tp.f_inbox_read), keepdims=False)
        head = row[0]
        if head is not None and head.kind == FORWARD and head.stage == 0:
            first = lax.eq(self.me, lax.constant(np.int32(0)))
            x_in = lax.select(like(first, x_in), self.micro[head.microbatch], x_in)
        self.stash = _masked_put(
            self.stash, x_in, self.pick(tp.f_stash_write), self.doing(tp.f_stash_write)
        )
        return x_in

    def backward_inputs(self, tp: TickPlan) -> tuple[Any, Any]:
        xs = lax.dynamic_index_in_dim(self.stash, self.pick(tp.b_stash_read), keepdims=False)
        ct = lax.dynamic_index_in_dim(self.b_inbox, self.pick(tp.b_inbox_read), keepdims=False)
        return xs, ct

    def forward(self, row: tuple[Slot | None, ...], tp: TickPlan) -> Any:
        x_in = self.forward_input(row, tp)
        y = self.stage_fn(self.chunk(tp)[1], x_in)
        check_stage_output(y, x_in, 0)
        return y

    def backward(self, row: tuple[Slot | None, ...], tp: TickPlan) -> Any:
        xs, ct = self.backward_inputs(tp)
        k, params = self.chunk(tp)
        d_params, dx, loss = self.stage_backward(row, params, xs, ct)
        self.accumulate(tp, k, d_params, loss)
        return dx

    def mixed(self, row: tuple[Slot | None, ...], tp: TickPlan) -> tuple[Any, Any]:
        """A tick where some devices run forwards and others backwards: each device runs its
        own slot's branch (idle devices run none)."""
        x_in = self.forward_input(row, tp)
        xs, ct = self.backward_inputs(tp)
        k, params = self.chunk(tp)
        role = self.pick([0 if s is None else 1 if s.kind == FORWARD else 2 for s in row])

        def run_backward(params: Any, x_in: Any, xs: Any, ct: Any) -> Any:
            d_params, dx, loss = self.stage_backward(row, params, xs, ct)
            return lax.zeros_like(x_in), dx, d_params, loss

        y, dx, d_params, loss = control.switch(
            role, [idle_slot, forward_slot(self.stage_fn), run_backward], params, x_in, xs, ct
        )
        self.accumulate(tp, k, d_params, loss)
        return y, dx

    def stage_backward(
        self, row: tuple[Slot | None, ...], params: Any, xs: Any, ct: Any
    ) -> tuple[Any, Any, Any]:
        """The stage's forward again from its stashed input, then its vjp: (d_params, dx,
        this device's loss addend)."""
        y, vjp_fn = vjp(self.stage_fn, params, xs)
        loss = lax.constant(np.float32(0))
        tail = row[-1]
        if tail is not None and tail.kind == BACKWARD and tail.stage == self.table.stages - 1:
            ct, loss = self.loss_cotangent(y, ct, tail.microbatch)
        d_params, dx = vjp_fn(ct)
        return d_params, dx, loss

    def accumulate(self, tp: TickPlan, k: Any, d_params: Any, loss: Any) -> None:
        doing = self.doing(tp.b_stash_read)
        self.grads = tree_map(lambda g, d: _masked_add(g, d, k, doing), self.grads, d_params)
        self.loss = lax.add(self.loss, loss)

    def loss_cotangent(self, y: Any, ct: Any, microbatch: int) -> tuple[Any, Any]:
        """On the last device: the loss's gradient starts this backward (in the addend form
        autodiff in shard_map uses: on the first device of the axes y is replicated on),
        and the loss's addend (zero elsewhere)."""
        value, g = value_and_grad(self.loss_fn)(y, self.targets[microbatch])
        value = lax.convert_element_type(value, "float32")
        scaled = lax.mul(value, lax.constant(np.float32(self.scale)))
        loss = lax.select(self.last, scaled, lax.zeros_like(scaled))
        g = lax.mul(g, lax.full_like(g, self.scale))
        g = lax.select(like(self.first_replica, g), g, lax.zeros_like(g))
        return lax.select(like(self.last, ct), g, ct), loss

    def shift(
        self, tick: int, row: tuple[Slot | None, ...], tp: TickPlan, sent_f: Any, sent_b: Any
    ) -> None:
        name = self.table.name
        if sent_f is not None and any(s >= 0 for s in tp.f_inbox_write):
            moves = _moves(row, FORWARD, self.table.stages)
            got = ppermute(
                sent_f,
                self.axis,
                self.forward_ring,
                reason=f"pipeline {name} tick {tick}: forward {moves}",
            )
            self.f_inbox = _masked_put(
                self.f_inbox, got, self.pick(tp.f_inbox_write), self.doing(tp.f_inbox_write)
            )
        if sent_b is not None and any(s >= 0 for s in tp.b_inbox_write):
            moves = _moves(row, BACKWARD, self.table.stages)
            got = ppermute(
                sent_b,
                self.axis,
                self.backward_ring,
                reason=f"pipeline {name} tick {tick}: gradient {moves}",
            )
            self.b_inbox = _masked_put(
                self.b_inbox, got, self.pick(tp.b_inbox_write), self.doing(tp.b_inbox_write)
            )


def _moves(row: tuple[Slot | None, ...], kind: str, stages: int) -> str:
    step = 1 if kind == FORWARD else -1
    out = [
        f"stage {s.stage}->{s.stage + step} microbatch {s.microbatch}"
        for s in row
        if s is not None and s.kind == kind and 0 <= s.stage + step < stages
    ]
    return ", ".join(out)


def _split(x: Any, m: int) -> list[Any]:
    t = type_of(x)
    mb = lax.reshape(x, (m, t.shape[0] // m) + t.shape[1:])
    return [lax.squeeze(lax.slice_in_dim(mb, i, i + 1, axis=0), (0,)) for i in range(m)]


def _slots(like: Any, n: int) -> Any:
    t = type_of(like)
    return lax.full((n,) + t.shape, 0, t.dtype)


def _masked_put(buffer: Any, value: Any, slot: Any, doing: Any) -> Any:
    updated = lax.dynamic_update_index_in_dim(buffer, value, slot, 0)
    return lax.select(like(doing, buffer), updated, buffer)


def _masked_add(acc: Any, d: Any, k: Any, doing: Any) -> Any:
    old = lax.dynamic_index_in_dim(acc, k, keepdims=False)
    new = lax.dynamic_update_index_in_dim(acc, lax.add(old, d), k, 0)
    return lax.select(like(doing, acc), new, acc)


def _axes_of(spec: PartitionSpec) -> list[tuple[str, ...]]:
    return [(e,) if isinstance(e, str) else tuple(e or ()) for e in tuple(spec)]


def _sum_unmentioned(g: Any, spec: PartitionSpec, grid: Mesh, axis: str) -> Any:
    """A gradient's addends over the axes its parameter is replicated on (batch shards,
    and 'model' for a parameter every model device holds) sum to the true gradient."""
    named = {n for e in _axes_of(spec) for n in e}
    axes = tuple(a for a in grid.axis_names if a != axis and a not in named)
    return psum(g, axes) if axes else g


def idle_slot(params: Any, x_in: Any, xs: Any, ct: Any) -> Any:
    """A mixed tick's idle branch: zeros shaped like (y, dx, d_params, loss)."""
    return (
        lax.zeros_like(x_in),
        lax.zeros_like(xs),
        tree_map(lax.zeros_like, params),
        lax.constant(np.float32(0)),
    )


def forward_slot(stage_fn: Callable[[Any, Any], Any]) -> Callable[..., Any]:
    """A mixed tick's forward branch: the stage's output, zeros for the backward's results."""

    def forward(params: Any, x_in: Any, xs: Any, ct: Any) -> Any:
        y = stage_fn(params, x_in)
        check_stage_output(y, x_in, 0)
        return y, *idle_slot(params, x_in, xs, ct)[1:]

    return forward

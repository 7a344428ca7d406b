"""One device's program of spmd.pipeline_value_and_grad (inside its shard_map): the ticks
of the schedule table with its buffer plan, unrolled, and the masked buffer updates and tick
branches the scanned form (spmd/pipeline_grad_scan.py) shares. Api-level; imports no backend.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from spmd import control, lax
from spmd.autodiff import value_and_grad, vjp
from spmd.collective_api import axis_index, ppermute
from spmd.pipeline_buffers import BufferPlan, TickPlan
from spmd.pipeline_checks import check_stage_output, like
from spmd.pipeline_schedule import BACKWARD, FORWARD, Schedule, Slot
from spmd.tracing import type_of
from spmd.tree import tree_map


class UnrolledRun:
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
        self.stash = slots(mb, self.buffers.stash_slots)
        self.f_inbox = slots(mb, self.buffers.f_inbox_slots)
        self.b_inbox = slots(mb, self.buffers.b_inbox_slots)
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
        self.stash = masked_put(
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
        self.grads = tree_map(lambda g, d: masked_add(g, d, k, doing), self.grads, d_params)
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
            self.f_inbox = masked_put(
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
            self.b_inbox = masked_put(
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


def slots(like: Any, n: int) -> Any:
    t = type_of(like)
    return lax.full((n,) + t.shape, 0, t.dtype)


def masked_put(buffer: Any, value: Any, slot: Any, doing: Any) -> Any:
    updated = lax.dynamic_update_index_in_dim(buffer, value, slot, 0)
    return lax.select(like(doing, buffer), updated, buffer)


def masked_add(acc: Any, d: Any, k: Any, doing: Any) -> Any:
    old = lax.dynamic_index_in_dim(acc, k, keepdims=False)
    new = lax.dynamic_update_index_in_dim(acc, lax.add(old, d), k, 0)
    return lax.select(like(doing, acc), new, acc)


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

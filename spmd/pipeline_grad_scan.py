"""spmd.pipeline_value_and_grad(unroll=False): every tick of the schedule table as one
lax.scan step, the table and its buffer plan (spmd/pipeline_buffers.py) as data: per tick,
each device's role (idle, forward, backward), its buffer slots, its stage chunk, the
microbatch device 0 injects and the one whose loss the last device starts. The body
switches on the role (each device runs its own slot) and shifts both ways, so the program
holds one tick whatever m and p are. Api-level; imports no backend.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from spmd import control, lax
from spmd.autodiff import value_and_grad, vjp
from spmd.collective_api import axis_index, ppermute
from spmd.pipeline_checks import like
from spmd.pipeline_grad_ticks import (
    UnrolledRun,
    forward_slot,
    idle_slot,
    masked_add,
    masked_put,
    slots,
)
from spmd.pipeline_schedule import BACKWARD, FORWARD
from spmd.tracing import type_of
from spmd.tree import tree_map

COLUMNS = (
    "f_inbox_read",
    "f_stash_write",
    "b_stash_read",
    "b_inbox_read",
    "f_inbox_write",
    "b_inbox_write",
    "chunk",
)


class ScanRun(UnrolledRun):
    """UnrolledRun's buffers and loss rules, its ticks as one scan."""

    def table_data(self) -> dict[str, Any]:
        """Per tick ([T, p] or [T]) int32 columns of the table and its buffer plan."""
        p, stages = self.table.devices, self.table.stages
        data = {name: [getattr(tp, name) for tp in self.buffers.ticks] for name in COLUMNS}
        data["role"] = [
            [0 if s is None else 1 if s.kind == FORWARD else 2 for s in row]
            for row in self.table.ticks
        ]
        data["inject"] = [
            row[0].microbatch
            if row[0] is not None and row[0].kind == FORWARD and row[0].stage == 0
            else -1
            for row in self.table.ticks
        ]
        data["loss"] = [
            row[p - 1].microbatch
            if row[p - 1] is not None
            and row[p - 1].kind == BACKWARD
            and row[p - 1].stage == stages - 1
            else -1
            for row in self.table.ticks
        ]
        return {k: lax.constant(np.array(v, np.int32)) for k, v in data.items()}

    def all_ticks(self, x: Any, t: Any) -> tuple[Any, Any]:
        m = self.table.microbatches
        tx, tt = type_of(x), type_of(t)
        self.micro = lax.reshape(x, (m, tx.shape[0] // m) + tx.shape[1:])
        self.target = lax.reshape(t, (m, tt.shape[0] // m) + tt.shape[1:])
        mb = lax.squeeze(lax.slice_in_dim(self.micro, 0, 1, axis=0), (0,))
        carry = (
            slots(mb, self.buffers.stash_slots),
            slots(mb, self.buffers.f_inbox_slots),
            slots(mb, self.buffers.b_inbox_slots),
            tree_map(lax.zeros_like, self.params),
            lax.constant(np.float32(0)),
        )
        self.setup_masks()
        carry, _ = control.scan(lambda c, row: (self.tick(c, row), None), carry, self.table_data())
        return carry[4], carry[3]

    def setup_masks(self) -> None:
        self.first = lax.eq(self.me, lax.constant(np.int32(0)))
        self.last = lax.eq(self.me, lax.constant(np.int32(self.table.devices - 1)))
        self.first_replica = lax.constant(True)
        for a in self.replicated:
            self.first_replica = lax.bitwise_and(
                self.first_replica, lax.eq(axis_index(a), lax.constant(np.int32(0)))
            )

    def at(self, column: Any) -> Any:
        """This device's entry of a [p] column (-1 read as 0) and whether it is >= 0."""
        v = lax.dynamic_index_in_dim(column, self.me, keepdims=False)
        zero = lax.constant(np.int32(0))
        return lax.max(v, zero), lax.ge(v, zero)

    def tick(self, carry: tuple[Any, ...], row: dict[str, Any]) -> tuple[Any, ...]:
        stash, f_inbox, b_inbox, grads, loss = carry
        zero = lax.constant(np.int32(0))
        x_in = lax.dynamic_index_in_dim(f_inbox, self.at(row["f_inbox_read"])[0], keepdims=False)
        injected = lax.dynamic_index_in_dim(
            self.micro, lax.max(row["inject"], zero), keepdims=False
        )
        take = lax.bitwise_and(self.first, lax.ge(row["inject"], zero))
        x_in = lax.select(like(take, x_in), injected, x_in)
        stash = masked_put(stash, x_in, *self.at(row["f_stash_write"]))
        xs = lax.dynamic_index_in_dim(stash, self.at(row["b_stash_read"])[0], keepdims=False)
        ct = lax.dynamic_index_in_dim(b_inbox, self.at(row["b_inbox_read"])[0], keepdims=False)
        k = self.at(row["chunk"])[0]
        params = tree_map(lambda w: lax.dynamic_index_in_dim(w, k, keepdims=False), self.params)
        starts_loss = lax.bitwise_and(self.last, lax.ge(row["loss"], zero))
        target = lax.dynamic_index_in_dim(self.target, lax.max(row["loss"], zero), keepdims=False)

        def backward(params: Any, x_in: Any, xs: Any, ct: Any) -> Any:
            y, vjp_fn = vjp(self.stage_fn, params, xs)
            value, g = value_and_grad(self.loss_fn)(y, target)
            g = lax.mul(g, lax.full_like(g, self.scale))
            g = lax.select(like(self.first_replica, g), g, lax.zeros_like(g))
            ct = lax.select(like(starts_loss, ct), g, ct)
            scaled = lax.mul(
                lax.convert_element_type(value, "float32"), lax.constant(np.float32(self.scale))
            )
            d_params, dx = vjp_fn(ct)
            return (
                lax.zeros_like(x_in),
                dx,
                d_params,
                lax.select(starts_loss, scaled, lax.zeros_like(scaled)),
            )

        role = self.at(row["role"])[0]
        y, dx, d_params, added = control.switch(
            role, [idle_slot, forward_slot(self.stage_fn), backward], params, x_in, xs, ct
        )
        doing_b = lax.eq(role, lax.constant(np.int32(2)))
        grads = tree_map(lambda g, d: masked_add(g, d, k, doing_b), grads, d_params)
        name = (
            f"pipeline {self.table.name} ticks 0-{self.table.num_ticks - 1} (scan over the table)"
        )
        got = ppermute(y, self.axis, self.forward_ring, reason=f"{name}: forward stage k->k+1")
        f_inbox = masked_put(f_inbox, got, *self.at(row["f_inbox_write"]))
        got = ppermute(dx, self.axis, self.backward_ring, reason=f"{name}: gradient k+1->k")
        b_inbox = masked_put(b_inbox, got, *self.at(row["b_inbox_write"]))
        return stash, f_inbox, b_inbox, grads, lax.add(loss, added)

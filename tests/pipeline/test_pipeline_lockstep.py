"""The explicit runner's lockstep work (spmd.pipeline_value_and_grad): a tick that mixes
forwards and backwards (1F1B's steady state) branches on each device's role, so the
compiled per-device program costs one backward there, not a forward plus a backward.
Oracle: hand-counted matmul FLOPs per tick of the schedule table, priced by the simulator's
rule for a cond (its costliest branch)."""

import numpy as np
import pytest

import spmd
import spmd.numpy as snp
from spmd import P
from spmd.pipeline_schedule import make_schedule

W, MB = 128, 32  # width (hidden 4W), rows per microbatch


def block(q, h):
    return h + snp.tanh(h @ q["w1"]) @ q["w2"]


def mse(y, t):
    return snp.mean((y - t) ** 2)


def tick_counts(schedule, p, m):
    kinds = [{s.kind for s in row if s} for row in make_schedule(schedule, p, m).ticks]
    return (
        sum(k == {"F"} for k in kinds),
        sum(k == {"B"} for k in kinds),
        sum(len(k) == 2 for k in kinds),
    )


@pytest.mark.parametrize("schedule,m", [("1f1b", 4), ("1f1b", 8), ("gpipe", 8)])
def test_lockstep_flops_are_one_slot_per_tick(schedule, m):
    p = 4
    mesh = spmd.make_mesh((p,), ("pipe",))
    params = {"w1": np.zeros((p, W, 4 * W), np.float32), "w2": np.zeros((p, 4 * W, W), np.float32)}
    x = np.zeros((m * MB, W), np.float32)

    def step(params, x, t):
        return spmd.pipeline_value_and_grad(
            block,
            mse,
            params,
            x,
            t,
            num_microbatches=m,
            schedule=schedule,
            mesh=mesh,
            param_specs=P("pipe"),
        )

    report = spmd.jit(step).lower(params, x, x).compile().simulate(check_memory=False)
    forward = 2 * (2 * MB * W * 4 * W)  # two matmuls
    backward = forward + 2 * forward  # the recomputed forward, then dx and dw of each matmul
    f_only, b_only, mixed = tick_counts(schedule, p, m)
    one_slot = f_only * forward + (b_only + mixed) * backward
    # below the count by up to 7% measured: gradients nobody reads are pruned (the first
    # stage's dx, the last ticks' sends)
    assert 0.88 * one_slot <= report.flops <= 1.02 * one_slot
    both_slots = one_slot + mixed * forward  # a forward and a backward every mixed tick
    assert mixed == 0 or both_slots > 1.1 * report.flops

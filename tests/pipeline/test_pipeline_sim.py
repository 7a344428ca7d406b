"""The TPU simulator's account of pipeline schedules: bubble fraction against the closed
forms, the timeline's bubble events, the SPMD lockstep time, and simulate_pipeline's
priced stage slots on a simulated v5e slice."""

import json

import numpy as np
import pytest

import spmd
import spmd.numpy as snp
from backends.tpu_sim.pipeline import BUBBLE, lockstep_seconds, schedule_timeline
from spmd.errors import SimulationError
from spmd.pipeline_schedule import gpipe, interleaved, one_f_one_b
from spmd.pipeline_sim import simulate_pipeline


@pytest.mark.parametrize("p,m", [(2, 1), (2, 8), (4, 4), (4, 16), (8, 8), (8, 32)])
@pytest.mark.parametrize("build", [gpipe, one_f_one_b])
def test_bubble_is_the_closed_form_without_shift_cost(build, p, m):
    # F = 1, B = 2: a real pipeline's forward/backward ratio; no shift cost
    sim = schedule_timeline(build(p, m), 1.0, 2.0, 0.0)
    assert sim.step_time_s == pytest.approx(3.0 * (m + p - 1))
    assert sim.bubble_fraction == pytest.approx((p - 1) / (m + p - 1))


@pytest.mark.parametrize("p,v,m", [(2, 2, 4), (4, 2, 8), (4, 4, 8)])
def test_interleaved_bubble_is_smaller(p, v, m):
    sim = schedule_timeline(interleaved(p, v, m), 1.0, 1.0, 0.0)
    assert sim.bubble_fraction == pytest.approx((p - 1) / (v * m + p - 1))
    assert sim.bubble_fraction < schedule_timeline(gpipe(p, m), 1.0, 1.0).bubble_fraction


def test_small_shifts_keep_the_bubble_within_five_points():
    sim = schedule_timeline(gpipe(4, 16), 1.0, 2.0, 0.02)
    assert abs(sim.bubble_fraction - 3 / 19) < 0.05
    assert sim.bubble_fraction > 3 / 19  # each hop of the fill and drain waits for a shift


def test_timeline_shows_bubbles_as_events(tmp_path):
    sim = schedule_timeline(gpipe(4, 2), 1.0, 1.0, 0.0)
    bubbles = [e for e in sim.timeline.events if e.name == BUBBLE]
    # 4 devices x a 10-tick step, 4 slots busy on each: 24 ticks of bubble
    assert sim.step_time_s == pytest.approx(10.0)
    assert sum(e.duration for e in bubbles) == pytest.approx(4 * 10 - 4 * 4)
    trace = json.loads(sim.to_chrome_trace(tmp_path / "pipe.json").read_text())["traceEvents"]
    assert {e["pid"] for e in trace if e.get("name") == BUBBLE} == {0, 1, 2, 3}
    assert sum(1 for e in trace if e.get("name", "").startswith("F")) == 8


def test_lockstep_time_counts_masked_slots_and_shifts():
    # GPipe 2x1: ticks F,F,B,B: each tick one slot kind; three shifts between four ticks
    assert lockstep_seconds(gpipe(2, 1), 1.0, 2.0, 0.5) == pytest.approx(1 + 1 + 2 + 2 + 1.5)
    # 1F1B ticks with both a forward and a backward last the backward (each device runs
    # its own slot), the shifts of both directions follow them
    table = one_f_one_b(4, 8)
    mixed = sum(1 for row in table.ticks if {s.kind for s in row if s} == {"F", "B"})
    forwards = sum(1 for row in table.ticks if {s.kind for s in row if s} == {"F"})
    assert mixed > 0
    assert lockstep_seconds(table, 1.0, 3.0, 0.0) == pytest.approx(
        forwards + 3.0 * (table.num_ticks - forwards)
    )
    assert lockstep_seconds(table, 1.0, 3.0, 0.5) == pytest.approx(
        forwards + 3.0 * (table.num_ticks - forwards) + 0.5 * (table.num_ticks - 1 + mixed)
    )


def test_negative_costs_raise():
    with pytest.raises(SimulationError, match="negative"):
        schedule_timeline(gpipe(2, 2), -1.0, 1.0)


def tanh_stage(w, x):
    return snp.tanh(x @ w)


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_simulated_slice_bubble_within_five_points_of_theory(schedule):
    mesh = spmd.make_mesh((4,), ("pipe",))
    w = np.zeros((4, 4096, 4096), np.float32)
    x = np.zeros((256, 4096), np.float32)
    sim = simulate_pipeline(tanh_stage, w, x, num_microbatches=8, mesh=mesh, schedule=schedule)
    assert sim.forward_s > 0 and sim.backward_s > 0 and sim.shift_s > 0
    assert abs(sim.bubble_fraction - 3 / 11) < 0.05
    assert sim.step_time_s >= 8 * (sim.forward_s + sim.backward_s)


def test_simulated_interleaved_bubble_is_lower_than_gpipe():
    mesh = spmd.make_mesh((4,), ("pipe",))
    x = np.zeros((256, 4096), np.float32)
    flat = simulate_pipeline(
        tanh_stage, np.zeros((4, 4096, 4096), np.float32), x, num_microbatches=8, mesh=mesh
    )
    circular = simulate_pipeline(
        tanh_stage,
        np.zeros((8, 4096, 4096), np.float32),
        x,
        num_microbatches=8,
        mesh=mesh,
        schedule="interleaved",
        stages_per_device=2,
    )
    assert circular.bubble_fraction < flat.bubble_fraction

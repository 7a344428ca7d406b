"""autoshard's plan against the hand plans on the other meshes issue 20 names: tpu-sim v5p
8x8x8 (a 3-D torus: DP over two axes x TP over one, and over one x two) and the CPU 2x4 mesh
(the embedded runtime's own cost model). Step times are simulated, so the ratios are exact."""

from __future__ import annotations

import pytest

import spmd
import spmd.sim
from benchmarks.autoshard import (
    MESHES,
    block,
    block_shapes,
    gpt_shapes,
    gpt_step,
    hand_reports,
    mesh_plans,
    mlp,
)
from spmd.api import ShapeDtypeStruct as S

pytest.importorskip("scipy")

# the GPT step with one layer: forward, backward and update as with two (the benchmark's),
# half the integer program and half the hand plans' simulations
PROGRAMS = {
    "mlp": (mlp, [(4096, 4096), (4096, 16384), (16384, 4096)]),
    "block": (block, block_shapes(32, 512, 1024, 16, 4096)),
    "gpt": (gpt_step, gpt_shapes(32, 512, 1024, 16, 4096, 8192, layers=1)),
}


def _ratio(kind: str, program: str, time_limit_s: float = 60.0) -> tuple[float, dict]:
    shape, names, device, splits = MESHES[kind]
    mesh = spmd.make_mesh(shape, names, **({"device": device} if device else {}))
    f, shapes = PROGRAMS[program]
    hand = hand_reports(f, mesh, shapes, mesh_plans(splits, layers=1)[program])
    plan = spmd.sim.autoshard(
        f, *[S(s, "float32") for s in shapes], mesh=mesh, time_limit_s=time_limit_s
    )
    best = min(r.step_time_s for r in hand.values())
    return plan.report.step_time_s / best, {k: r.step_time_s for k, r in hand.items()}


@pytest.mark.timeout(100)  # 19 s measured at load 20
@pytest.mark.parametrize("kind", ["v5p", "cpu"])
def test_mlp_plan_within_5_percent_of_the_best_hand_plan(kind):
    ratio, hand = _ratio(kind, "mlp")
    assert ratio <= 1.05, (ratio, hand)


@pytest.mark.timeout(100)  # 18 s measured at load 20
def test_block_plan_within_5_percent_of_the_best_hand_plan_on_cpu_2x4():
    ratio, hand = _ratio("cpu", "block")
    assert ratio <= 1.05, (ratio, hand)


@pytest.mark.slow
@pytest.mark.timeout(500)  # 100 s measured at load 20 (two 2-D views, each solved)
def test_block_plan_within_5_percent_of_the_best_hand_plan_on_v5p_8x8x8():
    ratio, hand = _ratio("v5p", "block")
    assert ratio <= 1.05, (ratio, hand)


@pytest.mark.slow
@pytest.mark.timeout(300)  # 4 s each measured at load 6
@pytest.mark.parametrize("kind", ["v5p", "cpu"])
def test_gpt_training_step_plan_within_5_percent_of_the_best_hand_plan(kind):
    """v5p: one solve per 2-D view, no second weight; the partitioner runs each contraction
    as priced (its operands pinned), which closed the 1.13x the v5p step had (now 0.74x).
    CPU 2x4 (was 1.04-1.06x FSDP): the simulator hides FSDP's weight gathers behind compute
    and the integer program added them, so it chose DP; it now takes back the gathers an
    argument's readers leave time for (spmd/autoshard_overlap.py) and prices a collective
    over both axes at its own rate (spmd/autoshard_cost.py)."""
    # HiGHS's limit is wall time: under load its default 60 s ended with a plan 11x worse
    ratio, hand = _ratio(kind, "gpt", time_limit_s=600.0)
    assert ratio <= 1.05, (ratio, hand)


@pytest.mark.timeout(75)  # 15 s measured at load 20
def test_scan_body_plan_meets_a_memory_limit_replicated_stacked_weights_exceed():
    """The body is solved once under the limit, its per-step weight slices counted `length`
    times (the stacked weights live outside it)."""
    from spmd.sharding import NamedSharding, P
    from tests.autoshard.test_autoshard import layers

    mesh = spmd.make_mesh((16, 16), ("data", "model"), device="tpu-sim:v5e")
    shapes = [(4096, 4096), (8, 4096, 16384), (8, 16384, 4096)]
    dp = [P(("data", "model")), P(), P()]
    replicated = spmd.sim.simulate(
        layers,
        *[S(s, "float32", NamedSharding(mesh, p)) for s, p in zip(shapes, dp)],
        check_memory=False,
    )
    limit = 1 << 30  # the stacked weights alone are 4 GiB replicated
    assert replicated.peak_memory_bytes > limit
    plan = spmd.sim.autoshard(
        layers, *[S(s, "float32") for s in shapes], mesh=mesh, memory_limit=limit
    )
    assert plan.report.peak_memory_bytes <= limit, plan


@pytest.mark.slow
@pytest.mark.timeout(900)  # 170 s measured at load 20 (FSDP x TP's simulation is most of it)
def test_embedding_model_plan_beats_every_uniform_hand_plan_on_v5e_16x16():
    """A 256k x 1024 table and a small MLP, one SGD step: the plan shards the table over d
    (a gather keeps that local, its scatter_add gradient too) and the MLP by batch, which
    no uniform plan does."""
    from benchmarks.autoshard import ALL, EMBEDDING, EMBEDDING_PLANS, compare, embedding_step

    mesh = spmd.make_mesh((16, 16), ALL, device="tpu-sim:v5e")
    r = compare(
        "embedding", embedding_step, mesh, EMBEDDING[0], EMBEDDING_PLANS, dtypes=EMBEDDING[1]
    )
    best = r["hand"][r["best"]].step_time_s
    assert r["plan"].report.step_time_s < 0.5 * best, (r["plan"], r["hand"])

"""autoshard with donated arguments (donate_argnums): each result that aliases a donated argument
(XLA's rule: the earliest donated argument left with its shape and dtype) comes back in that
argument's layout, chosen in the integer program, so a training step hands the next step its
weights as it took them. The step still equals the unsharded reference, and its simulated time
stays within 5% of the best hand plan held to the same layouts."""

from __future__ import annotations

import numpy as np
import pytest

import spmd
import spmd.numpy as snp
import spmd.sim
from benchmarks.autoshard import MESHES, gpt_shapes, gpt_step, mesh_plans
from spmd.api import ShapeDtypeStruct as S
from spmd.autoshard_cost import sim_options
from spmd.autoshard_ties import donated_ties
from spmd.ir.types import TensorType
from spmd.sharding import NamedSharding, P

pytest.importorskip("scipy")


def test_each_result_takes_the_earliest_donated_argument_of_its_shape_and_dtype():
    f32, i32 = "float32", "int32"
    params = [TensorType((4,), f32), TensorType((4,), f32), TensorType((3,), f32)]
    params.append(TensorType((4,), i32))
    results = [TensorType((3,), f32), TensorType((4,), f32), TensorType((4,), i32)]
    results += [TensorType((4,), f32), TensorType((4,), f32)]
    # argument 2 is not donated: result 0 has no partner; the third (4,) float32 none left
    assert donated_ties(params, results, [True, True, False, True]) == {1: 0, 2: 3, 3: 1}


def _weights_kept(plan, first_weight: int) -> list[bool]:
    return [
        plan.flat_out[j].spec == plan.flat_in[i].spec and i == first_weight + j
        for j, i in plan.ties.items()
    ]


@pytest.mark.timeout(300)
def test_jit_auto_with_donated_weights_returns_them_in_their_layout_and_equals_reference():
    """spmd.jit(step, in_shardings=AUTO, donate_argnums=weights) on the CPU 2x4 mesh."""
    mesh = spmd.make_mesh((2, 4), ("data", "model"))
    shapes = gpt_shapes(4, 8, 16, 4, 32, 16, layers=1)
    rng = np.random.default_rng(5)
    host = [0.3 * rng.standard_normal(s).astype(np.float32) for s in shapes]
    want = spmd.jit(gpt_step)(*host)  # unsharded
    weights = tuple(range(2, len(shapes)))
    step = spmd.jit(gpt_step, in_shardings=spmd.AUTO, donate_argnums=weights)
    args = [spmd.device_put(a, NamedSharding(mesh, P())) for a in host]
    got = step(*args)
    plan = step.last_plan
    assert len(plan.ties) == len(weights) and all(_weights_kept(plan, 2)), plan
    for new, i in zip(got, weights):  # the arrays themselves, as the next step receives them
        assert new.sharding.spec == plan.in_shardings[i].spec
    for g, w, old in zip(got, want, host[2:]):  # the updates (-1e-3 x gradient) agree
        update = np.asarray(w) - old
        assert np.abs(update).max() > 1e-6
        np.testing.assert_allclose(np.asarray(g) - old, update, rtol=1e-2, atol=1e-7)


def _sgd(w, x):
    return w - 0.1 * snp.sum(x, axis=0)


def test_a_replicated_donated_weight_comes_back_replicated_where_a_free_plan_shards_it():
    """Free, the plan updates a shard of w (ZeRO-1: sum scattered, a slice updated) and returns
    it sharded: cheaper for this step, a gather for the next. Donated, w comes back as given."""
    mesh = spmd.make_mesh((2, 4), ("data", "model"))
    w, x = S((8, 16), "float32", NamedSharding(mesh, P())), S((64, 8, 16), "float32")
    free = spmd.sim.autoshard(_sgd, w, x, mesh=mesh)
    assert free.ties == {} and free.out_shardings.spec != P()
    tied = spmd.sim.autoshard(_sgd, w, x, mesh=mesh, donate_argnums=0)
    assert tied.ties == {0: 0} and tied.out_shardings.spec == P()
    assert tied.report.step_time_s > free.report.step_time_s  # the tie is paid, in the plan


def test_a_tie_no_layout_satisfies_is_left_out_and_said():
    """iota's result is laid out by the partitioner (replicated), the argument is fixed to
    P('data'): no layout is both, so the plan keeps both and says the tie was not held."""
    mesh = spmd.make_mesh((2, 4), ("data", "model"))
    w = S((8,), "float32", NamedSharding(mesh, P("data")))
    plan = spmd.sim.autoshard(
        lambda w: snp.arange(8.0, dtype="float32"), w, mesh=mesh, donate_argnums=0
    )
    assert plan.ties == {} and plan.out_shardings.spec == P()
    assert any("not tied" in line for line in plan.explanation), plan.explanation


@pytest.mark.slow
@pytest.mark.timeout(600)  # 2-3 s at load 1
def test_tied_gpt_step_within_5_percent_of_the_best_hand_plan_with_the_same_ties():
    """The GPT step (1 layer, b32 s512 d1024 f4096, vocab 8192) on the CPU 2x4 mesh, priced
    as the host: every hand plan returns its new weights in the old weights' layout (jit's
    out_shardings, donated), autoshard is told the same by donate_argnums."""
    shape, names, _, splits = MESHES["cpu"]
    mesh = spmd.make_mesh(shape, names)
    shapes = gpt_shapes(32, 512, 1024, 16, 4096, 8192, layers=1)
    weights = tuple(range(2, len(shapes)))
    hand = {}
    for name, specs in mesh_plans(splits, layers=1)["gpt"].items():
        named = [NamedSharding(mesh, p) for p in specs]
        tied = spmd.jit(gpt_step, out_shardings=tuple(named[2:]), donate_argnums=weights)
        args = [S(s, "float32", x) for s, x in zip(shapes, named)]
        report = spmd.sim.simulate(tied, *args, check_memory=False, **sim_options(mesh))
        hand[name] = report.step_time_s
    plan = spmd.sim.autoshard(
        gpt_step,
        *[S(s, "float32") for s in shapes],
        mesh=mesh,
        donate_argnums=weights,
        time_limit_s=600.0,
    )
    assert len(plan.ties) == len(weights) and all(_weights_kept(plan, 2)), plan
    assert plan.report.step_time_s <= 1.05 * min(hand.values()), (plan, hand)

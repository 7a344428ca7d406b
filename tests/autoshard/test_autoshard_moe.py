"""The mixture-of-experts layer (spmd/nn_moe.py) and autoshard on it (issue 20's irregular
model): the layer equals a per-token numpy loop; expert parallelism (groups and experts on
one mesh axis) reshards by two all-to-alls of hand-derived bytes, not gathers; autoshard's
plan on the CPU mesh equals the unsharded reference, and on tpu-sim it is expert
parallelism, beating every uniform plan."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

import spmd
import spmd.nn_moe
import spmd.sim
from spmd import dispatch
from spmd.api import ShapeDtypeStruct as S
from spmd.autoshard_cost import sim_options
from spmd.sharding import NamedSharding, P

pytest.importorskip("scipy")

ALL = ("data", "model")
F32 = 4


def _gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def reference(x, router, w_in, w_out, capacity_factor=1.25, top_k=1):
    """Token by token: softmax router, top-k experts in order, each into its expert's next
    free slot of the group (first choices of every token before second choices), dropped
    past capacity; gates renormalised over the k choices when k > 1."""
    g, s, _ = x.shape
    e = router.shape[1]
    cap = max(1, math.ceil(top_k * s * capacity_factor / e))
    out = np.zeros_like(x, dtype=np.float64)
    for gi in range(g):
        logits = x[gi].astype(np.float64) @ router
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        order = np.argsort(-probs, axis=-1, kind="stable")[:, :top_k]
        gates = np.take_along_axis(probs, order, -1)
        if top_k > 1:
            gates = gates / gates.sum(-1, keepdims=True)
        used = np.zeros(e, int)
        for choice in range(top_k):
            for t in range(s):
                expert = order[t, choice]
                if used[expert] < cap:
                    h = _gelu(x[gi, t] @ w_in[expert])
                    out[gi, t] += gates[t, choice] * (h @ w_out[expert])
                used[expert] += 1
    return out


def _data(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(s) * 0.5).astype(np.float32) for s in shapes]


SMALL = [(4, 16, 8), (8, 8), (8, 8, 16), (8, 16, 8)]  # G S d, d E, E d f, E f d


@pytest.mark.parametrize("top_k,factor", [(1, 1.0), (2, 1.25), (2, 0.5)])
def test_moe_equals_the_per_token_loop(top_k, factor):
    """Capacity 4, 10 and 2 slots: the last drops most tokens' choices."""
    x, router, w_in, w_out = _data(SMALL)
    got = spmd.nn_moe.moe(x, router * 3, w_in, w_out, capacity_factor=factor, top_k=top_k)
    want = reference(x, router * 3, w_in, w_out, factor, top_k)
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("annotated", [False, True])
def test_expert_parallelism_reshards_by_two_all_to_alls(annotated):
    """Groups and experts both over data x model: dispatch's [E, G, C, d] moves its 8 devices'
    axes from G to E and the experts' output back, each an all-to-all of the local buffer
    (E, G/8, C, d) = (8, 1, 2, 16) float32 = 1024 B; nothing else is communicated. The same
    with GShard's annotations (masks on the groups, expert buffers on the experts)."""
    mesh = spmd.make_mesh((2, 4), ALL)
    shapes = [(8, 8, 16), (16, 8), (8, 16, 64), (8, 64, 16)]  # C = ceil(8 * 1.25 / 8) = 2
    args = _data(shapes, seed=1)
    specs = [P(ALL), P(), P(ALL), P(ALL)]
    every = NamedSharding(mesh, P(ALL))
    f = spmd.jit(
        functools.partial(spmd.nn_moe.moe, shardings=(every, every) if annotated else None),
        in_shardings=tuple(NamedSharding(mesh, p) for p in specs),
        out_shardings=NamedSharding(mesh, P(ALL)),
    )
    recs = f.lower(*args).compile().collectives()
    local = 8 * 1 * 2 * 16 * F32
    assert [(r.kind, r.axes, r.bytes) for r in recs] == [("all_to_all", ALL, local)] * 2
    np.testing.assert_allclose(np.asarray(f(*args)), reference(*args), rtol=2e-4, atol=2e-5)


def moe_residual_top1(x, router, w_in, w_out):
    return x + spmd.nn_moe.moe(x, router, w_in, w_out)


def test_autoshard_between_fixed_token_and_expert_layouts_reshards_without_a_gather():
    """Tokens' groups and experts given sharded over data x model (as ShapeDtypeStructs,
    which autoshard keeps): the plan moves tokens between the two layouts without gathering
    either whole, as fast as the hand plan's two all-to-alls on the local runtime's model
    (within 5%; the solver may take permutes or a gather over one axis as steps where the
    hand plan has an all-to-all over both), and its program equals the per-token loop. The
    layer is big enough that its compute is more than the runtime's per-collective latency
    (at d=16, f=64 the latency of each reshard step is the whole cost and the integer
    program's unfused compute prices decide between equals: 1.11x)."""
    mesh = spmd.make_mesh((2, 4), ALL)
    shapes = [(8, 32, 64), (64, 8), (8, 64, 256), (8, 256, 64)]
    args = _data(shapes, seed=2)
    every = NamedSharding(mesh, P(ALL))
    given = [every, None, every, every]
    abstract = [S(s, "float32", g) for s, g in zip(shapes, given)]
    # HiGHS proves the optimum in seconds; its limit is wall time, generous for a loaded CI
    plan = spmd.sim.autoshard(moe_residual_top1, *abstract, mesh=mesh, time_limit_s=120)
    run = dispatch.compile_graph(plan.graph, plan.flat_in, plan.flat_out, (False,) * 4)
    got = np.asarray(run(list(args))[0])
    np.testing.assert_allclose(got, args[0] + reference(*args), rtol=2e-4, atol=2e-5)
    whole = min(math.prod(s) * 4 for s in shapes[:1] + shapes[2:])  # tokens', experts' bytes
    gathered = [r.bytes * r.group_size for r in run.collectives() if r.kind == "all_gather"]
    assert all(b < whole for b in gathered), run.collectives()
    hand = spmd.jit(moe_residual_top1, out_shardings=every)
    ep = spmd.sim.simulate(hand, *abstract, check_memory=False, **sim_options(mesh))
    assert [r.op for r in ep.ops if r.kind == "collective"] == ["all_to_all"] * 2
    assert plan.report.step_time_s <= 1.05 * ep.step_time_s, (plan, ep.step_time_s)


def _hand(mesh, shapes, specs):
    return [S(s, "float32", NamedSharding(mesh, p)) for s, p in zip(shapes, specs)]


def test_autoshard_finds_expert_parallelism_on_v5e_16x16():
    """256 experts, one per chip: the plan matches expert parallelism (experts and groups over
    every chip, its only collectives all-to-alls) and is under half of DP's and FSDP's, which
    replicate or gather the experts' 2 x 256 x 512 x 1024 weights (every uniform plan is
    compared in benchmarks/autoshard_moe.py; the TP plans take longer to simulate)."""
    from benchmarks.autoshard_moe import layer_shapes, plans

    mesh = spmd.make_mesh((16, 16), ALL, device="tpu-sim:v5e")
    shapes = layer_shapes(256, 128, 512, 256, 1024)
    hand = plans(("data",), ("model",))["layer"]
    times = {
        name: spmd.sim.simulate(
            moe_residual_top1, *_hand(mesh, shapes, hand[name]), check_memory=False
        ).step_time_s
        for name in ("DP", "FSDP", "EP")
    }
    args = [S(s, "float32") for s in shapes]
    plan = spmd.sim.autoshard(moe_residual_top1, *args, mesh=mesh, time_limit_s=120)
    t = plan.report.step_time_s
    assert t <= 1.05 * times["EP"] and t < 0.5 * min(times["DP"], times["FSDP"]), (plan, times)
    kinds = {r.op for r in plan.report.ops if r.kind == "collective"}
    assert kinds == {"all_to_all"}, kinds


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_expert_parallel_gradients_equal_the_unsharded_ones():
    """The backward of the dispatch and combine einsums under expert parallelism (their
    transposes reshard by all-to-alls too) gives the unsharded gradients."""
    import spmd.numpy as snp

    mesh = spmd.make_mesh((2, 4), ALL)
    shapes = [(8, 8, 16), (16, 8), (8, 16, 64), (8, 64, 16)]
    args = _data(shapes, seed=3)

    def loss(weights, x):
        return snp.sum(spmd.nn_moe.moe(x, *weights, top_k=2) ** 2)

    def grads(x, router, w_in, w_out):
        return spmd.grad(loss, argnums=(0, 1))((router, w_in, w_out), x)

    specs = [P(ALL), P(), P(ALL), P(ALL)]
    f = spmd.jit(grads, in_shardings=tuple(NamedSharding(mesh, p) for p in specs))
    got, want = spmd.tree_leaves(f(*args)), spmd.tree_leaves(spmd.jit(grads)(*args))
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-4)
    kinds = [r.kind for r in f.lower(*args).compile().collectives()]
    assert kinds.count("all_to_all") >= 4, kinds  # two forward, two in the transposes

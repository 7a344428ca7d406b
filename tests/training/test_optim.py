"""spmd.optim against hand-written numpy optimizers, eagerly, under jit, sharded and ZeRO-1."""

from __future__ import annotations

import math

import numpy as np
import pytest

import spmd
import spmd.numpy as snp
from spmd import optim
from spmd.errors import ShardingError

RNG = np.random.default_rng(0)
STEPS = 5


def make_params() -> dict[str, np.ndarray]:
    return {
        "w": RNG.standard_normal((8, 4)).astype(np.float32),
        "b": RNG.standard_normal((4,)).astype(np.float32),
    }


GRADS = [
    {k: RNG.standard_normal(v.shape).astype(np.float32) for k, v in make_params().items()}
    for _ in range(STEPS)
]


# -- numpy oracles ---------------------------------------------------------------------------


def np_schedule(lr, step):
    return lr(step) if callable(lr) else lr


def np_warmup_cosine(peak, warmup, total, end=0.0):
    def lr(step):
        if step < warmup:
            return peak * step / warmup
        progress = min(max((step - warmup) / max(total - warmup, 1), 0.0), 1.0)
        return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * progress))

    return lr


def np_clip(grads, max_norm):
    norm = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads.values()))
    scale = min(1.0, max_norm / max(norm, 1e-12))
    return {k: g * scale for k, g in grads.items()}, norm


def np_sgd(params, grads_seq, lr, momentum=0.0, nesterov=False):
    p = {k: v.astype(np.float64) for k, v in params.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for step, grads in enumerate(grads_seq):
        rate = np_schedule(lr, step)
        for k in list(p):
            g = grads[k].astype(np.float64)
            if momentum:
                v[k] = momentum * v[k] + g
                d = g + momentum * v[k] if nesterov else v[k]
            else:
                d = g
            p[k] = p[k] - rate * d
    return p


def np_adamw(params, grads_seq, lr, b1=0.9, b2=0.999, eps=1e-8, wd=0.0, clip=None):
    p = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(x) for k, x in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for step, grads in enumerate(grads_seq):
        if clip is not None:
            grads, _ = np_clip(grads, clip)
        rate = np_schedule(lr, step)
        t = step + 1
        for k in list(p):
            g = grads[k].astype(np.float64)
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            mhat, vhat = m[k] / (1 - b1**t), v[k] / (1 - b2**t)
            p[k] = p[k] - rate * (mhat / (np.sqrt(vhat) + eps) + wd * p[k])
    return p


def run(opt, params, grads_seq, jit=True):
    state = opt.init(params)
    update = spmd.jit(opt.update) if jit else opt.update
    for grads in grads_seq:
        params, state = update(grads, state, params)
    return params, state


def assert_params_close(got, want, rtol=2e-5, atol=2e-6):
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=rtol, atol=atol, err_msg=k)


CASES = {
    "sgd": (lambda: optim.sgd(0.1), lambda p, g: np_sgd(p, g, 0.1)),
    "momentum": (lambda: optim.sgd(0.05, momentum=0.9), lambda p, g: np_sgd(p, g, 0.05, 0.9)),
    "nesterov": (
        lambda: optim.sgd(0.05, momentum=0.9, nesterov=True),
        lambda p, g: np_sgd(p, g, 0.05, 0.9, True),
    ),
    "adamw": (
        lambda: optim.adamw(1e-2, weight_decay=0.1),
        lambda p, g: np_adamw(p, g, 1e-2, wd=0.1),
    ),
    "adamw_clip_schedule": (
        lambda: optim.adamw(
            optim.warmup_cosine(3e-2, 2, 4, end=1e-3),
            b1=0.8,
            b2=0.95,
            eps=1e-6,
            weight_decay=0.01,
            clip_norm=1.5,
        ),
        lambda p, g: np_adamw(p, g, np_warmup_cosine(3e-2, 2, 4, 1e-3), 0.8, 0.95, 1e-6, 0.01, 1.5),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
def test_optimizer_matches_numpy(name, jit):
    make, oracle = CASES[name]
    params = make_params()
    got, state = run(make(), params, GRADS, jit)
    assert int(state["step"]) == STEPS
    assert_params_close(got, oracle(params, GRADS))


@pytest.mark.parametrize("name", ["momentum", "adamw_clip_schedule"])
def test_sharded_params_give_the_same_result_and_state_follows_the_param(name):
    make, oracle = CASES[name]
    params = make_params()
    mesh = spmd.make_mesh((2, 4), ("data", "model"))
    shardings = {
        "w": spmd.NamedSharding(mesh, spmd.P("data", "model")),
        "b": spmd.NamedSharding(mesh, spmd.P("model")),
    }
    placed = {k: spmd.device_put(v, shardings[k]) for k, v in params.items()}
    grads = [{k: spmd.device_put(v, shardings[k]) for k, v in g.items()} for g in GRADS]
    got, state = run(make(), placed, grads)
    assert_params_close(got, oracle(params, GRADS))
    moments = state.get("momentum", state.get("mu"))
    assert moments["w"].sharding == shardings["w"]


def test_schedules_match_formulas():
    schedule = optim.warmup_cosine(1.0, 10, 110, end=0.1)
    oracle = np_warmup_cosine(1.0, 10, 110, 0.1)
    steps = np.arange(0, 130, 7, dtype=np.int32)
    got = np.asarray(spmd.jit(lambda s: snp.stack([schedule(x) for x in s]))(list(steps)))
    np.testing.assert_allclose(got, [oracle(int(s)) for s in steps], rtol=1e-5, atol=1e-7)
    assert float(optim.constant(0.3)(np.int32(5))) == pytest.approx(0.3)


def test_clip_by_global_norm_and_global_norm():
    grads = GRADS[0]
    _, norm = np_clip(grads, 1.0)
    assert float(optim.global_norm(grads)) == pytest.approx(norm, rel=1e-5)
    clipped, got_norm = spmd.jit(lambda g: optim.clip_by_global_norm(g, 1.0))(grads)
    want, _ = np_clip(grads, 1.0)
    assert float(got_norm) == pytest.approx(norm, rel=1e-5)
    assert_params_close(clipped, want)
    assert float(optim.global_norm(clipped)) == pytest.approx(1.0, rel=1e-5)
    small, _ = optim.clip_by_global_norm(grads, 1e6)
    assert_params_close(small, grads)


def test_weight_decay_mask_skips_masked_params():
    params = make_params()
    opt = optim.adamw(1e-2, weight_decay=0.5, mask={"w": True, "b": False})
    got, _ = run(opt, params, GRADS[:2])
    with_decay = np_adamw(params, GRADS[:2], 1e-2, wd=0.5)
    without = np_adamw(params, GRADS[:2], 1e-2, wd=0.0)
    assert_params_close(got, {"w": with_decay["w"], "b": without["b"]})


def data_parallel_step(opt, mesh):
    """One DP training step of a linear model: batch over "data", params replicated."""
    replicated = spmd.NamedSharding(mesh, spmd.P())

    def loss(params, x, y):
        return snp.mean(snp.square(x @ params["w"] + params["b"] - y))

    def step(params, state, x, y):
        grads = spmd.grad(loss)(params, x, y)
        return opt.update(grads, state, params)

    return spmd.jit(step), replicated


def test_zero1_shards_moments_over_data_and_matches_unsharded():
    mesh = spmd.make_mesh((8,), ("data",))
    params = make_params()
    x = RNG.standard_normal((16, 8)).astype(np.float32)
    y = RNG.standard_normal((16, 4)).astype(np.float32)
    batch = spmd.NamedSharding(mesh, spmd.P("data"))
    xs, ys = spmd.device_put(x, batch), spmd.device_put(y, batch)

    plain = optim.adamw(1e-2, weight_decay=0.1)
    zero = optim.adamw(1e-2, weight_decay=0.1, shard_state_over="data", mesh=mesh)
    results = {}
    for name, opt in (("plain", plain), ("zero", zero)):
        step, replicated = data_parallel_step(opt, mesh)
        p = {k: spmd.device_put(v, replicated) for k, v in params.items()}
        state = opt.init(p)
        for _ in range(3):
            p, state = step(p, state, xs, ys)
        kinds = [r.kind for r in step.lower(p, state, xs, ys).compile().collectives()]
        results[name] = (p, state, kinds)

    plain_params, plain_state, plain_kinds = results["plain"]
    zero_params, zero_state, zero_kinds = results["zero"]
    assert_params_close(
        zero_params, {k: np.asarray(v) for k, v in plain_params.items()}, rtol=1e-5, atol=1e-6
    )
    assert zero_state["mu"]["w"].sharding.spec == spmd.P("data")
    assert zero_state["nu"]["b"].sharding.spec == spmd.P()  # 4 rows do not divide by 8
    shard = zero_state["mu"]["w"].addressable_shards[0]
    assert shard.data.shape == (1, 4)
    np.testing.assert_allclose(
        np.asarray(zero_state["mu"]["w"]), np.asarray(plain_state["mu"]["w"]), rtol=1e-5, atol=1e-7
    )
    assert "all_gather" in zero_kinds, zero_kinds
    assert "reduce_scatter" in zero_kinds, zero_kinds  # w's gradient, straight to its shard
    assert "all_gather" not in plain_kinds and "reduce_scatter" not in plain_kinds, plain_kinds


def test_zero1_keeps_the_params_own_sharding_and_adds_the_data_axis():
    mesh = spmd.make_mesh((2, 4), ("data", "model"))
    w = spmd.device_put(
        np.ones((8, 4), np.float32), spmd.NamedSharding(mesh, spmd.P(None, "model"))
    )
    opt = optim.adamw(1e-3, shard_state_over="data", mesh=mesh)
    state = opt.init({"w": w})
    assert state["mu"]["w"].sharding.spec == spmd.P("data", "model")


def test_zero1_without_a_mesh_is_an_error():
    with pytest.raises(ShardingError, match="mesh"):
        optim.adamw(1e-3, shard_state_over="data")
    mesh = spmd.make_mesh((8,), ("data",))
    with pytest.raises(ShardingError, match="not an axis"):
        optim.adamw(1e-3, shard_state_over="batch", mesh=mesh)

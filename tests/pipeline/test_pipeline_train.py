"""spmd.pipeline_value_and_grad (every tick of the table run explicitly) against the stages
in sequence on one device (numpy oracles); 1F1B's activation buffers stay at `stages` while
GPipe's grow with the microbatches, in the buffer plan and in the compiled memory plan."""

import numpy as np
import pytest

import spmd
import spmd.numpy as snp
from spmd import P
from spmd.pipeline_buffers import plan
from spmd.pipeline_schedule import gpipe, interleaved, one_f_one_b
from tests.pipeline.oracle import megatron_forward, megatron_grads, mlp_forward, mlp_grads

D = 4


def stage(params, h):
    return snp.tanh(h @ params["w"] + params["b"])


def dot_loss(y, t):
    return snp.sum(y * t)


def check(schedule, p, m, v=1, unroll=True):
    mesh = spmd.make_mesh((p,), ("pipe",))
    rng = np.random.default_rng(p * 100 + m)
    s, batch = p * v, 2 * m
    w = (rng.standard_normal((s, D, D)) * 0.6).astype(np.float32)
    b = (rng.standard_normal((s, D)) * 0.1).astype(np.float32)
    x = rng.standard_normal((batch, D)).astype(np.float32)
    t = rng.standard_normal((batch, D)).astype(np.float32)
    step = spmd.jit(
        lambda w, b, x, t: spmd.pipeline_value_and_grad(
            stage,
            dot_loss,
            {"w": w, "b": b},
            x,
            t,
            num_microbatches=m,
            schedule=schedule,
            stages_per_device=v,
            mesh=mesh,
            unroll=unroll,
        )
    )
    loss, grads = step(w, b, x, t)
    # the loss is the mean over microbatches of each one's sum(y * t)
    np.testing.assert_allclose(
        float(loss), (mlp_forward(w, b, x)[-1] * t).sum() / m, rtol=1e-5, atol=1e-5
    )
    dw, db, _ = mlp_grads(w, b, x, t)
    np.testing.assert_allclose(np.asarray(grads["w"]), dw / m, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(grads["b"]), db / m, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("p,m", [(2, 1), (2, 2), (2, 8), (4, 1), (4, 4), (4, 16), (8, 1)])
@pytest.mark.parametrize("schedule", ["1f1b", "gpipe"])
def test_loss_and_grads_equal_the_sequential_stages(schedule, p, m):
    check(schedule, p, m)


@pytest.mark.slow
@pytest.mark.parametrize("m", [8, 32])
@pytest.mark.parametrize("schedule", ["1f1b", "gpipe"])
def test_eight_stages_many_microbatches(schedule, m):
    check(schedule, 8, m)


@pytest.mark.parametrize("p,v,m", [(2, 2, 2), (2, 2, 4), (4, 2, 4), (4, 2, 6), (2, 3, 1)])
def test_interleaved_loss_and_grads_equal_the_sequential_stages(p, v, m):
    check("interleaved", p, m, v)


def test_report_names_forward_and_gradient_shifts():
    mesh = spmd.make_mesh((2,), ("pipe",))
    w, b = np.ones((2, D, D), np.float32), np.zeros((2, D), np.float32)
    x = t = np.ones((4, D), np.float32)
    step = spmd.jit(
        lambda w, b: spmd.pipeline_value_and_grad(
            stage, dot_loss, {"w": w, "b": b}, x, t, num_microbatches=2, mesh=mesh
        )
    )
    reasons = [
        r.reason for r in step.lower(w, b).compile().collectives() if r.kind == "collective_permute"
    ]
    assert "pipeline 1f1b tick 0: forward stage 0->1 microbatch 0" in reasons
    assert any(
        r.startswith("pipeline 1f1b tick") and "gradient stage 1->0 microbatch 0" in r
        for r in reasons
    )
    assert len(reasons) == 4  # two microbatches, one forward and one gradient shift each


@pytest.mark.parametrize("unroll", [True, False])
def test_composes_with_data_and_tensor_parallelism_on_a_2x2x2_mesh(unroll):
    mesh = spmd.make_mesh((2, 2, 2), ("data", "pipe", "model"))
    rng = np.random.default_rng(5)
    s, f, batch, m = 2, 8, 16, 4
    w1 = (rng.standard_normal((s, D, f)) * 0.4).astype(np.float32)
    w2 = (rng.standard_normal((s, f, D)) * 0.4).astype(np.float32)
    x = rng.standard_normal((batch, D)).astype(np.float32)
    t = rng.standard_normal((batch, D)).astype(np.float32)

    def megatron_stage(params, h):
        return h + spmd.lax.psum(snp.tanh(h @ params["w1"]) @ params["w2"], "model")

    step = spmd.jit(
        lambda w1, w2, x, t: spmd.pipeline_value_and_grad(
            megatron_stage,
            dot_loss,
            {"w1": w1, "w2": w2},
            x,
            t,
            num_microbatches=m,
            mesh=mesh,
            param_specs={"w1": P("pipe", None, "model"), "w2": P("pipe", "model", None)},
            input_spec=P("data"),
            unroll=unroll,
        )
    )
    loss, grads = step(w1, w2, x, t)
    # mean over the 2 data shards x m microbatches
    scale = 2 * m
    np.testing.assert_allclose(
        float(loss), (megatron_forward(w1, w2, x) * t).sum() / scale, rtol=1e-5, atol=1e-5
    )
    d1, d2, _ = megatron_grads(w1, w2, x, t)
    np.testing.assert_allclose(np.asarray(grads["w1"]), d1 / scale, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(grads["w2"]), d2 / scale, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("p", [2, 4, 8])
def test_buffer_plan_1f1b_keeps_p_stage_inputs_gpipe_keeps_m(p):
    for m in (p, 4 * p):
        assert plan(one_f_one_b(p, m)).stash_slots == p
        assert plan(gpipe(p, m)).stash_slots == m
    assert plan(interleaved(p, 2, 2 * p)).stash_slots == 2 * 2 * p


def _memory(schedule, m, mb=8, width=256):
    p = 4
    mesh = spmd.make_mesh((p,), ("pipe",))
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((p, 16, width)) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((p, width, 16)) * 0.1).astype(np.float32)
    x = rng.standard_normal((mb * m, 16)).astype(np.float32)

    def wide(q, h):
        return h + snp.tanh(h @ q["w1"]) @ q["w2"]

    if schedule == "autodiff":

        def loss(w1, w2, x):
            y = spmd.pipeline(wide, {"w1": w1, "w2": w2}, x, num_microbatches=m, mesh=mesh)
            return snp.sum(y * x)

        f = spmd.jit(spmd.value_and_grad(loss, argnums=(0, 1)))
        return f.lower(w1, w2, x).compile().memory_per_device(), x.nbytes

    f = spmd.jit(
        lambda w1, w2, x: spmd.pipeline_value_and_grad(
            wide,
            dot_loss,
            {"w1": w1, "w2": w2},
            x,
            x,
            num_microbatches=m,
            schedule=schedule,
            mesh=mesh,
        )
    )
    return f.lower(w1, w2, x).compile().memory_per_device(), x.nbytes


def test_compiled_memory_1f1b_flat_in_microbatches_gpipe_grows():
    (small, x_small), (large, x_large) = _memory("1f1b", 4), _memory("1f1b", 16)
    # 1F1B: only the (replicated) batch itself grows; the stage buffers stay at p
    assert large - small <= 1.2 * (x_large - x_small) + 4096
    (a_small, _), (a_large, _) = _memory("autodiff", 4), _memory("autodiff", 16)
    # autodiff GPipe keeps each microbatch's width-256 activations: >= 12 more of 8x256 f32
    assert a_large - a_small >= 12 * 8 * 256 * 4
    assert a_large > large

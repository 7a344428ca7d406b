"""spmd.pipeline against the stages run in sequence on one device (numpy oracles with
hand-written backprop): outputs and gradients, GPipe and interleaved, on a 1-D pipe mesh
and on a 2x2x2 data x pipe x model mesh; the collective report names every permute."""

import numpy as np
import pytest

import spmd
import spmd.numpy as snp
from spmd import P
from spmd.errors import ShapeError, ShardingError
from tests.pipeline.oracle import megatron_forward, megatron_grads, mlp_forward, mlp_grads

D = 4


def stage(params, h):
    return snp.tanh(h @ params["w"] + params["b"])


def data(stages, batch, seed=0):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((stages, D, D)) * 0.6).astype(np.float32)
    b = (rng.standard_normal((stages, D)) * 0.1).astype(np.float32)
    x = rng.standard_normal((batch, D)).astype(np.float32)
    t = rng.standard_normal((batch, D)).astype(np.float32)
    return w, b, x, t


def run(p, m, schedule="gpipe", v=1):
    mesh = spmd.make_mesh((p,), ("pipe",))
    w, b, x, t = data(p * v, 2 * m)

    def loss(w, b, x):
        y = spmd.pipeline(
            stage,
            {"w": w, "b": b},
            x,
            num_microbatches=m,
            schedule=schedule,
            stages_per_device=v,
            mesh=mesh,
        )
        return snp.sum(y * t), y

    (_, y), grads = spmd.jit(spmd.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(w, b, x)
    np.testing.assert_allclose(np.asarray(y), mlp_forward(w, b, x)[-1], rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, mlp_grads(w, b, x, t)):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("p,m", [(2, 1), (2, 2), (2, 8), (4, 1), (4, 4), (4, 16), (8, 8)])
def test_gpipe_outputs_and_grads_equal_the_sequential_stages(p, m):
    run(p, m)


@pytest.mark.parametrize("p,v,m", [(2, 2, 2), (2, 3, 4), (4, 2, 4), (4, 2, 6), (2, 3, 3)])
def test_interleaved_outputs_and_grads_equal_the_sequential_stages(p, v, m):
    run(p, m, "interleaved", v)


def test_eager_call_with_placed_parameters_finds_the_mesh():
    mesh = spmd.make_mesh((4,), ("pipe",))
    w, b, x, _ = data(4, 8)
    params = {
        "w": spmd.device_put(w, spmd.NamedSharding(mesh, P("pipe"))),
        "b": spmd.device_put(b, spmd.NamedSharding(mesh, P("pipe"))),
    }
    y = spmd.pipeline(stage, params, x, num_microbatches=4)
    np.testing.assert_allclose(np.asarray(y), mlp_forward(w, b, x)[-1], rtol=1e-5, atol=1e-6)


def test_collective_report_names_each_permute_stage_and_microbatch():
    mesh = spmd.make_mesh((4,), ("pipe",))
    w, b, x, t = data(4, 8)

    def loss(w, b):
        return snp.sum(spmd.pipeline(stage, {"w": w, "b": b}, x, num_microbatches=2, mesh=mesh) * t)

    records = spmd.jit(spmd.grad(loss, argnums=(0, 1))).lower(w, b).compile().collectives()
    permutes = [r for r in records if r.kind == "collective_permute"]
    reasons = [r.reason for r in permutes]
    # m + p - 2 forward shifts (none after the last tick), each transposed once by grad
    forward = [r for r in reasons if r.startswith("pipeline gpipe")]
    assert forward == [
        "pipeline gpipe tick 0: stage 0->1 microbatch 0",
        "pipeline gpipe tick 1: stage 0->1 microbatch 1, stage 1->2 microbatch 0",
        "pipeline gpipe tick 2: stage 1->2 microbatch 1, stage 2->3 microbatch 0",
        "pipeline gpipe tick 3: stage 2->3 microbatch 1",
    ]
    assert sorted(r for r in reasons if r.startswith("backward of")) == sorted(
        f"backward of {r}" for r in forward
    )
    assert all(r.axes == ("pipe",) and r.bytes == 4 * 4 * 4 for r in permutes)
    assert all(r.loc.startswith("test_pipeline_gpipe.py:") for r in permutes)


def megatron_stage(params, h):
    """One device's block of a residual MLP with w1 split by columns and w2 by rows over
    'model' (Megatron): one psum over 'model' per stage."""
    u = snp.tanh(h @ params["w1"])
    return h + spmd.lax.psum(u @ params["w2"], "model")


@pytest.mark.parametrize("unroll", [True, False])
def test_composes_with_data_and_tensor_parallelism_on_a_2x2x2_mesh(unroll):
    mesh = spmd.make_mesh((2, 2, 2), ("data", "pipe", "model"))
    rng = np.random.default_rng(3)
    s, f, batch, m = 2, 8, 16, 4
    w1 = (rng.standard_normal((s, D, f)) * 0.4).astype(np.float32)
    w2 = (rng.standard_normal((s, f, D)) * 0.4).astype(np.float32)
    x = rng.standard_normal((batch, D)).astype(np.float32)
    t = rng.standard_normal((batch, D)).astype(np.float32)
    specs = {"w1": P("pipe", None, "model"), "w2": P("pipe", "model", None)}

    def loss(w1, w2, x):
        y = spmd.pipeline(
            megatron_stage,
            {"w1": w1, "w2": w2},
            x,
            num_microbatches=m,
            mesh=mesh,
            param_specs=specs,
            input_spec=P("data"),
            unroll=unroll,
        )
        return snp.sum(y * t), y

    (_, y), grads = spmd.jit(spmd.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(w1, w2, x)
    np.testing.assert_allclose(np.asarray(y), megatron_forward(w1, w2, x), rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, megatron_grads(w1, w2, x, t)):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)
    if (
        not unroll
    ):  # collectives() lists top-level ops; the scan's are checked in test_pipeline_scan
        return
    compiled = spmd.jit(lambda w1, w2, x: loss(w1, w2, x)[1]).lower(w1, w2, x).compile()
    kinds = {
        (r.kind, r.axes)
        for r in compiled.collectives()
        if "shard_map" in r.reason or r.reason.startswith("pipeline")
    }
    assert ("collective_permute", ("pipe",)) in kinds and ("all_reduce", ("model",)) in kinds


def test_errors_name_the_mistake():
    mesh = spmd.make_mesh((4,), ("pipe",))
    w, b, x, _ = data(4, 8)
    params = {"w": w, "b": b}
    with pytest.raises(ShapeError, match="leading dim must be the number of stages 8"):
        spmd.pipeline(
            stage,
            params,
            x,
            num_microbatches=4,
            mesh=mesh,
            schedule="interleaved",
            stages_per_device=2,
        )
    with pytest.raises(ShapeError, match="does not split into 3 microbatches"):
        spmd.pipeline(stage, params, x, num_microbatches=3, mesh=mesh)
    with pytest.raises(ShardingError, match="'stage' is not a mesh axis"):
        spmd.pipeline(stage, params, x, num_microbatches=4, mesh=mesh, axis="stage")
    with pytest.raises(ShapeError, match="keep its input's shape"):
        spmd.pipeline(lambda p, h: h[:, :2], params, x, num_microbatches=4, mesh=mesh)
    with pytest.raises(ShapeError, match="pipeline_value_and_grad"):
        spmd.pipeline(stage, params, x, num_microbatches=4, mesh=mesh, schedule="1f1b")


def test_inside_jit_specs_come_from_the_arguments_shardings():
    """No param_specs: the traced weights keep their 'model' sharding (replicating them would
    double the stage's psum over 'model')."""
    mesh = spmd.make_mesh((2, 2, 2), ("data", "pipe", "model"))
    rng = np.random.default_rng(4)
    w1 = (rng.standard_normal((2, D, 8)) * 0.4).astype(np.float32)
    w2 = (rng.standard_normal((2, 8, D)) * 0.4).astype(np.float32)
    x = rng.standard_normal((8, D)).astype(np.float32)
    put = spmd.device_put
    args = (
        put(w1, spmd.NamedSharding(mesh, P("pipe", None, "model"))),
        put(w2, spmd.NamedSharding(mesh, P("pipe", "model", None))),
        put(x, spmd.NamedSharding(mesh, P("data"))),
    )
    y = spmd.jit(
        lambda w1, w2, x: spmd.pipeline(
            megatron_stage, {"w1": w1, "w2": w2}, x, num_microbatches=2, mesh=mesh
        )
    )(*args)
    np.testing.assert_allclose(np.asarray(y), megatron_forward(w1, w2, x), rtol=1e-5, atol=1e-5)

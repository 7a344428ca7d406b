"""spmd.pipeline with the rest of the training stack: spmd.remat'd stages, spmd.optim
optimizers over several steps (parameters after 5 AdamW steps equal the same optimizer fed
the numpy oracle's gradients), and a data x pipe mesh given by Arrays' own shardings."""

import numpy as np
import pytest

import spmd
import spmd.numpy as snp
from spmd import NamedSharding, P
from tests.pipeline.oracle import mlp_forward, mlp_grads

D = 4


def stage(params, h):
    return snp.tanh(h @ params["w"] + params["b"])


def setup(p=4, m=4, seed=7):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((p, D, D)) * 0.6).astype(np.float32)
    b = (rng.standard_normal((p, D)) * 0.1).astype(np.float32)
    x = rng.standard_normal((2 * m, D)).astype(np.float32)
    t = rng.standard_normal((2 * m, D)).astype(np.float32)
    return w, b, x, t


def test_remat_stage_gives_the_same_grads():
    mesh = spmd.make_mesh((4,), ("pipe",))
    w, b, x, t = setup()

    def loss(w, b):
        y = spmd.pipeline(spmd.remat(stage), {"w": w, "b": b}, x, num_microbatches=4, mesh=mesh)
        return snp.sum(y * t)

    dw, db = spmd.jit(spmd.grad(loss, argnums=(0, 1)))(w, b)
    want_w, want_b, _ = mlp_grads(w, b, x, t)
    np.testing.assert_allclose(np.asarray(dw), want_w, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(db), want_b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("how", ["autodiff-gpipe", "1f1b"])
def test_five_adamw_steps_match_the_oracle_gradients(how):
    mesh = spmd.make_mesh((4,), ("pipe",))
    w, b, x, t = setup()
    opt = spmd.optim.adamw(1e-2, weight_decay=0.01)

    def grads_of(params):
        if how == "1f1b":
            return spmd.pipeline_value_and_grad(
                stage, lambda y, tt: snp.sum(y * tt), params, x, t, num_microbatches=4, mesh=mesh
            )[1]

        def loss(params):
            y = spmd.pipeline(stage, params, x, num_microbatches=4, mesh=mesh)
            return snp.sum(y * t) / 4

        return spmd.grad(loss)(params)

    @spmd.jit
    def step(params, state):
        return opt.update(grads_of(params), state, params)

    params = {"w": w, "b": b}
    state = opt.init(params)
    ref = {"w": w, "b": b}
    ref_state = opt.init(ref)
    for _ in range(5):
        params, state = step(params, state)
        rw, rb = np.asarray(ref["w"]), np.asarray(ref["b"])
        gw, gb, _ = mlp_grads(rw, rb, x, t)
        ref, ref_state = opt.update({"w": gw / 4, "b": gb / 4}, ref_state, ref)
    for k in ("w", "b"):
        np.testing.assert_allclose(np.asarray(params[k]), np.asarray(ref[k]), rtol=1e-5, atol=1e-6)


def test_data_x_pipe_mesh_from_the_arrays_own_shardings():
    mesh = spmd.make_mesh((2, 4), ("data", "pipe"))
    w, b, x, _ = setup(p=4, m=2)
    params = {
        "w": spmd.device_put(w, NamedSharding(mesh, P("pipe"))),
        "b": spmd.device_put(b, NamedSharding(mesh, P("pipe"))),
    }
    xs = spmd.device_put(x, NamedSharding(mesh, P("data")))
    y = spmd.pipeline(stage, params, xs, num_microbatches=2)
    np.testing.assert_allclose(np.asarray(y), mlp_forward(w, b, x)[-1], rtol=1e-5, atol=1e-6)
    assert y.sharding.spec == P("data")

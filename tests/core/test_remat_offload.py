"""checkpoint_policies.save_and_offload_only_these_names (JAX's): offloaded residuals are
saved, not recomputed (gradients equal plain grad's, on one device and on a mesh), kept in
host memory between forward and backward (the TPU simulator leaves them out of peak HBM and
counts them as host bytes) and moved over the chip's host link (a copy each way, priced at
its bandwidth, on its own stream)."""

from __future__ import annotations

import numpy as np
import pytest

import spmd
import spmd.numpy as snp
import spmd.sim
from backends.tpu_sim.chips import load_chip
from spmd import lax
from spmd.errors import SpmdError
from spmd.sharding import NamedSharding, P
from tests.core.test_remat import stack

cp = spmd.checkpoint_policies
OFFLOAD = cp.save_and_offload_only_these_names(
    names_which_can_be_saved=["g"], names_which_can_be_offloaded=["h"]
)


def layer(x, w):
    h = spmd.checkpoint_name(snp.tanh(x @ w["a"]), "h")
    g = spmd.checkpoint_name(snp.tanh(h @ w["b"]), "g")
    return x + g, None


def loss(policy, use=True):
    body = spmd.remat(layer, policy=policy) if use else layer

    def f(p, x):
        y, _ = lax.scan(body, x, p)
        return (y.astype("float32") ** 2).mean()

    return f


def _close(got, want):
    assert float(got[0]) == pytest.approx(float(want[0]), rel=1e-6)
    for n in "ab":
        np.testing.assert_allclose(
            np.asarray(got[1][n]), np.asarray(want[1][n]), rtol=1e-5, atol=1e-6
        )


def test_offloaded_grads_equal_plain_grad_on_one_device_and_a_mesh():
    p, x = stack()
    want = spmd.value_and_grad(loss(None, use=False))(p, x)
    f = spmd.jit(spmd.value_and_grad(loss(OFFLOAD)))
    _close(f(p, x), want)
    _close(spmd.value_and_grad(loss(OFFLOAD))(p, x), want)  # eagerly
    mesh = spmd.make_mesh((2, 2), ("data", "model"))
    ps = {n: spmd.device_put(w, NamedSharding(mesh, P(None, None, "model"))) for n, w in p.items()}
    _close(f(ps, spmd.device_put(x, NamedSharding(mesh, P("data")))), want)
    # h saved (moved to host and back), not recomputed: as many dots as save-h-and-g
    graph = f.lower(p, x).graph
    moves = [op.attrs["memory"] for op in graph.walk() if op.name == "checkpoint_name"]
    assert sorted(moves) == ["device", "pinned_host"]
    saved = spmd.jit(spmd.value_and_grad(loss(cp.save_only_these_names("h", "g"))))
    dots = [sum(op.name == "dot_general" for op in g.lower(p, x).graph.walk()) for g in (f, saved)]
    assert dots[0] == dots[1]


def test_a_name_both_saved_and_offloaded_is_an_error():
    with pytest.raises(SpmdError, match="both saved and offloaded"):
        cp.save_and_offload_only_these_names(
            names_which_can_be_saved=["h"], names_which_can_be_offloaded=["h"]
        )
    with pytest.raises(SpmdError, match="not supported"):
        cp.save_and_offload_only_these_names(
            names_which_can_be_saved=[],
            names_which_can_be_offloaded=["h"],
            offload_src="pinned_host",
            offload_dst="device",
        )


def test_simulator_moves_offloaded_residuals_out_of_hbm_over_the_host_link():
    layers, batch, width = 8, 4096, 1024
    big = {n: spmd.ShapeDtypeStruct((layers, width, width), "bfloat16") for n in "ab"}
    x = spmd.ShapeDtypeStruct((batch, width), "bfloat16")
    reports = [
        spmd.sim.simulate(spmd.value_and_grad(loss(policy)), big, x, chip="v5e", check_memory=False)
        for policy in (cp.save_only_these_names("h", "g"), OFFLOAD)
    ]
    saved, offloaded = reports
    h_slice = batch * width * 2  # one layer's h, bf16
    stacked = layers * h_slice
    assert saved.peak_host_bytes == 0
    assert offloaded.peak_host_bytes == stacked  # every layer's h in host memory
    # the stack leaves HBM; at most one layer's h is back on the device at a time
    assert stacked - h_slice <= saved.peak_memory_bytes - offloaded.peak_memory_bytes <= stacked
    assert offloaded.flops == pytest.approx(saved.flops, rel=1e-9)  # nothing recomputed
    link = load_chip("v5e").host_bandwidth
    kinds = offloaded.by_kind()
    for kind in ("to_host", "from_host"):  # one copy of each layer's h each way
        assert kinds[kind] == pytest.approx(stacked / link, rel=1e-9)
    # the copies run on their own stream: the step is shorter than compute then copies
    assert offloaded.step_time_s < offloaded.compute_time_s + 2 * stacked / link

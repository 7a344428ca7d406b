"""Cost model checked against public figures (scaling book, Cloud TPU docs)."""

from __future__ import annotations

import math

import pytest

from backends.tpu_sim.chips import load_chip
from backends.tpu_sim.cost_model import collective_cost, collective_time, op_time
from backends.tpu_sim.topology import Topology, topology_for

V5E = load_chip("v5e").ideal()  # the scaling book prices at 100% of spec
BF16_2048x8192 = 2 * 2048 * 8192


@pytest.mark.parametrize(("wrap", "published_us"), [(True, 377), (False, 560)])
def test_all_gather_matches_scaling_book_profiling_example(wrap: bool, published_us: float):
    # "How to Scale Your Model", ch. "How to Profile TPU Programs": TPU v5e, mesh
    # {X: 8, Y: 4}, all-gather over Y of bf16[2048, 8192]: 377 us predicted with
    # wraparound, 560 us without. Y=4 has no wraparound on a real v5e; the book computes
    # both, so the topology forces it here.
    topology = Topology((8, 4), (False, wrap))
    shard = BF16_2048x8192 / 4  # HLO operand of the all-gather: the local shard
    seconds = collective_time(V5E, topology, "all_gather", shard, axes=1)
    assert seconds * 1e6 == pytest.approx(published_us, rel=0.10)


def test_large_all_gather_is_bandwidth_bound_at_v_over_bidirectional_w():
    # Scaling book, ch. "Sharded matmuls": T_AG = V / W_ici(bidirectional) once V is large.
    topology = Topology((16, 16), (True, True))
    shard = 256 * 2**20
    cost = collective_cost(V5E, topology, "all_gather", shard, axes=0)
    w_bidirectional = 2 * V5E.link_bandwidth
    assert cost.bandwidth_s > cost.latency_s
    assert cost.seconds == pytest.approx(16 * shard / w_bidirectional, rel=1e-9)


def test_all_reduce_costs_two_all_gathers():
    # Scaling book, ch. "Sharded matmuls": AllReduce = ReduceScatter + AllGather = 2 x AG.
    topology = Topology((16, 16), (True, True))
    full = 64 * 2**20
    all_reduce = collective_time(V5E, topology, "all_reduce", full, axes=0)
    all_gather = collective_time(V5E, topology, "all_gather", full / 16, axes=0)
    reduce_scatter = collective_time(V5E, topology, "reduce_scatter", full, axes=0)
    assert reduce_scatter == pytest.approx(all_gather)
    assert all_reduce == pytest.approx(2 * all_gather)


@pytest.mark.parametrize(
    "kind",
    ["all_gather", "reduce_scatter", "all_reduce", "all_to_all", "broadcast", "collective_permute"],
)
def test_doubling_a_large_payload_doubles_the_time(kind: str):
    # Bandwidth-bound regime of the scaling book's T = max(latency, bytes / W).
    topology = topology_for(V5E, (16, 16))
    one = collective_time(V5E, topology, kind, 2**30, axes=0)
    two = collective_time(V5E, topology, kind, 2**31, axes=0)
    assert two == pytest.approx(2 * one, rel=1e-6)


def test_one_element_collective_costs_hops_times_latency():
    # Scaling book, ch. "TPUs": ~1 us per ICI hop; a tiny all-gather is latency-bound with
    # n/2 hops on a wraparound ring and n-1 without.
    wrapped = collective_cost(V5E, Topology((16,), (True,)), "all_gather", 2, axes=0)
    line = collective_cost(V5E, Topology((16,), (False,)), "all_gather", 2, axes=0)
    assert wrapped.hops == 8
    assert line.hops == 15
    assert wrapped.seconds == pytest.approx(8 * V5E.hop_latency_s)
    assert line.seconds == pytest.approx(15 * V5E.hop_latency_s)


def test_multi_axis_all_gather_uses_every_axis_links():
    # Scaling book, ch. "Sharded matmuls": gathering over 2 axes at once doubles bandwidth.
    topology = Topology((16, 16), (True, True))
    shard = 2**24
    both = collective_cost(V5E, topology, "all_gather", shard, axes=(0, 1))
    w_bidirectional = 2 * V5E.link_bandwidth
    assert both.bandwidth_s == pytest.approx(256 * shard / (2 * w_bidirectional))
    assert both.hops == 16


def test_all_to_all_is_a_quarter_of_all_gather_on_a_ring():
    # Scaling book, ch. "Sharded matmuls": AllToAll on a bidirectional ring ~ V / (4 W).
    topology = Topology((16,), (True,))
    local = 2**28
    a2a = collective_time(V5E, topology, "all_to_all", local, axes=0)
    assert a2a == pytest.approx(16 * local / (4 * 2 * V5E.link_bandwidth))


def test_collective_over_a_size_one_axis_is_free():
    assert collective_time(V5E, topology_for(V5E, (1, 8)), "all_reduce", 2**20, axes=0) == 0.0


def test_switch_all_gather_uses_full_nvlink_egress():
    # NVIDIA H100 datasheet: 900 GB/s NVLink = 450 GB/s per direction; ring all-gather
    # moves (n-1)/n of the result through each GPU's egress.
    h100 = load_chip("h100_sxm")
    topology = topology_for(h100, (8,))
    shard = 2**28
    seconds = collective_time(h100, topology, "all_gather", shard, axes=0)
    assert seconds == pytest.approx(7 * shard / 450e9, rel=1e-6)


def test_big_bf16_matmul_is_compute_bound_at_peak():
    # Cloud TPU v5e docs / scaling book: 197 TFLOP/s bf16 per v5e chip.
    n = 8192
    seconds = op_time(V5E, 2 * n**3, 3 * 2 * n * n, "bf16", mxu_dims=(n, n, n))
    assert seconds == pytest.approx(2 * n**3 / 197e12)


def test_matrix_vector_product_is_memory_bound():
    # Scaling book, ch. "Rooflines": a matvec has arithmetic intensity ~1 FLOP/byte, far
    # below v5e's 197e12 / 8.19e11 ~ 240, so HBM bandwidth sets its time.
    n = 8192
    weight_bytes = 2 * n * n
    seconds = op_time(V5E, 2 * n * n, weight_bytes + 4 * n, "bf16", mxu_dims=(n, 1, n))
    assert seconds == pytest.approx((weight_bytes + 4 * n) / 8.19e11)


def test_mxu_padding_makes_129_cost_like_256():
    # Scaling book, ch. "TPUs": the MXU is 128x128 on v5e, so dims pad to multiples of 128.
    padded = op_time(V5E, 2 * 129**3, 0, "bf16", mxu_dims=(129, 129, 129))
    full = op_time(V5E, 2 * 256**3, 0, "bf16", mxu_dims=(256, 256, 256))
    assert padded == pytest.approx(full)
    v6e = load_chip("v6e").ideal()  # 256x256 MXU: 129 already pads to 256
    assert op_time(v6e, 2 * 129**3, 0, mxu_dims=(129,) * 3) == pytest.approx(
        op_time(v6e, 2 * 256**3, 0, mxu_dims=(256,) * 3)
    )


def test_dtype_rates_order_int8_bf16_f32():
    flops = 2 * 4096**3
    times = {d: op_time(V5E, flops, 0, d) for d in ("int8", "bf16", "f32")}
    assert times["int8"] < times["bf16"] < times["f32"]
    assert times["int8"] == pytest.approx(flops / 394e12)  # Cloud TPU v5e docs: 394 TOP/s


def test_unknown_collective_and_negative_bytes_raise():
    from spmd.errors import SimulationError

    topology = Topology((4,), (False,))
    with pytest.raises(SimulationError, match="unknown collective 'all_sum'"):
        collective_time(V5E, topology, "all_sum", 8, axes=0)
    with pytest.raises(SimulationError, match="negative"):
        op_time(V5E, -1, 0)
    assert math.isfinite(collective_time(V5E, topology, "collective_permute", 8, axes=0))


MESHES = [(16, 16), (8, 4), (2, 4, 8), (256,), (4, 4, 4), (8, 8), (1, 8), (64, 64)]


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize(
    "kind",
    ["all_gather", "reduce_scatter", "all_reduce", "all_to_all", "broadcast", "collective_permute"],
)
def test_times_are_finite_and_grow_with_bytes_on_every_layout(mesh: tuple[int, ...], kind: str):
    chip = load_chip("v4" if math.prod(mesh) > 256 else "v5e")
    topology = topology_for(chip, mesh)
    for axis in range(len(mesh)):
        small = collective_time(chip, topology, kind, 2**10, axes=axis)
        large = collective_time(chip, topology, kind, 2**30, axes=axis)
        assert 0 <= small <= large < 10
        if mesh[axis] > 1:
            assert large > small
    every = collective_time(chip, topology, kind, 2**20, axes=tuple(range(len(mesh))))
    assert math.isfinite(every)

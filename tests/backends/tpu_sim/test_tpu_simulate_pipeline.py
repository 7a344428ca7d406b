"""The TPU simulator end to end: jit -> partition -> simulate, abstract mode, reports.

Public sources cited per test: [sb] Austin et al., "How to Scale Your Model"
(jax-ml.github.io/scaling-book), chapters "How to think about TPUs" and "Sharded matmuls";
[gc] Google Cloud TPU v5e / v4 system architecture pages.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

import spmd
import spmd.numpy as snp
import spmd.sim
from backends.tpu_sim.lower import LOWERINGS
from benchmarks.sim_scaling import Config, abstract_inputs, train_step
from spmd import lax
from spmd.errors import SimulationError
from spmd.ops import REGISTRY
from spmd.sharding import NamedSharding, P

HERE = Path(__file__).name


def sds(
    shape: tuple[int, ...], dtype: str = "bfloat16", sharding: object = None
) -> spmd.ShapeDtypeStruct:
    return spmd.ShapeDtypeStruct(shape, dtype, sharding)


def matmul(a: object, b: object) -> object:
    return a @ b


def test_every_registered_op_has_a_costing_row():
    assert sorted(set(REGISTRY) - set(LOWERINGS)) == []


def test_bf16_8192_cubed_matmul_on_one_v5e_is_compute_bound_at_peak():
    # [gc] [sb]: v5e peaks at 197 TFLOP/s bf16, so 2 * 8192^3 FLOPs take 2*8192^3/197e12 s.
    x = sds((8192, 8192))
    compiled = spmd.jit(matmul).lower(x, x).compile()
    report = compiled.simulate(chip="v5e", calibrated=False)
    expected = 2 * 8192**3 / 197e12
    assert report.step_time_s == pytest.approx(expected, rel=1e-3)
    assert report.mfu == pytest.approx(1.0, rel=1e-3)
    # calibrated (configs/chips/v5e.toml): 90% of peak plus one kernel's 3 us
    measured = compiled.simulate(chip="v5e")
    assert measured.step_time_s == pytest.approx(3e-6 + expected / 0.90, rel=1e-3)
    assert report.peak_memory_bytes == 3 * 8192 * 8192 * 2
    [row] = report.ops
    assert (row.op, row.kind, row.flops) == ("dot_general", "matmul", 2 * 8192**3)
    assert row.loc.startswith(f"{HERE}:")


def test_abstract_call_returns_shape_dtype_structs_and_records_the_report():
    mesh = spmd.make_mesh((16, 16), ("data", "model"), device="tpu-sim:v5e")
    x = sds((4096, 1024), sharding=NamedSharding(mesh, P("data")))
    w = sds((1024, 2048), sharding=NamedSharding(mesh, P(None, "model")))
    with spmd.sim.abstract():
        y = spmd.jit(matmul)(x, w)
    assert isinstance(y, spmd.ShapeDtypeStruct)
    assert (y.shape, y.dtype) == ((4096, 2048), "bfloat16")
    assert y.sharding.spec == P("data", "model")
    report = spmd.sim.last_report()
    assert report.num_devices == 256 and report.chip == "v5e"
    # Each chip multiplies a 256x1024 block by a 1024x128 block, no communication.
    assert report.flops == 2 * 256 * 1024 * 128
    assert report.collective_time_s == 0


def _largest_collective(report: object) -> object:
    return report.collectives()[0]


def test_data_parallel_gradient_all_reduce_costs_twice_an_all_gather_of_the_same_bytes():
    # [sb] ch. "Sharded matmuls": an all-reduce is a reduce-scatter plus an all-gather, so it
    # costs ~2x an all-gather of the same array once bandwidth-bound.
    mesh = spmd.make_mesh((16, 16), ("data", "model"), device="tpu-sim:v5e")
    x = sds((4096, 4096), "float32", NamedSharding(mesh, P("data")))
    w = sds((4096, 4096), "float32", NamedSharding(mesh, P()))

    def loss(w: object, x: object) -> object:
        return snp.sum(snp.square(x @ w))

    grad = spmd.jit(spmd.grad(loss)).lower(w, x).compile()
    all_reduce = _largest_collective(grad.simulate())
    assert (all_reduce.op, all_reduce.axes) == ("all_reduce", ("data",))
    assert all_reduce.bytes == 4096 * 4096 * 4
    gather = spmd.jit(lambda a: a * 2, out_shardings=NamedSharding(mesh, P()))
    all_gather = _largest_collective(gather.lower(x).compile().simulate())
    assert (all_gather.op, all_gather.axes) == ("all_gather", ("data",))
    assert all_gather.bytes * 16 == all_reduce.bytes  # the same full array V
    assert all_reduce.time_s / all_gather.time_s == pytest.approx(2.0, rel=0.02)


def small_config(batch: int) -> Config:
    return Config(layers=4, d_model=1024, heads=8, d_ff=4096, batch=batch, seq=512)


def _simulate_step(mesh: spmd.Mesh, config: Config, **options: object) -> object:
    params, x = abstract_inputs(mesh, config)
    return spmd.jit(train_step).lower(params, x).compile().simulate(**options)


def test_doubling_the_batch_doubles_compute_time_of_a_compute_bound_step():
    mesh = spmd.make_mesh((2, 4), ("data", "model"), device="tpu-sim:v5e")
    one = _simulate_step(mesh, small_config(16), calibrated=False)
    two = _simulate_step(mesh, small_config(32), calibrated=False)
    matmul_one = one.by_kind()["matmul"]
    assert two.by_kind()["matmul"] / matmul_one == pytest.approx(2.0, rel=0.02)
    # Everything but the (batch-independent) SGD update scales with the batch.
    assert 1.85 < two.compute_time_s / one.compute_time_s <= 2.0
    assert two.flops / one.flops == pytest.approx(2.0, rel=0.02)


def test_abstract_4096_chip_v4_step_of_a_1b_transformer_simulates_in_under_10_s():
    # [gc]: a full v4 pod is 16x16x16 = 4096 chips; a 256 (data) x 16 (model) mesh lays on it.
    config = Config(batch=512)
    assert 0.9e9 < config.params < 1.2e9
    mesh = spmd.make_mesh((256, 16), ("data", "model"), device="tpu-sim:v4")
    start = time.perf_counter()
    params, x = abstract_inputs(mesh, config)
    with spmd.sim.abstract():
        loss_value, new_params = spmd.jit(train_step)(params, x)
    elapsed = time.perf_counter() - start
    report = spmd.sim.last_report()
    assert elapsed < 10.0, f"simulating a 4096-chip step took {elapsed:.1f} s"
    assert isinstance(loss_value, spmd.ShapeDtypeStruct) and loss_value.shape == ()
    assert new_params["w1"].shape == config.shapes()["w1"]
    assert report.num_devices == 4096 and report.topology == (16, 16, 16)
    assert 0 < report.mfu < 1 and report.collective_time_s > 0
    assert report.peak_memory_bytes < report.hbm_bytes


def test_chrome_trace_has_one_track_per_device(tmp_path: Path):
    mesh = spmd.make_mesh((2, 4), ("data", "model"), device="tpu-sim:v5e")
    report = _simulate_step(mesh, Config(layers=2, d_model=256, heads=4, d_ff=512, batch=8, seq=64))
    path = report.to_chrome_trace(tmp_path / "trace.json")
    events = json.loads(path.read_text())["traceEvents"]
    tracks = {e["pid"] for e in events if e["ph"] == "X"}
    names = {e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert tracks == set(range(8)) and names == {f"device {d}" for d in range(8)}
    per_device = [sum(1 for e in events if e["ph"] == "X" and e["pid"] == d) for d in range(8)]
    assert len(set(per_device)) == 1 and per_device[0] > 10
    assert {e["cat"] for e in events if e["ph"] == "X"} == {"compute", "collective"}
    assert max(e["ts"] + e["dur"] for e in events if e["ph"] == "X") == pytest.approx(
        report.step_time_s * 1e6
    )


def test_out_of_memory_names_the_largest_buffers_and_the_user_line():
    x = sds((100_000,), "float32")

    def outer(v: object) -> object:
        return snp.sum(v[:, None] * v[None, :])  # 40 GB intermediate: the culprit

    compiled = spmd.jit(outer).lower(x).compile()
    with pytest.raises(SimulationError) as info:
        compiled.simulate(chip="v5e", fuse=False)
    message = str(info.value)
    assert "out of HBM" in message and "16.00 GiB" in message
    assert "float32" in message and "37.25 GiB" in message
    assert f"{HERE}:" in message
    fused = compiled.simulate(chip="v5e")  # fused into the reduction: never materialised
    assert fused.peak_memory_bytes < 1e6


def test_overlap_runs_a_collective_beside_independent_compute():
    mesh = spmd.make_mesh((16, 16), ("data", "model"), device="tpu-sim:v5e")
    a = sds((2048, 8192), "float32", NamedSharding(mesh, P("data")))
    b = sds((8192, 8192), sharding=NamedSharding(mesh, P("data")))
    w = sds((8192, 16384), sharding=NamedSharding(mesh, P()))
    replicated = NamedSharding(mesh, P())
    f = spmd.jit(
        lambda a, b, w: (a * 2, b @ w), out_shardings=(replicated, NamedSharding(mesh, P("data")))
    )
    compiled = f.lower(a, b, w).compile()
    serial = compiled.simulate(overlap=False)
    overlapped = compiled.simulate()  # the latency-hiding schedule is the default
    assert serial.step_time_s == pytest.approx(serial.compute_time_s + serial.collective_time_s)
    assert serial.collective_time_s > 0.3 * serial.step_time_s
    # The all-gather of `a * 2` hides behind the independent matmul.
    assert overlapped.step_time_s < serial.step_time_s * 0.8
    assert (
        overlapped.step_time_s
        >= max(overlapped.compute_time_s, overlapped.collective_time_s) * 0.999
    )


def test_compare_prints_shardings_side_by_side(capsys: pytest.CaptureFixture[str]):
    mesh = spmd.make_mesh((2, 4), ("data", "model"), device="tpu-sim:v5e")
    x = sds((8192, 4096))
    w = sds((4096, 4096))
    data_parallel = [NamedSharding(mesh, P(("data", "model"))), NamedSharding(mesh, P())]
    megatron = [NamedSharding(mesh, P("data")), NamedSharding(mesh, P(None, "model"))]
    gathered = [NamedSharding(mesh, P(None, "model")), NamedSharding(mesh, P("model"))]
    reports = spmd.sim.compare(
        matmul,
        (x, w),
        [data_parallel, megatron, gathered],
        labels=["dp", "megatron", "k-split"],
        calibrated=False,
    )
    out = capsys.readouterr().out
    assert "dp" in out and "megatron" in out and "bytes moved" in out and "peak HBM" in out
    assert len(reports) == 3
    assert reports[0].collective_bytes == 0 and reports[1].collective_bytes == 0
    assert reports[2].collective_bytes > 0
    # dp: x/8 + w + y/8; megatron: x/2 + w/4 + y/4: both 48 MiB per device.
    assert reports[0].peak_memory_bytes == reports[1].peak_memory_bytes == 48 * 2**20
    expected = 2 * 8192 * 4096 * 4096 / 8 / 197e12  # every layout splits the FLOPs 8 ways
    assert reports[0].step_time_s == pytest.approx(expected, rel=0.01)


def test_numerics_mode_on_a_tpu_sim_mesh_is_real_and_accrues_simulated_time():
    mesh = spmd.make_mesh((2, 4), ("data", "model"), device="tpu-sim:v5e")
    rng = np.random.default_rng(0)
    a_np = rng.standard_normal((8, 16)).astype(np.float32)
    b_np = rng.standard_normal((16, 4)).astype(np.float32)
    a = spmd.device_put(a_np, NamedSharding(mesh, P("data", "model")))
    b = spmd.device_put(b_np, NamedSharding(mesh, P("model")))
    spmd.sim.reset()
    f = spmd.jit(matmul)
    y = f(a, b)
    y = f(a, b)
    np.testing.assert_allclose(np.asarray(y), a_np @ b_np, rtol=1e-5, atol=1e-5)
    report = spmd.sim.last_report()
    assert [r.op for r in report.collectives()] == ["all_reduce"]
    assert spmd.sim.elapsed() == pytest.approx(2 * report.step_time_s)


def test_scan_body_costs_length_times_and_cond_its_costliest_branch():
    w = sds((2048, 2048))

    def looped(w: object, n: int) -> object:
        carry, _ = lax.scan(lambda c, _: (c @ w, None), w, None, length=n)
        return carry

    four = spmd.jit(looped, static_argnums=1).lower(w, 4).compile().simulate()
    eight = spmd.jit(looped, static_argnums=1).lower(w, 8).compile().simulate()
    assert eight.flops == 2 * four.flops == 8 * 2 * 2048**3
    assert eight.step_time_s == pytest.approx(2 * four.step_time_s, rel=1e-6)

    def branchy(p: object, w: object) -> object:
        return lax.cond(p, lambda w: w @ w @ w, lambda w: w + 1, w)

    report = spmd.jit(branchy).lower(sds((), "bool"), w).compile().simulate()
    assert report.flops == pytest.approx(2 * 2 * 2048**3, rel=1e-6)  # the w @ w @ w branch


def test_report_table_lists_ops_with_user_lines():
    mesh = spmd.make_mesh((2, 4), ("data", "model"), device="tpu-sim:v5e")
    report = _simulate_step(mesh, small_config(16), overlap=False)
    text = report.table(top=5)
    assert "step time" in text and "MFU" in text and "peak HBM" in text
    assert "sim_scaling.py:" in text and "all_reduce[model]" in text
    assert report.step_time_s == pytest.approx(report.compute_time_s + report.collective_time_s)
    assert all(r.loc for r in report.ops if r.kind in ("matmul", "collective"))


def test_unknown_simulate_option_is_refused():
    x = sds((128, 128))
    with pytest.raises(SimulationError, match="unknown simulate option"):
        spmd.jit(matmul).lower(x, x).compile().simulate(overlapp=True)

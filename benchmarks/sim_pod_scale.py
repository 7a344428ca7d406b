"""Issue 18 figures: the simulator on public training configs at pod scale, against their
published step times; its per-op prices against libtpu's own estimates; how long a
4096-chip step takes to simulate.

    python -m benchmarks.sim_pod_scale                      # every row
    python -m benchmarks.sim_pod_scale --libtpu DIR         # also compare with DIR/<chip>.json
                                                            # (benchmarks/sim_libtpu_estimates.py)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import spmd
import spmd.sim
from backends.tpu_sim.chips import load_chip
from benchmarks.sim_models import (
    LLAMA2_70B,
    LLAMA31_8B,
    MAXTEXT_1B,
    MAXTEXT_16B,
    Model,
    abstract_args,
    train_step,
)
from benchmarks.sim_scaling import Config, time_abstract_step
from spmd.sharding import NamedSharding, P


def simulate_model(
    model: Model,
    mesh_shape: tuple[int, ...],
    names: tuple[str, ...],
    chip: str = "v5e",
    **options: Any,
) -> tuple[Any, float]:
    """(report, wall seconds) of one abstract train step of `model`, FSDP on 'data'."""
    mesh = spmd.make_mesh(mesh_shape, names, device=f"tpu-sim:{chip}")
    batch = names if len(names) > 1 else "data"
    args = abstract_args(model, mesh, batch_axes=batch)
    start = time.perf_counter()
    step = spmd.jit(train_step(model), donate_argnums=(0, 1, 2))
    report = spmd.sim.simulate(step, *args, check_memory=False, **options)
    return report, time.perf_counter() - start


# (model, chip, mesh shape, axis names, measured step: seconds, or TFLOP/s per chip)
PUBLISHED = [
    # MaxText configs/v5e/README.md: 16B at 120 TFLOP/s/chip on 1x v5e-256, 117 on 2x; the
    # step is model FLOPs per chip / that rate
    (MAXTEXT_16B, "v5e", (256,), ("data",), ("rate", 120e12)),
    (MAXTEXT_16B, "v5e", (2, 256), ("replica", "data"), ("rate", 117e12)),
    (MAXTEXT_1B, "v5e", (256,), ("data",), None),
    # tpu-recipes training/trillium/{Llama2-70B,Llama3.1-8B/v6e-256}-MaxText: logged step times
    (LLAMA2_70B, "v6e", (256,), ("data",), ("step", 17.373)),
    (LLAMA31_8B, "v6e", (256,), ("data",), ("step", 4.546)),
]


def published_rows() -> list[tuple[int, float]]:
    """Simulated vs measured step per published run; returns (sequence, ratio) per run."""
    print(
        "model            pod          seq  measured s  simulated s  ratio  sim FLOPs/model  "
        "peak GiB  host GiB  wall s"
    )
    out = []
    for model, chip, shape, names, measured_as in PUBLISHED:
        chips = math.prod(shape)
        for calibrated in (True, False):
            report, wall = simulate_model(model, shape, names, chip, calibrated=calibrated)
            per_chip = model.model_flops(chips) / chips
            measured = float("nan")
            if measured_as is not None:
                kind, value = measured_as
                measured = value if kind == "step" else per_chip / value
            ratio = report.step_time_s / measured
            if calibrated and measured_as is not None:
                out.append((model.seq, ratio))
            pod = f"{'2x ' if len(shape) > 1 else ''}{chip}-{shape[-1]}"
            pod += "" if calibrated else " ideal"
            print(
                f"{model.name:<16} {pod:<12} {model.seq:>4} {measured:>10.3f} "
                f"{report.step_time_s:>12.3f} {ratio:>6.3f} {report.flops / per_chip:>16.3f} "
                f"{report.peak_memory_bytes / 2**30:>9.2f} {report.peak_host_bytes / 2**30:>9.2f} "
                f"{wall:>7.2f}",
                flush=True,
            )
    for seq in sorted({s for s, _ in out}):
        errors = [max(r, 1 / r) for s, r in out if s == seq]
        geomean = math.exp(sum(map(math.log, errors)) / len(errors))
        print(f"sequence {seq}: geomean error {geomean:.3f}x over {len(errors)} run(s)")
    return out


def attention_rows() -> None:
    """Layers of an 8B-like model (MHA) at sequence 8192: fused attention vs the unfused
    einsum-softmax-einsum whose S x S scores go through HBM."""
    base = replace(
        MAXTEXT_1B,
        name="seq8192",
        layers=4,
        d_model=4096,
        heads=32,
        kv_heads=32,
        d_ff=14336,
        batch_per_device=1,
        seq=8192,
    )
    for fused in (True, False):
        report, _ = simulate_model(replace(base, fused_attention=fused), (16,), ("data",))
        kinds = report.by_kind()
        print(
            f"seq 8192, 4 layers of an 8B-like model on v5e-16, "
            f"{'fused' if fused else 'unfused'} attention: step {report.step_time_s:.3f} s "
            f"(attention op {kinds.get('attention', 0.0):.3f} s), peak "
            f"{report.peak_memory_bytes / 2**30:.2f} GiB"
        )


# TensorCores per device of libtpu's deviceless topology, as a fraction of a chip: v4's lists
# each of a chip's two TensorCores as a device (v4:2x2x1 has 8 devices of num_cores 1), the
# other chips one device per chip (v5p:2x2x1: 4 devices of num_cores 2, megacore)
LIBTPU_DEVICE_SHARE = {"v4": 0.5}


def libtpu_chip(name: str) -> Any:
    """The simulator's chip cut down to what one device of libtpu's topology is."""
    chip = load_chip(name)
    share = LIBTPU_DEVICE_SHARE.get(name, 1.0)
    if share == 1.0:
        return chip
    return replace(
        chip,
        peak_flops_bf16=chip.peak_flops_bf16 * share,
        peak_flops_int8=chip.peak_flops_int8 * share,
        peak_flops_f32=chip.peak_flops_f32 * share,
        hbm_bandwidth=chip.hbm_bandwidth * share,
        vpu_elements_per_cycle=chip.vpu_elements_per_cycle * share,
        xlu_elements_per_cycle=chip.xlu_elements_per_cycle * share,
        reduce_elements_per_cycle=chip.reduce_elements_per_cycle * share,
    )


def libtpu_rows(folder: Path) -> None:
    """Geomean of simulated / libtpu seconds per op class, calibrated and at 100% of spec."""
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        chip = libtpu_chip(path.stem)
        ratios: dict[tuple[str, bool], list[float]] = {}
        for row in data["rows"]:
            truth = row["cycles"] / chip.clock_hz
            for calibrated in (True, False):
                spec = chip if calibrated else chip.ideal()
                ratios.setdefault((row["kind"], calibrated), []).append(_predict(spec, row) / truth)
        cells = []
        for kind in ("matmul", "add", "exp", "reduce", "transpose"):
            pair = []
            for calibrated in (False, True):
                values = ratios[(kind, calibrated)]
                pair.append(math.exp(sum(map(math.log, values)) / len(values)))
            cells.append(f"{kind} {pair[0]:.2f}->{pair[1]:.2f}")
        print(f"{path.stem:<4} sim/libtpu geomean (ideal->calibrated): " + ", ".join(cells))


# libtpu's programs (benchmarks/sim_libtpu_estimates.py), traced and simulated as one op each
PROGRAMS = {
    "matmul": lambda a, b: a @ b,
    "add": lambda a, b: a + b,
    "exp": lambda a: spmd.numpy.exp(a),
    "reduce": lambda a: a.sum(-1),
    "transpose": lambda a: a.T + 1,
}


def _predict(chip: Any, row: dict[str, Any]) -> float:
    """The simulator's seconds for the program libtpu priced (fusions and all), on one chip."""
    mesh = spmd.make_mesh((1,), ("d",), device=f"tpu-sim:{chip.name}")
    layout = NamedSharding(mesh, P())
    if row["kind"] == "matmul":
        m, n, k = row["m"], row["n"], row["k"]
        args = [spmd.ShapeDtypeStruct(s, "bfloat16", layout) for s in ((m, k), (k, n))]
    else:
        dtype = "bfloat16" if row["dtype"] == "bf16" else "float32"
        shape = (row["size"] // 1024, 1024)
        args = [spmd.ShapeDtypeStruct(shape, dtype, layout)] * (2 if row["kind"] == "add" else 1)
    step = spmd.jit(PROGRAMS[row["kind"]])
    return spmd.sim.simulate(step, *args, chip=chip, check_memory=False).step_time_s


def scaling_row() -> None:
    row = time_abstract_step("v4", (256, 16), Config(batch=512))
    print(
        f"4096-chip v4 (256x16) abstract step of the sim_scaling transformer: trace "
        f"{row['trace_s']:.2f} s, partition {row['partition_s']:.2f} s, simulate "
        f"{row['simulate_s']:.2f} s, total {row['total_s']:.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--libtpu", type=Path, default=None)
    args = parser.parse_args()
    scaling_row()
    published_rows()
    attention_rows()
    if args.libtpu is not None:
        libtpu_rows(args.libtpu)


if __name__ == "__main__":
    main()

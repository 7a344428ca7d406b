"""Pipeline parallelism (issue 19): step time of a 4-stage residual MLP on 8 local devices,
pipelined (data 2 x pipe 4: autodiff GPipe, explicit GPipe, 1F1B) vs unpipelined
(the same stages in sequence, 8-way and 2-way data parallel), side by side in one run;
compiled peak memory per device; and the simulator's bubble fraction (v5e) against
(p-1)/(m+p-1). --lockstep: the explicit runner's compiled per-device program simulated on
v5e (time and FLOPs per device, pipe 4); --program-size: per-device ops (scan bodies
included) of spmd.pipeline + grad, unrolled vs unroll=False, and their compile times.

Run: python benchmarks/pipeline.py [--width 256] [--batch 256] [--repeat 5] [--warmup 15]
     python benchmarks/pipeline.py --lockstep [--width 1024 --batch 8192] | --program-size
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# the repository first: benchmarks/collectives.py must not shadow the collectives package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import spmd
import spmd.numpy as snp
from spmd import NamedSharding, P
from spmd.pipeline_sim import simulate_pipeline

STAGES = 4
WARMUP_STEPS = 15  # a dot tries its variants on its first <= 12 calls (backends/cpu/dots.py)


def block(q: Any, h: Any) -> Any:
    return h + snp.tanh(h @ q["w1"]) @ q["w2"]


def mse(y: Any, t: Any) -> Any:
    return snp.mean((y - t) ** 2)


def sequential(params: Any, x: Any, t: Any) -> Any:
    h = x
    for s in range(STAGES):
        h = block({"w1": params["w1"][s], "w2": params["w2"][s]}, h)
    return mse(h, t)


def timed(f: Callable[[], Any], repeat: int, warmup: int) -> float:
    """Median seconds of `repeat` calls after `warmup` calls."""
    for _ in range(warmup):
        spmd.block_until_ready(f())
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        spmd.block_until_ready(f())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def steps(width: int, batch: int) -> list[tuple[str, Any, tuple]]:
    rng = np.random.default_rng(0)
    params = {
        "w1": (rng.standard_normal((STAGES, width, 4 * width)) * 0.02).astype(np.float32),
        "w2": (rng.standard_normal((STAGES, 4 * width, width)) * 0.02).astype(np.float32),
    }
    x = rng.standard_normal((batch, width)).astype(np.float32)
    t = np.sin(x)
    out = []
    for data in (8, 2):
        mesh = spmd.make_mesh((data,), ("data",))
        put = spmd.device_put
        args = (
            {k: put(v, NamedSharding(mesh, P())) for k, v in params.items()},
            put(x, NamedSharding(mesh, P("data"))),
            put(t, NamedSharding(mesh, P("data"))),
        )
        out.append(
            (f"unpipelined, {data}-way data", spmd.jit(spmd.value_and_grad(sequential)), args)
        )
    mesh = spmd.make_mesh((2, 4), ("data", "pipe"))
    args = (
        {k: spmd.device_put(v, NamedSharding(mesh, P("pipe"))) for k, v in params.items()},
        spmd.device_put(x, NamedSharding(mesh, P("data"))),
        spmd.device_put(t, NamedSharding(mesh, P("data"))),
    )
    for m in (4, 8):

        def autodiff(params: Any, x: Any, t: Any, m: int = m) -> Any:
            y = spmd.pipeline(
                block,
                params,
                x,
                num_microbatches=m,
                mesh=mesh,
                param_specs=P("pipe"),
                input_spec=P("data"),
            )
            return mse(y, t)

        out.append(
            (f"pipelined autodiff GPipe, m={m}", spmd.jit(spmd.value_and_grad(autodiff)), args)
        )
        for schedule in ("gpipe", "1f1b"):

            def explicit(params: Any, x: Any, t: Any, m: int = m, s: str = schedule) -> Any:
                return spmd.pipeline_value_and_grad(
                    block,
                    mse,
                    params,
                    x,
                    t,
                    num_microbatches=m,
                    schedule=s,
                    mesh=mesh,
                    param_specs=P("pipe"),
                    input_spec=P("data"),
                )

            out.append((f"pipelined explicit {schedule}, m={m}", spmd.jit(explicit), args))
    return out


def bubbles(width: int, batch: int) -> list[str]:
    mesh = spmd.make_mesh((4,), ("pipe",))
    x = np.zeros((batch, width), np.float32)
    rows = []
    for schedule, v in (("gpipe", 1), ("1f1b", 1), ("interleaved", 2)):
        params = {
            "w1": np.zeros((4 * v, width, 4 * width), np.float32),
            "w2": np.zeros((4 * v, 4 * width, width), np.float32),
        }
        for m in (4, 8, 16, 32):
            sim = simulate_pipeline(
                block,
                params,
                x,
                num_microbatches=m,
                mesh=mesh,
                schedule=schedule,
                stages_per_device=v,
            )
            theory = 3 / (v * m + 3)
            rows.append(
                f"| {schedule} (v={v}) | {m} | {sim.bubble_fraction:.1%} | "
                f"{theory:.1%} | {sim.step_time_s * 1e3:.3f} | "
                f"{sim.lockstep_step_s * 1e3:.3f} |"
            )
    return rows


def lockstep(width: int, batch: int) -> None:
    mesh = spmd.make_mesh((4,), ("pipe",))
    params = {
        "w1": np.zeros((4, width, 4 * width), np.float32),
        "w2": np.zeros((4, 4 * width, width), np.float32),
    }
    x = np.zeros((batch, width), np.float32)
    forward = 2 * (2 * (batch // 8) * width * 4 * width)  # one slot's two matmuls at m=8
    print("| schedule | m | step (ms) | FLOPs / device (G) | in forwards at m=8 |")
    print("|---|---:|---:|---:|---:|")
    for m in (4, 8, 16):
        for schedule in ("gpipe", "1f1b"):

            def f(params: Any, x: Any, t: Any, m: int = m, s: str = schedule) -> Any:
                return spmd.pipeline_value_and_grad(
                    block,
                    mse,
                    params,
                    x,
                    t,
                    num_microbatches=m,
                    schedule=s,
                    mesh=mesh,
                    param_specs=P("pipe"),
                )

            r = spmd.jit(f).lower(params, x, x).compile().simulate(check_memory=False)
            units = f"{r.flops / forward:.1f}" if m == 8 else "-"
            print(
                f"| {schedule} | {m} | {r.step_time_s * 1e3:.2f} | {r.flops / 1e9:.1f} | {units} |"
            )


def program_size() -> None:
    mesh = spmd.make_mesh((4,), ("pipe",))
    w = np.zeros((4, 16, 16), np.float32)

    def autodiff(m: int, x: Any, unroll: bool) -> Any:
        def loss(w: Any) -> Any:
            return snp.sum(
                spmd.pipeline(
                    lambda q, h: snp.tanh(h @ q), w, x, mesh=mesh, num_microbatches=m, unroll=unroll
                )
            )

        return spmd.grad(loss)

    def explicit(m: int, x: Any, unroll: bool) -> Any:
        return lambda w: spmd.pipeline_value_and_grad(
            lambda q, h: snp.tanh(h @ q), mse, w, x, x, num_microbatches=m, mesh=mesh, unroll=unroll
        )

    print("| program | m | unrolled ops | scan ops | unrolled compile (s) | scan compile (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, make in (
        ("pipeline + grad (GPipe)", autodiff),
        ("pipeline_value_and_grad 1F1B", explicit),
    ):
        for m in (4, 16, 64):
            x = np.zeros((2 * m, 16), np.float32)
            row = []
            for unroll in (True, False):
                start = time.perf_counter()
                compiled = spmd.jit(make(m, x, unroll)).lower(w).compile()
                seconds = time.perf_counter() - start
                row.append((len(list(compiled.executable.partitioned.program.walk())), seconds))
            print(
                f"| {name} | {m} | {row[0][0]} | {row[1][0]} | {row[0][1]:.1f} | {row[1][1]:.1f} |",
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=WARMUP_STEPS)
    ap.add_argument("--lockstep", action="store_true")
    ap.add_argument("--program-size", action="store_true")
    a = ap.parse_args()
    if a.lockstep or a.program_size:
        lockstep(a.width, a.batch) if a.lockstep else program_size()
        return
    print(f"4 stages of width {a.width} (hidden {4 * a.width}), batch {a.batch}, 8 local devices\n")
    print("| step | time (ms) | vs unpipelined 2-way | peak memory / device (KiB) |")
    print("|---|---:|---:|---:|")
    base = None
    for name, f, args in steps(a.width, a.batch):
        seconds = timed(lambda f=f, args=args: f(*args), a.repeat, a.warmup)
        base = seconds if name.startswith("unpipelined, 2") else base
        memory = f.lower(*args).compile().memory_per_device()
        ratio = f"{seconds / base:.2f}x" if base else "-"
        print(f"| {name} | {seconds * 1e3:.1f} | {ratio} | {memory / 1024:.0f} |")
    print(
        "\nSimulated v5e, pipe 4 (bubble from the schedule-driven timeline; lockstep is the"
        " SPMD program that computes masked slots)\n"
    )
    print("| schedule | microbatches | bubble | (p-1)/(v*m+p-1) | step (ms) | lockstep (ms) |")
    print("|---|---:|---:|---:|---:|---:|")
    print("\n".join(bubbles(a.width, a.batch)))


if __name__ == "__main__":
    main()
